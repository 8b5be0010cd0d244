"""A training run: config -> run directory with config, logs (JSONL, TensorBoard), checkpoints.

    run_dir/
      config.json        the resolved TrainConfig
      metrics.jsonl      one line per log interval (loss, learning rate, val loss, speed)
      events.*           TensorBoard event files (tensorboardX; no TensorFlow needed)
      checkpoints/N/     last `max_to_keep` train states + metadata (orbax)
      best/N/            the lowest validation loss so far

Batches and noise of step s derive from the train state's PRNG key, which is checkpointed,
so `resume` continues a killed run to exactly the parameters an uninterrupted run reaches
(same machine, same device count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import config as config_lib
from dpjax import policy as policy_lib
from dpjax import train as train_lib
from dpjax.checkpoint import Checkpointer, load_json, save_json_atomic
from dpjax.data import Normalizer, load_dataset, make_window_data
from dpjax.errors import ConfigError, DpjaxError

CONFIG_FILENAME = "config.json"
METRICS_FILENAME = "metrics.jsonl"


class TrainingDivergedError(DpjaxError):
    """The loss, gradients or parameters became NaN or inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = ""
    policy: policy_lib.PolicyConfig = policy_lib.PolicyConfig()
    optim: train_lib.OptimConfig = train_lib.OptimConfig()
    seed: int = 0
    batch_size: int = 64
    num_steps: int = 1000
    log_every: int = 50
    eval_every: int = 250
    checkpoint_every: int = 250
    max_to_keep: int = 3
    val_fraction: float = 0.05
    val_batches: int = 4
    num_devices: int | None = None
    max_episodes: int | None = None
    # Closed-loop rollouts of the EMA policy during training (0: never): every N steps (a
    # checkpoint is saved there too), `rollout_episodes` episodes on the dataset's task from
    # seed `rollout_seed`, apart from `dpjax eval`'s 100000.. so that choosing a checkpoint
    # by them (`dpjax eval --best-rollout`) does not pick on the test episodes.
    rollout_every: int = 0
    rollout_episodes: int = 50
    rollout_seed: int = 200_000


def split_episodes(num_episodes: int, val_fraction: float, seed: int):
    """(train indices, val indices): a seeded shuffle, at least one training episode."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    num_val = min(int(math.ceil(num_episodes * val_fraction)), num_episodes - 1)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuses to clobber an existing run unless asked; never deletes anything else."""
    existing = (run_dir / CONFIG_FILENAME).exists() or (run_dir / "checkpoints").exists()
    if existing and not (resume or overwrite):
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or --overwrite "
            "to replace it"
        )
    if resume and not (run_dir / CONFIG_FILENAME).exists():
        raise ConfigError(f"--resume: {run_dir} holds no run ({CONFIG_FILENAME} missing)")
    if overwrite and existing and not resume:
        for name in ("checkpoints", "best", CONFIG_FILENAME, METRICS_FILENAME):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        for event_file in run_dir.glob("events.out.tfevents.*"):
            event_file.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


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
    spec = policy_lib.observation_spec_from_stats(stats, [*pc.low_dim_keys, *pc.image_keys])
    action_shape = tuple(stats.spec["action"][0])
    if action_shape != (pc.action_dim,):
        raise ConfigError(
            f"policy.action_dim={pc.action_dim} but the dataset's actions have shape {action_shape}"
        )
    return policy_lib.make_policy(pc, normalizer, spec), normalizer, spec


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
    with Checkpointer(run_dir) as ckpt:
        metadata = ckpt.restore_metadata(step, best=best)
        config = config_lib.from_dict(TrainConfig, metadata["config"])
        normalizer = Normalizer.from_dict(metadata["normalizer"])
        spec = {
            k: policy_lib.ArraySpec(tuple(shape), dtype)
            for k, (shape, dtype) in metadata["observation_spec"].items()
        }
        policy = policy_lib.make_policy(config.policy, normalizer, spec)
        abstract = abstract_train_state(policy, config)
        state, metadata = ckpt.restore(abstract, step, best=best)
    return policy, state.ema_params, {**metadata, "step": int(state.step)}


def abstract_train_state(policy, config: TrainConfig):
    optimizer = train_lib.make_optimizer(config.optim, config.num_steps)
    return jax.eval_shape(
        lambda: train_lib.init_train_state(
            policy.init_params(jax.random.key(0)), optimizer, jax.random.key(0)
        )
    )


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Trains `config` into `run_dir`; returns a summary (final loss, val loss, speed).

    With `resume`, training continues from the run's last checkpoint under `config` (usually
    `load_run_config(run_dir)`, possibly with overrides); config.json records what was used.
    `stop_at_step` ends this invocation early (after checkpointing that step), as a time-boxed
    job or an interruption would; `resume=True` later continues to `config.num_steps`.
    """
    from tqdm import tqdm

    from dpjax.logs import MetricsLog

    run_dir = Path(run_dir)
    if not config.dataset:
        raise ConfigError("config.dataset is empty: set it to a dataset directory")
    if config.rollout_every < 0 or config.rollout_episodes < 1:
        raise ConfigError(
            f"rollout_every must be >= 0 and rollout_episodes >= 1, got {config.rollout_every} "
            f"and {config.rollout_episodes}"
        )
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    train_lib.maybe_initialize_distributed()
    dataset = load_dataset(config.dataset)
    policy, normalizer, spec = build_policy(config, dataset)
    num_episodes = (
        len(dataset) if config.max_episodes is None else min(len(dataset), config.max_episodes)
    )
    train_ids, val_ids = split_episodes(num_episodes, config.val_fraction, config.seed)
    pc = config.policy
    horizons = dict(
        obs_horizon=pc.obs_horizon,
        pred_horizon=pc.pred_horizon,
        action_horizon=pc.action_horizon,
        observation_keys=[*pc.low_dim_keys, *pc.image_keys],
    )
    mesh = train_lib.make_mesh(config.num_devices)
    train_data = train_lib.put_replicated(
        make_window_data([dataset[int(i)] for i in train_ids], **horizons), mesh
    )
    val_data = (
        train_lib.put_replicated(
            make_window_data([dataset[int(i)] for i in val_ids], **horizons), mesh
        )
        if len(val_ids)
        else None
    )
    optimizer = train_lib.make_optimizer(config.optim, config.num_steps)
    metadata = policy_metadata(config, normalizer, spec)
    save_json_atomic(run_dir / CONFIG_FILENAME, metadata["config"])
    checkpointer = Checkpointer(run_dir, max_to_keep=config.max_to_keep)
    if resume and checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(abstract_train_state(policy, config))
    else:
        key = jax.random.key(config.seed)
        state = train_lib.init_train_state(policy.init(key), optimizer, jax.random.fold_in(key, 1))
    state = train_lib.put_replicated(state, mesh)
    step_fn = train_lib.make_train_step(
        policy.loss, optimizer, config.optim, mesh, config.batch_size, config.num_steps
    )
    eval_fn = (
        # The standard objective (uniform timesteps, unweighted): runs with different
        # timestep sampling or loss weighting report comparable validation losses.
        train_lib.make_eval_loss(
            policy.validation_loss, mesh, config.batch_size, config.val_batches
        )
        if val_data is not None
        else None
    )
    val_key = jax.random.key(config.seed + 12345)
    log = MetricsLog(run_dir, resume=resume)
    start_step = int(state.step)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "start_step": start_step}
    bar = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    t_last, steps_since = time.perf_counter(), 0
    try:
        for step in range(start_step + 1, config.num_steps + 1):
            state, metrics = step_fn(state, train_data)
            steps_since += 1
            bar.update(1)
            is_log = step % config.log_every == 0 or step == config.num_steps
            is_eval = eval_fn is not None and (
                step % config.eval_every == 0 or step == config.num_steps
            )
            stopping = step == stop_at_step
            is_rollout = config.rollout_every > 0 and (
                step % config.rollout_every == 0 or step == config.num_steps
            )
            is_ckpt = (
                step % config.checkpoint_every == 0
                or step == config.num_steps
                or stopping
                or is_rollout
            )
            if not (is_log or is_eval or is_ckpt or stopping):
                continue
            record = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bad = {k: v for k, v in record.items() if not math.isfinite(v)}
            # The metrics describe the step's input parameters; the update itself can still
            # overflow, so the parameters about to be saved are checked as well.
            if is_ckpt and not bad and not bool(_all_finite((state.params, state.ema_params))):
                bad = {"parameters": "non-finite"}
            if bad:
                raise TrainingDivergedError(_diverged_message(step, bad, checkpointer))
            now = time.perf_counter()
            record["steps_per_sec"] = steps_since / (now - t_last)
            t_last, steps_since = now, 0
            val_loss = float(eval_fn(state.ema_params, val_data, val_key)) if is_eval else None
            if val_loss is not None:
                record["val_loss"] = val_loss
            if is_rollout:
                record.update(rollout_metrics(policy, state.ema_params, config, dataset))
                t_last = time.perf_counter()  # steps_per_sec counts training alone
            log.write(step, record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.1e}")
            if is_ckpt and checkpointer.latest_step() != step:
                checkpointer.save(step, state, metadata=metadata, val_loss=val_loss)
            summary.update({"final_step": step, **record})
            if stopping:
                break
    finally:
        bar.close()
        log.close()
        checkpointer.close()
    return summary


def rollout_metrics(policy, params, config: TrainConfig, dataset) -> dict[str, float]:
    """{"rollout_score", "rollout_success"} of closed-loop episodes on the dataset's task with
    the policy's default sampler (score: PushT's mean_max_reward, else success)."""
    from dpjax import evaluate
    from dpjax.data import collection_task

    task_name, task_options = collection_task(dataset)
    metrics, _ = evaluate.evaluate_on_task(
        policy, params, task_name, task_options, num_episodes=config.rollout_episodes,
        seed=config.rollout_seed, latency=False,
    )  # fmt: skip
    return {"rollout_score": metrics["score"], "rollout_success": metrics["success_rate"]}


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _diverged_message(step: int, bad: dict[str, Any], checkpointer: Checkpointer) -> str:
    what = ", ".join(f"{k} = {v}" for k, v in bad.items())
    latest = checkpointer.latest_step()
    kept = (
        f"the last good checkpoint (step {latest}) in {checkpointer.directory / 'checkpoints'} "
        "is kept"
        if latest is not None
        else "no checkpoint had been saved yet"
    )
    return f"training diverged at step {step} ({what}); {kept} (lower optim.learning_rate?)"


def describe(config: TrainConfig) -> str:
    return json.dumps(config_lib.to_dict(config), indent=1)
