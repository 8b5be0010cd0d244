"""A trained policy from its run directory: the policy the run built, its EMA parameters.

    policy, params, metadata = load_policy("runs/pusht")        # last checkpoint
    actions = policy.act(params, observation, key)               # (B, action_horizon, A)

The checkpoint's metadata holds what rebuilds the policy without the dataset: the resolved
`TrainConfig`, the normalizer and the observation spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from dpjax import config as config_lib
from dpjax.checkpoint import Checkpointer, load_json
from dpjax.config import TrainConfig
from dpjax.data import Normalizer
from dpjax.data.features import ArraySpec
from dpjax.errors import CheckpointError, ConfigError
from dpjax.policy.policies import make_policy, observation_spec_from_stats
from dpjax.training import step as step_lib

CONFIG_FILENAME = "config.json"  # the resolved TrainConfig, in the run directory


def load_run_config(run_dir: Path) -> TrainConfig:
    data = load_json(Path(run_dir) / CONFIG_FILENAME, "run config")
    return config_lib.from_dict(TrainConfig, data)


def build_policy(config: TrainConfig, dataset):
    """The policy, its normalizer from the dataset statistics, and the observation spec."""
    stats = dataset.stats or dataset.compute_stats()
    pc = config.policy
    # Step-level conditioning (language embeddings) passes through unnormalized.
    keys = [
        "action",
        *(f"observation/{k}" for k in pc.low_dim_keys if f"observation/{k}" in stats.arrays),
    ]
    normalizer = Normalizer.from_stats(stats, keys)
    spec = observation_spec_from_stats(stats, [*pc.low_dim_keys, *pc.image_keys])
    action_shape = tuple(stats.spec["action"][0])
    if action_shape != (pc.action_dim,):
        raise ConfigError(
            f"policy.action_dim={pc.action_dim} but the dataset's actions have shape {action_shape}"
        )
    return make_policy(pc, normalizer, spec), normalizer, spec


def policy_metadata(config: TrainConfig, normalizer: Normalizer, spec) -> dict[str, Any]:
    return {
        "config": config_lib.to_dict(config),
        "normalizer": normalizer.to_dict(),
        "observation_spec": {k: [list(s.shape), s.dtype] for k, s in spec.items()},
    }


def load_policy(run_dir: str | Path, *, best: bool = False, step: int | None = None):
    """(policy, EMA params, metadata) of a run's latest (or best, or given) checkpoint;
    metadata["step"] is the checkpoint's training step."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():  # before orbax starts its background threads
        what = (
            "no run directory" if not run_dir.exists() else "no checkpoints/ in the run directory"
        )
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'} ({what})")
    with Checkpointer(run_dir, read_only=True) as ckpt:
        metadata = ckpt.restore_metadata(step, best=best)
        config = config_lib.from_dict(TrainConfig, metadata["config"])
        normalizer = Normalizer.from_dict(metadata["normalizer"])
        spec = {
            k: ArraySpec(tuple(shape), dtype)
            for k, (shape, dtype) in metadata["observation_spec"].items()
        }
        policy = make_policy(config.policy, normalizer, spec)
        abstract = abstract_train_state(policy, config)
        state, metadata = ckpt.restore(abstract, step, best=best)
    return policy, state.ema_params, {**metadata, "step": int(state.step)}


def abstract_train_state(policy, config: TrainConfig):
    optimizer = step_lib.make_optimizer(config.optim, config.num_steps)
    return jax.eval_shape(
        lambda: step_lib.init_train_state(
            policy.init_params(jax.random.key(0)), optimizer, jax.random.key(0)
        )
    )
