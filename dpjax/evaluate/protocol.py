"""The evaluation protocol (held-out seeds, episode counts) and evaluating a trained run.

`evaluate_run(run_dir)` rebuilds the run's policy from a checkpoint (last, best validation
loss, a given step, or the best in-training rollout score via `best_rollout_step`) and the
task its dataset was collected on, with any sampler, step count or executed-chunk length
chosen now, without retraining: what `dpjax eval`, the demo and the experiments run.
"""

from __future__ import annotations

from dpjax.checkpoint import Checkpointer
from dpjax.data import collection_task, load_dataset
from dpjax.errors import ConfigError
from dpjax.evaluate.metrics import demonstration_mode_frequencies
from dpjax.evaluate.rollouts import evaluate_on_task
from dpjax.policy import load_policy, with_action_horizon
from dpjax.training.logs import read_metrics

EVAL_SEED = 100_000  # far from the demonstration seeds 0, 1, 2, ...
# Diffusion Policy's PushT protocol: 50 test episodes from seed 100000; elsewhere 100.
EVAL_EPISODES = {"pusht": 50}
DEFAULT_EVAL_EPISODES = 100


def default_episodes(task_name: str) -> int:
    return EVAL_EPISODES.get(task_name, DEFAULT_EVAL_EPISODES)


def evaluate_run(
    run_dir,
    *,
    episodes=None,
    seed=EVAL_SEED,
    sampler=None,
    steps=None,
    best=False,
    step=None,
    task=None,
    progress=True,
    action_horizon=None,
    execution=None,
    latency=True,
):
    """(metrics, rollouts, task name) for a run directory's last (`best`: best-validation;
    `step`: that) checkpoint; `episodes` None: the task's default (`default_episodes`);
    `execution` (an `Execution`): how chunks become actions (default chunked, no delay);
    `latency` False skips timing the chunk call (time it on a quiet machine)."""
    policy, params, metadata = load_policy(run_dir, best=best, step=step)
    if action_horizon is not None:
        policy = with_action_horizon(policy, action_horizon)
    dataset = None  # opened at most once, for the task and for the expert's modes
    if task is None:
        dataset = load_dataset(metadata["config"]["dataset"])
        task_name, task_options = collection_task(dataset)
    else:
        task_name, task_options = task, {}
    if episodes is None:
        episodes = default_episodes(task_name)
    expert = None
    if task_name == "multimodal" or task_options.get("strategies") is not None:
        from dpjax.envs import make_task

        if dataset is None:
            dataset = load_dataset(metadata["config"]["dataset"])
        modes = make_task(task_name, **task_options).modes
        expert = demonstration_mode_frequencies(dataset, modes)
    metrics, rollouts = evaluate_on_task(
        policy, params, task_name, task_options, num_episodes=episodes, seed=seed,
        frames=6, progress=progress, expert_mode_frequencies=expert, execution=execution,
        latency=latency,
        sampler=sampler, num_inference_steps=steps,
    )  # fmt: skip
    c = policy.config
    which = "best validation loss" if best else ("given" if step is not None else "last")
    metrics.update(
        task=task_name,
        checkpoint=f"{which} (step {metadata['step']}), EMA parameters",
        kind=c.kind,
        action_horizon=c.action_horizon,
        sampler=(sampler or c.sampler) if c.kind == "diffusion" else None,
        num_inference_steps=(steps or c.num_inference_steps) if c.kind == "diffusion" else None,
    )
    return metrics, rollouts, task_name


def markdown(metrics: dict) -> str:
    """The metrics as a two-column table (per-episode values stay in the JSON)."""
    rows = [f"| {k} | {_cell(v)} |" for k, v in metrics.items() if not isinstance(v, dict)]
    for k, v in metrics.items():
        if isinstance(v, dict) and k != "per_episode":
            rows.append(f"| {k} | {', '.join(f'{a}: {b:.3f}' for a, b in v.items())} |")
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def best_rollout_step(run_dir) -> int:
    """The kept checkpoint whose in-training rollout score (metrics.jsonl) is highest."""
    with Checkpointer(run_dir) as ckpt:
        kept = set(ckpt.all_steps())
    scored = [(r["rollout_score"], r["step"]) for r in read_metrics(run_dir)
              if "rollout_score" in r and r["step"] in kept]  # fmt: skip
    if not scored:
        raise ConfigError(
            f"{run_dir}: no kept checkpoint has an in-training rollout score (train with "
            "--set rollout_every=N, a multiple of checkpoint_every)"
        )
    return max(scored)[1]


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
