"""checkpoint_curve: every kept checkpoint of some runs, evaluated on the test protocol.

Validation loss does not say which checkpoint works in closed loop, and the in-training
rollouts (`rollout_every`, seeds 200000...) are a different seed set. This evaluates each kept
checkpoint of each run on the task's own protocol (PushT: 50 episodes from seed 100000,
`mean_max_reward`) with one sampler setting, next to the in-training rollout score and the
validation loss logged at that step: the learning curve a checkpoint choice is made on.

    python experiments/checkpoint_curve.py runs/recipes/pusht/shipped/seed0 ... \\
        --sampler ddim --steps 10 --action-horizon 4 --name pusht_checkpoints

Writes experiments/results/NAME.md, .json and .png (one line per run: test score solid,
in-training rollout score dashed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def kept_steps(run_dir: Path) -> list[int]:
    from dpjax.checkpoint import Checkpointer

    with Checkpointer(run_dir) as checkpointer:
        return sorted(checkpointer.all_steps())


def logged_at(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: the metrics record logged at that step}."""
    from dpjax.training.logs import read_metrics

    return {r["step"]: r for r in read_metrics(run_dir)}


def evaluate_checkpoints(run_dir: Path, options: dict, episodes, log) -> list[dict[str, Any]]:
    """[{step, score, success_rate, rollout_score, val_loss, eval_seconds}] per kept step."""
    from dpjax.evaluate import evaluate_run
    from dpjax.policy import load_run_config

    load_run_config(run_dir)  # a clear error for a directory that holds no run
    records, points = logged_at(run_dir), []
    for step in kept_steps(run_dir):
        t0 = time.perf_counter()
        metrics, _, _ = evaluate_run(run_dir, step=step, episodes=episodes, progress=False,
                                     **options)  # fmt: skip
        logged = records.get(step, {})
        points.append({
            "step": step, "score": metrics["score"], "success_rate": metrics["success_rate"],
            "rollout_score": logged.get("rollout_score"), "val_loss": logged.get("val_loss"),
            "eval_seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
        log(f"{run_dir} step {step}: score {metrics['score']:.3f}, "
            f"success {metrics['success_rate']:.0%}")  # fmt: skip
    return points


def table(curves: dict[str, list[dict]]) -> str:
    lines = ["| run | step | test score | test success | in-training rollout score | val loss |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run, points in curves.items():
        best = max(points, key=lambda p: p["score"])["step"] if points else None
        for p in points:
            mark = " (best)" if p["step"] == best else ""
            rollout = "" if p["rollout_score"] is None else f"{p['rollout_score']:.3f}"
            val = "" if p["val_loss"] is None else f"{p['val_loss']:.4f}"
            lines.append(f"| {run} | {p['step']}{mark} | {p['score']:.3f} | "
                         f"{p['success_rate']:.0%} | {rollout} | {val} |")  # fmt: skip
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (run, points) in enumerate(curves.items()):
        color = f"C{i}"
        steps = [p["step"] for p in points]
        ax.plot(steps, [p["score"] for p in points], "o-", color=color, label=f"{run}: test")
        rollout = [
            (p["step"], p["rollout_score"]) for p in points if p["rollout_score"] is not None
        ]
        if rollout:
            ax.plot(*zip(*rollout, strict=True), "s--", color=color, alpha=0.5,
                    label=f"{run}: in-training rollouts")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--action-horizon", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=None, help="default: the task's")
    parser.add_argument("--name", default="checkpoints", help="results page name")
    parser.add_argument("--results", default=str(common.RESULTS_DIR))
    parser.add_argument("--add", action="store_true",
                        help="keep the runs already on the page NAME (same options), add these")  # fmt: skip
    args = parser.parse_args(argv)
    from dpjax.errors import DpjaxError

    log = common.Progress()
    options = {"sampler": args.sampler, "steps": args.steps,
               "action_horizon": args.action_horizon}  # fmt: skip
    previous = Path(args.results) / f"{args.name}.json"
    kept = {"curves": {}}
    if args.add and previous.exists():  # checked before any evaluation is spent
        kept = json.loads(previous.read_text())
        if kept["options"] != options:
            print(f"error: {previous} was evaluated with {kept['options']}, not {options}",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        curves = {run: evaluate_checkpoints(Path(run), options, args.episodes, log)
                  for run in args.runs}  # fmt: skip
    except DpjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    curves = {**{r: c for r, c in kept["curves"].items() if r not in curves}, **curves}
    setting = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None) or "defaults"
    body = table(curves)
    record = common.provenance(script=__file__, argv=argv, size="full",
                               wall_seconds=log.elapsed, budget_cuts=())  # fmt: skip
    markdown = (
        f"# {args.name}\n\nEvery kept checkpoint (EMA parameters) of each run, evaluated on "
        f"the task's test protocol ({setting}); the in-training rollout score (other seeds, "
        "the run's own sampler and chunk length) and validation loss logged at that step "
        f"beside it.\n\n{common.provenance_markdown(record)}\n{body}\n"
    )
    common.publish(args.name, markdown, {**record, "options": options, "curves": curves}, body,
                   plot=lambda path: plot(curves, f"{args.name}: {setting}", path),
                   results_dir=args.results)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
