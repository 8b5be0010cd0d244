"""A training run: config -> run directory with config, logs (JSONL, TensorBoard), checkpoints.

    run_dir/
      config.json        the resolved TrainConfig
      metrics.jsonl      one line per log interval (loss, learning rate, val loss, speed)
      events.*           TensorBoard event files (tensorboardX; no TensorFlow needed)
      checkpoints/N/     last `max_to_keep` train states + metadata (orbax), and the step
                         with the lowest validation loss so far (orbax's BestN keeps it)

Batches and noise of step s derive from the train state's PRNG key, which is checkpointed,
so `resume` continues a killed run to exactly the parameters an uninterrupted run reaches
(same machine, same device count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import config as config_lib
from dpjax.checkpoint import Checkpointer, save_json_atomic
from dpjax.config import TrainConfig
from dpjax.data import collection_task, load_dataset, make_window_data
from dpjax.data.loaders import StreamedBatches, WindowReader
from dpjax.errors import ConfigError, DpjaxError
from dpjax.evaluate.rollouts import evaluate_on_task
from dpjax.nets.precision import agreed_precision
from dpjax.policy.loading import (
    CONFIG_FILENAME,
    abstract_train_state,
    build_policy,
    policy_metadata,
)
from dpjax.training import distributed
from dpjax.training import step as step_lib
from dpjax.training.logs import METRICS_FILENAME, MetricsLog


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a run optimizes when it is not the policy's own loss (distillation).

    loss(params, batch, key, frozen) -> (loss, metrics); also the validation loss.
    frozen: a pytree every loss call reads and nothing trains (the teacher's parameters);
        it is an argument of the compiled step, not a constant baked into it.
    init_params: the parameters a fresh run starts from (None: `policy.init`).
    """

    loss: Callable[[Any, dict, jax.Array, Any], tuple[jnp.ndarray, dict]]
    frozen: Any
    init_params: Any = None


# The validation batches' key is the run's seed + this: fixed, apart from the training keys.
VAL_KEY_OFFSET = 12345


class TrainingDivergedError(DpjaxError):
    """The loss, gradients or parameters became NaN or inf; the last good checkpoint is kept."""


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


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
    objective: Objective | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains `config` into `run_dir`; returns a summary (final loss, val loss, speed).

    With `resume`, training continues from the run's last checkpoint under `config` (usually
    `load_run_config(run_dir)`, possibly with overrides); config.json records what was used.
    `stop_at_step` ends this invocation early (after checkpointing that step), as a time-boxed
    job or an interruption would; `resume=True` later continues to `config.num_steps`.
    `objective` replaces the policy's loss (and validation loss) and its initialization
    (`dpjax.distill`); `extra_metadata` is stored with every checkpoint (e.g. the teacher).
    """
    run_dir = Path(run_dir)
    if not config.dataset:
        raise ConfigError("config.dataset is empty: set it to a dataset directory")
    if config.rollout_every < 0 or config.rollout_episodes < 1:
        raise ConfigError(
            f"rollout_every must be >= 0 and rollout_episodes >= 1, got {config.rollout_every} "
            f"and {config.rollout_episodes}"
        )
    distributed.maybe_initialize_distributed()
    # a process that dies makes the others stop with a message instead of waiting forever
    with distributed.PeerWatchdog(lambda: _resume_advice(run_dir)):
        return _train(config, run_dir, resume, overwrite, progress, stop_at_step, objective,
                      extra_metadata)  # fmt: skip


def _train(config, run_dir, resume, overwrite, progress, stop_at_step, objective,
           extra_metadata) -> dict[str, Any]:  # fmt: skip
    from tqdm import tqdm

    lead = jax.process_index() == 0  # process 0 alone writes the run's files but checkpoints
    if config.policy.precision == "auto":  # measured once, recorded in config.json, agreed
        config = dataclasses.replace(config, policy=dataclasses.replace(
            config.policy, precision=agreed_precision("auto")))  # fmt: skip
    if objective is None and config.policy.gate_modes > 1:
        raise ConfigError(f"policy.gate_modes={config.policy.gate_modes}: a mode gate trains by "
                          "distillation only (dpjax distill RUN --method consistency "
                          "--gate-modes K)")  # fmt: skip
    if jax.process_count() > 1 and config.rollout_every:
        raise ConfigError(
            "rollout_every: in-training rollouts run in one process; set rollout_every=0 "
            "for a multi-process run and evaluate its checkpoints with dpjax eval"
        )
    if lead:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    distributed.sync_processes("run directory ready")
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
    mesh = step_lib.make_mesh(config.num_devices, config.fsdp_devices)
    streamed = uses_streaming(config, dataset, train_ids)
    if streamed:
        if lead and progress:
            size = training_bytes(config, dataset, train_ids) / 2**20
            print(f"streaming the training windows from disk ({size:.0f} MiB of steps; "
                  f"data_loader={config.data_loader!r}, data_memory_mb={config.data_memory_mb:g})",
                  file=sys.stderr)  # fmt: skip
        train_reader = WindowReader(dataset, train_ids, **horizons)
        read_val = lambda: _read_eval_batches(WindowReader(dataset, val_ids, **horizons), config,
                                              mesh)  # fmt: skip
    else:
        in_memory = lambda ids: step_lib.put_replicated(
            make_window_data([dataset[int(i)] for i in ids], **horizons), mesh
        )
        train_data = in_memory(train_ids)
        read_val = lambda: in_memory(val_ids)
    val_data = read_val() if len(val_ids) else None
    optimizer = step_lib.make_optimizer(config.optim, config.num_steps)
    metadata = {**policy_metadata(config, normalizer, spec), **(extra_metadata or {})}
    if lead:
        save_json_atomic(run_dir / CONFIG_FILENAME, metadata["config"])
    checkpointer = Checkpointer(run_dir, max_to_keep=config.max_to_keep)
    abstract = abstract_train_state(policy, config)
    state_sharding = step_lib.state_shardings(abstract, mesh)
    if resume and checkpointer.latest_step() is not None:
        # straight into this mesh's layout, whatever the device count that saved it
        state, _ = checkpointer.restore(_with_shardings(abstract, state_sharding))
    else:
        key = jax.random.key(config.seed)
        if objective is None or objective.init_params is None:
            params = policy.init(key)
        else:  # copied: the train state is donated to each step, `frozen` may share buffers
            params = jax.tree.map(jnp.array, objective.init_params)
        state = step_lib.init_train_state(params, optimizer, jax.random.fold_in(key, 1))
        state = step_lib.put_on_mesh(state, state_sharding)
    # The standard objective (uniform timesteps, unweighted) validates: runs with different
    # timestep sampling or loss weighting report comparable validation losses.
    loss_fn, val_loss_fn = policy.loss, policy.validation_loss
    frozen: tuple = ()
    frozen_sharding = None
    if objective is not None:
        loss_fn = val_loss_fn = objective.loss
        frozen_sharding = step_lib.state_shardings(objective.frozen, mesh)
        frozen = (step_lib.put_on_mesh(objective.frozen, frozen_sharding),)
    step_fn = step_lib.make_train_step(
        loss_fn, optimizer, config.optim, mesh, config.batch_size, config.num_steps,
        bool(frozen), state_sharding, frozen_sharding, streamed,
    )  # fmt: skip
    eval_fn = (
        step_lib.make_eval_loss(
            val_loss_fn,
            mesh,
            config.batch_size,
            config.val_batches,
            bool(frozen),
            state_sharding.ema_params,
            frozen_sharding,
            streamed,
        )  # fmt: skip
        if val_data is not None
        else None
    )
    val_key = jax.random.key(config.seed + VAL_KEY_OFFSET)
    log = MetricsLog(run_dir, resume=resume) if lead else None
    start_step = int(state.step)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "start_step": start_step,
        "data_loader": "stream" if streamed else "memory",
    }
    bar = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
               disable=not (progress and lead), dynamic_ncols=True)  # fmt: skip
    if streamed:  # the windows the in-memory step would draw, read from disk ahead of it
        rows = step_lib.StepRows(
            step_lib.host_key(state.rng), config.num_steps - start_step, config.batch_size,
            train_reader.num_windows, step_lib.local_rows(mesh, config.batch_size),
        )  # fmt: skip
        batches = iter(StreamedBatches(train_reader, rows))
        next_source = lambda: step_lib.put_batch(next(batches), mesh, config.batch_size)
    else:
        next_source = lambda: train_data
    t_last, steps_since, waited = time.perf_counter(), 0, 0.0
    try:
        for step in range(start_step + 1, config.num_steps + 1):
            t_wait = time.perf_counter()
            source = next_source()  # streamed: blocks only when the loader falls behind
            waited += time.perf_counter() - t_wait
            state, metrics = step_fn(state, source, *frozen)
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
            # training alone: the bookkeeping below (checks, validation, rollouts, logs,
            # checkpoints) is excluded, its clock restarting after it
            elapsed = time.perf_counter() - t_last
            record["steps_per_sec"] = steps_since / elapsed
            if streamed:  # the share of the time the step waited for its batch
                record["input_wait"] = waited / elapsed
            bad = {k: v for k, v in record.items() if not math.isfinite(v)}
            # The metrics describe the step's input parameters; the update itself can still
            # overflow, so the parameters about to be saved are checked as well.
            if is_ckpt and not bad and not bool(_all_finite((state.params, state.ema_params))):
                bad = {"parameters": "non-finite"}
            if bad:
                raise TrainingDivergedError(_diverged_message(step, bad, checkpointer))
            val_loss = (
                float(eval_fn(state.ema_params, val_data, val_key, *frozen)) if is_eval else None
            )
            if val_loss is not None:
                record["val_loss"] = val_loss
            if is_rollout:
                record.update(rollout_metrics(policy, state.ema_params, config, dataset))
            if log is not None:
                log.write(step, record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.1e}")
            if is_ckpt and checkpointer.latest_step() != step:
                checkpointer.save(step, state, metadata=metadata, val_loss=val_loss)
            summary.update({"final_step": step, **record})
            t_last, steps_since, waited = time.perf_counter(), 0, 0.0
            if stopping:
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
        checkpointer.close()
    return summary


def uses_streaming(config: TrainConfig, dataset, train_ids) -> bool:
    """Whether a run reads its training windows from disk (`TrainConfig.data_loader`)."""
    if config.data_loader not in ("auto", "memory", "stream"):
        raise ConfigError(
            f"data_loader must be 'auto', 'memory' or 'stream', got {config.data_loader!r}"
        )
    if config.data_loader != "auto":
        return config.data_loader == "stream"
    return training_bytes(config, dataset, train_ids) > config.data_memory_mb * 2**20


def training_bytes(config: TrainConfig, dataset, train_ids) -> int:
    """Bytes that the training episodes' steps take in memory (what "memory" puts on every
    device): the action and the policy's observation keys, from the dataset's step spec."""
    pc = config.policy
    spec = dataset.spec
    keys = ["action", *(f"observation/{k}" for k in (*pc.low_dim_keys, *pc.image_keys))]
    per_step = 0
    for key in keys:
        shape, dtype = spec.get(key) or spec.get(key.removeprefix("observation/"), ((), "float32"))
        per_step += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    lengths = dataset.episode_lengths()
    return per_step * sum(int(lengths[int(i)]) for i in train_ids)


def _read_eval_batches(reader: WindowReader, config: TrainConfig, mesh):
    """The validation batches `make_eval_loss` draws, read from disk once:
    (val_batches, batch_size, ...) on every device."""
    rows = step_lib.draw_eval_rows(
        jax.random.key(config.seed + VAL_KEY_OFFSET), config.val_batches, config.batch_size,
        reader.num_windows,
    )  # fmt: skip
    batches = [reader.read(r) for r in np.asarray(rows)]
    return step_lib.put_replicated(jax.tree.map(lambda *xs: np.stack(xs), *batches), mesh)


def rollout_metrics(policy, params, config: TrainConfig, dataset) -> dict[str, float]:
    """{"rollout_score", "rollout_success"} of closed-loop episodes on the dataset's task with
    the policy's default sampler (score: PushT's mean_max_reward, else success)."""
    task_name, task_options = collection_task(dataset)
    metrics, _ = evaluate_on_task(
        policy, params, task_name, task_options, num_episodes=config.rollout_episodes,
        seed=config.rollout_seed, latency=False,
    )  # fmt: skip
    return {"rollout_score": metrics["score"], "rollout_success": metrics["success_rate"]}


def _with_shardings(abstract, shardings):
    """`abstract` (ShapeDtypeStructs) placed by `shardings`: what a restore reads into."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _resume_advice(run_dir: Path) -> str:
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    where = f"the last checkpoint is step {max(steps)}" if steps else "no checkpoint yet"
    return (
        f"Run directory {run_dir}: {where}; start every process again with "
        f"--resume {run_dir} (and the same process flags) to continue."
    )


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
