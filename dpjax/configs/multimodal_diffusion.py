"""Diffusion policy on the pure-JAX multimodal cup task (the seed's north/east/south example):
the recipe `dpjax demo` trains (its diffusion policy; multimodal_bc is its BC baseline).

    dpjax collect multimodal --episodes 200 --out data/multimodal
    dpjax train multimodal_diffusion --set dataset=data/multimodal    # BC: multimodal_bc

experiments/results/cup.md has the runs that chose it (`python experiments/recipes.py --task
cup`); `recipe(...)` builds it for another dataset, policy kind, denoiser or length.
"""

from pathlib import Path

from dpjax.config import (
    BCHeadConfig,
    MLPConfig,
    OptimConfig,
    PolicyConfig,
    TrainConfig,
    TransformerConfig,
    UNet1DConfig,
)
from dpjax.errors import unknown_name

# The cup recipe's sizes of each denoiser. The MLP is twice the seed's 512-512-256: the
# narrower one under-drew the rare south approach (0.09 of episodes against the expert's
# 0.14; experiments/results/cup.md). The BC baseline's head has the MLP's widths.
CUP_DENOISERS = {
    "mlp": MLPConfig(hidden_dims=(1024, 1024, 512)),
    "unet1d": UNet1DConfig(down_dims=(64, 128, 256)),
    "transformer": TransformerConfig(width=128, num_layers=3),
}


def recipe(
    dataset: str | Path,
    kind: str = "diffusion",
    denoiser: str = "mlp",
    num_steps: int = 6000,
    seed: int = 0,
) -> TrainConfig:
    """The cup recipe for `kind` ("diffusion" or "bc") with `denoiser`, as `dpjax demo` trains it."""
    if denoiser not in CUP_DENOISERS:
        raise unknown_name("denoiser", denoiser, CUP_DENOISERS)
    policy = PolicyConfig(
        kind=kind,
        action_dim=2,
        obs_horizon=2,
        # Predict 24 actions and execute 23 (all but the one for the past observation step):
        # committing to a chunk that long kept the policy on one side per episode; executing 8
        # of 16 let every replan re-draw the side, blending them into the wall (60% -> ~90%;
        # experiments/results/cup.md, `python experiments/recipes.py --task cup`).
        pred_horizon=24,
        action_horizon=23,
        low_dim_keys=("state",),
        low_dim_features=64,
        denoiser=CUP_DENOISERS[denoiser],
        bc_head=BCHeadConfig(hidden_dims=CUP_DENOISERS["mlp"].hidden_dims),
        # Predicting the clean chunk (x0) learned ~2x faster than epsilon here: at 3000 steps
        # 46-56% closed-loop success vs 25-35% (experiments/timestep_sampling.py compares them).
        prediction_type="sample",
        sampler="ddim",
        num_inference_steps=10,
    )
    return TrainConfig(
        dataset=str(dataset),
        policy=policy,
        seed=seed,
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=100),
        batch_size=128,
        num_steps=num_steps,
        log_every=100,
        eval_every=max(num_steps // 4, 1),
        checkpoint_every=max(num_steps // 4, 1),
    )


CONFIG = recipe("data/multimodal")
