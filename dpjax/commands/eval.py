"""`dpjax eval RUN_DIR [--episodes N] [--sampler S --steps K] [--best] [--out DIR]`.

Closed-loop rollouts of a trained policy on the task its dataset was collected on (fixed
seeds, held apart from the demonstration seeds), with any sampler and step count chosen now,
without retraining. Writes eval_<sampler>_<steps>.json / .md (and .png for the multimodal
task) into DIR (default RUN_DIR/eval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL_SEED = 100_000  # far from the demonstration seeds 0, 1, 2, ...
# Diffusion Policy's PushT protocol: 50 test episodes from seed 100000; elsewhere 100.
EVAL_EPISODES = {"pusht": 50}
DEFAULT_EVAL_EPISODES = 100


def default_episodes(task_name: str) -> int:
    return EVAL_EPISODES.get(task_name, DEFAULT_EVAL_EPISODES)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained policy in closed loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "--episodes",
        type=int,
        help="evaluation episodes (default: 50 on PushT, as Diffusion Policy evaluates, else 100)",
    )
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the first episode")
    parser.add_argument("--sampler", help="sampler (default: the policy's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the policy's)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="use the best-validation checkpoint")
    which.add_argument("--step", type=int, help="use the checkpoint of this training step")
    which.add_argument(
        "--best-rollout",
        action="store_true",
        help="use the kept checkpoint with the best in-training rollout score "
        "(runs trained with rollout_every > 0; those rollouts use other seeds)",
    )
    parser.add_argument(
        "--action-horizon",
        type=int,
        help="execute this many actions of each predicted chunk (default: the policy's; "
        "1 replans every step)",
    )
    parser.add_argument("--task", help="task name (default: the dataset's)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/eval)")
    parser.set_defaults(func=run)


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
):
    """(metrics, rollouts, task name) for a run directory's last (`best`: best-validation;
    `step`: that) checkpoint; `episodes` None: the task's default (`default_episodes`)."""
    from dpjax import evaluate
    from dpjax.run import load_policy

    policy, params, metadata = load_policy(run_dir, best=best, step=step)
    if action_horizon is not None:
        from dpjax.policy import with_action_horizon

        policy = with_action_horizon(policy, action_horizon)
    from dpjax.data import collection_task, load_dataset

    dataset = None  # opened at most once, for the task and for the expert's modes
    if task is None:
        dataset = load_dataset(metadata["config"]["dataset"])
        task_name, task_options = collection_task(dataset)
    else:
        task_name, task_options = task, {}
    if episodes is None:
        episodes = default_episodes(task_name)
    expert = None
    if task_name == "multimodal":
        if dataset is None:
            dataset = load_dataset(metadata["config"]["dataset"])
        expert = evaluate.demonstration_mode_frequencies(dataset)
    metrics, rollouts = evaluate.evaluate_on_task(
        policy, params, task_name, task_options, num_episodes=episodes, seed=seed,
        frames=6, progress=progress, expert_mode_frequencies=expert,
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
    from dpjax.checkpoint import Checkpointer
    from dpjax.errors import ConfigError
    from dpjax.logs import read_metrics

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


def run(args) -> int:
    metrics, rollouts, task_name = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        best=args.best,
        step=best_rollout_step(args.run_dir) if args.best_rollout else args.step,
        task=args.task,
        action_horizon=args.action_horizon,
    )
    out = Path(args.out or Path(args.run_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    if metrics["kind"] == "bc" and (args.sampler or args.steps):
        print("note: a BC policy has no sampler; --sampler/--steps are ignored")
    stem = f"eval_{metrics['sampler'] or 'bc'}_{metrics['num_inference_steps'] or 1}"
    if args.action_horizon is not None:
        stem += f"_ah{args.action_horizon}"
    (out / f"{stem}.json").write_text(json.dumps(metrics, indent=1))
    (out / f"{stem}.md").write_text(markdown(metrics))
    print(markdown(metrics))
    written = [out / f"{stem}.json", out / f"{stem}.md"]
    try:
        from dpjax import evaluate

        if task_name == "multimodal":
            written.append(
                evaluate.plot_multimodal({metrics["kind"]: rollouts}, out / f"{stem}.png")
            )
        elif rollouts.get("frames"):
            title = (
                f"{task_name}: first episode ({'success' if rollouts['success'][0] else 'failure'})"
            )
            written.append(evaluate.plot_frames(rollouts["frames"], out / f"{stem}.png", title))
    except ImportError:
        print("(install the `plot` extra for the picture)")
    print("wrote " + ", ".join(map(str, written)))
    return 0
