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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained policy in closed loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the first episode")
    parser.add_argument("--sampler", help="sampler (default: the policy's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the policy's)")
    parser.add_argument("--best", action="store_true", help="use the best-validation checkpoint")
    parser.add_argument("--task", help="task name (default: the dataset's)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/eval)")
    parser.set_defaults(func=run)


def dataset_task(dataset_path: str) -> tuple[str, dict]:
    """(task name, task options) recorded by `dpjax collect` in the dataset."""
    from dpjax.data import load_dataset

    dataset = load_dataset(dataset_path)
    info = (dataset.stats.info if dataset.stats else {}) or {}
    collection = info.get("collection", {})
    name = collection.get("task") or dataset[0]["episode_metadata"].get("task")
    return str(name), dict(collection.get("task_options", {}))


def evaluate_run(run_dir, *, episodes, seed, sampler=None, steps=None, best=False, task=None):
    """(metrics, rollouts, task name) for a run directory."""
    from dpjax import evaluate
    from dpjax.envs import make_task
    from dpjax.run import load_policy

    policy, params, metadata = load_policy(run_dir, best=best)
    if task is None:
        task_name, task_options = dataset_task(metadata["config"]["dataset"])
    else:
        task_name, task_options = task, {}
    options = {"sampler": sampler, "num_inference_steps": steps}
    if task_name == "multimodal":
        from dpjax.envs.multimodal import config_from_options

        metrics, rollouts = evaluate.evaluate_multimodal(
            policy, params, num_episodes=episodes, seed=seed,
            env_config=config_from_options(**task_options), **options,
        )  # fmt: skip
    else:
        from tqdm import tqdm

        env_task = make_task(task_name, **task_options)
        with tqdm(total=episodes * env_task.max_episode_steps, desc="eval", unit="step") as bar:
            rollouts = evaluate.rollout_gym(
                env_task,
                policy,
                params,
                num_episodes=episodes,
                seed=seed,
                progress=lambda: bar.update(10),
                frames=6,
                **options,
            )
        metrics = evaluate.summarize_gym(rollouts, policy.config.action_horizon)
        metrics["denoiser_evaluations"] = policy.num_denoiser_evaluations(sampler, steps)
        metrics.update(evaluate.measure_chunk_latency(policy, params, **options))
    c = policy.config
    metrics.update(
        task=task_name,
        kind=c.kind,
        sampler=(sampler or c.sampler) if c.kind == "diffusion" else None,
        num_inference_steps=(steps or c.num_inference_steps) if c.kind == "diffusion" else None,
    )
    return metrics, rollouts, task_name


def markdown(metrics: dict) -> str:
    rows = [f"| {k} | {v} |" for k, v in metrics.items() if not isinstance(v, dict)]
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows.append(f"| {k} | {', '.join(f'{a}: {b:.3f}' for a, b in v.items())} |")
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def run(args) -> int:
    metrics, rollouts, task_name = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        best=args.best,
        task=args.task,
    )
    out = Path(args.out or Path(args.run_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval_{metrics['sampler'] or 'bc'}_{metrics['num_inference_steps'] or 1}"
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
