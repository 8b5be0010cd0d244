"""PushT from keypoints (Diffusion Policy's low-dim PushT): 16-D block keypoints (the T's 8
corners) + 2-D agent position, 2 observation steps, 16 predicted / 8 executed actions.

    dpjax collect pusht --episodes 200 --out data/pusht_kp --task-option obs_type=keypoints
    dpjax train pusht_keypoints --set dataset=data/pusht_kp          # the CPU recipe
    dpjax train pusht_keypoints:PAPER --set dataset=data/pusht_kp    # the paper's size (GPU)
    dpjax eval runs/pusht_keypoints                                  # 50 test episodes

CONFIG is the recipe measured on a 2-core CPU (experiments/results/pusht.md has the runs that
chose it: variant `unet32_noise05`, 3 training seeds). PAPER is Diffusion Policy's own configuration: ConditionalUnet1D (256, 512, 1024),
epsilon prediction, DDPM 100 train / 100 inference steps, batch 256, AdamW 1e-4, EMA; their
5000 epochs of ~110 batches are ~550k steps here (the 63.5M UNet's train step at batch 256 is
several seconds on a 2-core CPU: a GPU job).
"""

import dataclasses

from dpjax.config import OptimConfig, PolicyConfig, TrainConfig, UNet1DConfig

CONFIG = TrainConfig(
    dataset="data/pusht_kp",
    policy=PolicyConfig(
        kind="diffusion",
        action_dim=2,
        obs_horizon=2,
        pred_horizon=16,
        action_horizon=8,
        low_dim_keys=("keypoint", "agent_pos"),
        low_dim_features=64,
        # Gaussian noise on the normalized observations in training: 200 demonstrations are
        # few, and the policy overfits them (validation loss rises after ~5k steps).
        obs_noise_std=0.05,
        # Diffusion Policy's ConditionalUnet1D at an eighth of its width: (32, 64, 128), FiLM
        # conditioning, kernel 5. At 10k steps it scores 0.95 where the MLP denoiser
        # (512-512-256) plateaued at 0.76-0.87 whatever its training length, executed chunk or
        # checkpoint choice (experiments/results/pusht.md).
        denoiser=UNet1DConfig(down_dims=(32, 64, 128), kernel_size=5, n_groups=8),
        prediction_type="sample",
        # DDIM 10 by default: it scored at least as well as DDPM 100 (experiments/results/
        # pusht.md), 7x faster per chunk (`dpjax eval --sampler ddpm --steps 100` runs
        # Diffusion Policy's own inference).
        sampler="ddim",
        num_inference_steps=10,
    ),
    optim=OptimConfig(learning_rate=1e-3, warmup_steps=500),
    batch_size=256,
    # ~45 min on one core of a 2-core CPU (3.8-4.4 steps/s); the last checkpoint is the one
    # measured.
    num_steps=10_000,
    log_every=500,
    eval_every=2_500,
    checkpoint_every=2_500,
    max_to_keep=12,
    # 50 closed-loop episodes (seeds 200000..., not the test seeds) every 2.5k steps: the
    # learning curve that validation loss does not give (~30 s each), and
    # `dpjax eval --best-rollout`. Rollouts and checkpoints do not change the trained
    # parameters (their own keys), so the measured runs, trained without them, are this run.
    rollout_every=2_500,
)

PAPER = dataclasses.replace(
    CONFIG,
    policy=dataclasses.replace(
        CONFIG.policy,
        low_dim_features=None,  # Diffusion Policy feeds the normalized observation as is
        obs_noise_std=0.0,
        denoiser=UNet1DConfig(
            down_dims=(256, 512, 1024), kernel_size=5, n_groups=8, step_embed_dim=256
        ),  # fmt: skip
        prediction_type="epsilon",
        sampler="ddpm",
        num_inference_steps=100,
    ),
    optim=OptimConfig(learning_rate=1e-4, warmup_steps=500),
    batch_size=256,
    num_steps=550_000,
    eval_every=10_000,
    checkpoint_every=10_000,
    max_to_keep=5,
    rollout_every=10_000,
)
