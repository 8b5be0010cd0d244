"""chunk_blending: executing action chunks under inference delay, measured on trained policies.

Each trained run is evaluated in closed loop (held-out seeds) executing `--action-horizon`
actions per chunk, with each execution mode of `dpjax.policy.execution`:

- chunked: the newest arrived chunk (Diffusion Policy's receding horizon);
- temporal_ensemble: ACT's exponentially weighted average of every arrived chunk's action;
- rtc: real-time chunking, each chunk sampled with inpainting guidance towards the actions
  the previous chunk executes while it is being computed;

and each simulated inference delay d of `--delays` (control steps during which the previous
chunk keeps executing). Reported per cell: the task's score (PushT: mean max reward; cup:
success), success, the mean |a_t - a_(t-1)| where a new chunk takes over ("chunk jump")
against the same inside chunks, mean squared jerk, and the batch-1 latency of one planning
call (RTC's includes its vector-Jacobian product per step). Cells are cached in
WORK/cells.json and the timings, taken after every rollout, in WORK/latency.json (a rerun
skips what is done; `--remeasure-latency` times again, e.g. on a quiet machine).

    python experiments/chunk_blending.py --runs runs/flow/cup_diffusion \\
        runs/recipes/pusht/unet32_noise05/seed0 --action-horizon 8

Writes experiments/results/chunk_blending.md / .json / .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("chunked", "temporal_ensemble", "rtc")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", nargs="+", required=True,
        help="trained diffusion runs (RUN@0,3,7: that run's delays instead of --delays)",
    )  # fmt: skip
    parser.add_argument("--action-horizon", type=int, default=8, help="actions per chunk (s)")
    parser.add_argument(
        "--delays", help="comma-separated delays (default: 0 and three up to L - s per run)"
    )
    parser.add_argument("--episodes", type=int, help="evaluation episodes (task default)")
    parser.add_argument("--work", default="runs/chunk_blending", help="the cell cache goes here")
    parser.add_argument("--results", default=str(common.RESULTS_DIR))
    parser.add_argument(
        "--remeasure-latency", action="store_true", help="time the planning calls again"
    )
    return parser.parse_args(argv)


def default_delays(plan_length: int, action_horizon: int) -> tuple[int, ...]:
    top = plan_length - action_horizon
    return tuple(sorted({0, round(top / 3), round(2 * top / 3), top}))


def evaluate_cell(run_dir, action_horizon, mode, delay, episodes) -> dict:
    from dpjax.evaluate import evaluate_run
    from dpjax.policy.execution import Execution

    metrics, _, task = evaluate_run(
        run_dir, episodes=episodes, action_horizon=action_horizon, progress=False,
        execution=Execution(mode=mode, delay=delay), latency=False,
    )  # fmt: skip
    keep = ("score", "success_rate", "success_ci95", "chunk_jump", "within_chunk_step",
            "mean_squared_jerk", "mode_frequency_error")  # fmt: skip
    return {"task": task, "episodes": metrics["episodes"],
            **{k: metrics[k] for k in keep if k in metrics}}  # fmt: skip


def latency_cell(run_dir, guided: bool) -> dict:
    """Batch-1 ms of one planning call of the run's sampler, with RTC's guidance or without."""
    from dpjax.evaluate import measure_chunk_latency
    from dpjax.policy import load_policy

    policy, params, _ = load_policy(run_dir)
    return {"chunk_latency_ms": measure_chunk_latency(policy, params, guided=guided)[
        "chunk_latency_ms"]}  # fmt: skip


def table(rows: list[dict]) -> str:
    return common.markdown_table([
        ("task", "l", lambda r: r["task"]),
        ("s", "r", lambda r: str(r["action_horizon"])),
        ("delay", "r", lambda r: str(r["delay"])),
        ("execution", "l", lambda r: r["mode"]),
        ("score", "r", lambda r: f"{r['score']:.3f}"),
        ("success (95% CI)", "l", common.success_cell),
        ("chunk jump", "r", lambda r: f"{r['chunk_jump']:.4f}"),
        ("inside step", "r", lambda r: f"{r['within_chunk_step']:.4f}"),
        ("jerk", "r", lambda r: f"{r['mean_squared_jerk']:.2e}"),
        ("ms/plan", "r", lambda r: f"{r['chunk_latency_ms']:.1f}"),
    ], rows)  # fmt: skip


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.8 * len(tasks)), squeeze=False)
    for (left, right), task in zip(axes, tasks, strict=True):
        for mode in MODES:
            mine = [r for r in rows if r["task"] == task and r["mode"] == mode]
            delays = [r["delay"] for r in mine]
            left.plot(delays, [r["score"] for r in mine], "o-", label=mode)
            right.plot(delays, [r["chunk_jump"] for r in mine], "o-", label=mode)
        metric = "mean max reward" if task == "pusht" else "success rate"
        left.set_ylabel(f"{task}: {metric}")
        right.set_ylabel("mean |a_t - a_(t-1)| at chunk switches")
        for ax in (left, right):
            ax.set_xlabel("inference delay (control steps)")
            ax.legend(fontsize=8)
        left.set_title(f"{task}: quality under delay")
        right.set_title(f"{task}: jump where a new chunk takes over")
    return common.save_figure(fig, path)


def main(argv=None) -> int:
    from dpjax.policy import load_policy

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = common.Progress()
    cache = common.CellCache(Path(args.work) / "cells.json")
    timings = common.CellCache(Path(args.work) / "latency.json")
    if args.remeasure_latency:
        timings.clear()
    s = args.action_horizon
    rows, described = [], []
    for run in args.runs:
        run, _, own = run.partition("@")  # RUN@0,3,7: this run's delays
        policy, _, _ = load_policy(run)
        c = policy.config
        described.append(
            f"`{run}`: {c.denoiser.name} denoiser, {c.sampler} {c.num_inference_steps} steps, "
            f"chunks of L = {policy.plan_length} actions from the current step, s = {s} executed"
        )
        listed = own or args.delays
        delays = (
            tuple(int(d) for d in listed.split(","))
            if listed
            else default_delays(policy.plan_length, s)
        )
        for delay in delays:
            for mode in MODES:
                cell = cache.get(
                    f"{run}|{s}|{mode}|{delay}|{args.episodes}",
                    lambda: evaluate_cell(run, s, mode, delay, args.episodes),  # noqa: B023
                )
                rows.append({"run": run, "action_horizon": s, "mode": mode, "delay": delay,
                             **cell})  # fmt: skip
                log(f"{cell['task']} d={delay} {mode:>17}: score {cell['score']:.3f}, "
                    f"jump {cell['chunk_jump']:.4f}")  # fmt: skip
    for row in rows:  # timed after every rollout: see --remeasure-latency
        guided = row["mode"] == "rtc"
        row.update(timings.get(f"{row['run']}|{guided}",
                               lambda: latency_cell(row["run"], guided)))  # noqa: B023 # fmt: skip
    intro = (
        "Closed loop on held-out seeds, the policy's own sampler and step count; each chunk "
        "planned from the observation at its step, executed from `delay` steps later (the "
        "first chunk is waited for). Chunk jump: mean |a_t - a_(t-1)| at the steps where a "
        "new chunk takes over (steps s + d, 2s + d, ...); inside step: the same elsewhere. "
        "RTC: guidance weight clip 5 (max_guidance), RTC's soft mask.\n\n"
        + "\n".join(f"- {d}" for d in described)
    )
    common.publish_study(
        "chunk_blending", quick=False, script=__file__, argv=argv, wall_seconds=log.elapsed,
        budget_cuts=[], intro=intro, body=table(rows), data={"rows": rows},
        plot=lambda path: plot(rows, path), results_dir=args.results,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
