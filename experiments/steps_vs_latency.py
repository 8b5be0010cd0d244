"""steps_vs_latency: the seed's "Speed vs Quality" table, measured on a trained policy.

One diffusion policy is trained on the multimodal cup task (the `dpjax demo` recipe), then
evaluated in closed loop with each sampler at 1, 2, 5, 10, 20, 50 and 100 denoising steps
without retraining: success (95% CI), mode frequencies, smoothness (mean squared jerk, chunk
jump) and the batch-1 latency of one observation -> action-chunk call. The full size also
trains a policy on a 1000-timestep schedule and adds 1000 steps. The seed's table (10 steps
50 ms "fair" ... 1000 steps 5 s "excellent") is printed beside ours, labelled as the seed's.

    python experiments/steps_vs_latency.py --quick          # ~10 min on 2 CPU cores
    python experiments/steps_vs_latency.py                  # full size
    python experiments/steps_vs_latency.py --run dpjax_demo/diffusion   # reuse a trained run

Writes experiments/results/steps_vs_latency{_quick}.md / .json / .png.

The extended study (`--runs`) compares methods, not only samplers: any trained runs, of any
task (the cup, PushT keypoints), each evaluated with what its training makes available:

- a diffusion policy: DDPM, DDIM and DPM-Solver++ at each of `--steps`;
- a flow matching policy: flow Euler at each of `--steps`;
- a consistency student (`dpjax distill --method consistency`): 1, 2 and 3 steps;
- a BC policy or BC student: its one forward pass.

Each cell reports the task's score (PushT: mean max reward; cup: success), success with its
95% interval, smoothness, and the latency of one observation -> chunk call at batch 1 and at
batch 64 (median after compilation). Cells are cached in WORK/cells.json (rollouts) and
WORK/latency.json (timings, taken after all rollouts; `--remeasure-latency` takes them
again, e.g. on a quiet machine), so a rerun skips the finished ones. Writes experiments/results/steps_vs_latency_methods.md / .json / .png:

    python experiments/steps_vs_latency.py --runs runs/flow/cup_diffusion runs/flow/cup_cd ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SEED_TABLE = [  # the seed document's "Speed vs Quality Tradeoff" (not measured here)
    (10, "50 ms", "Fair"),
    (50, "150 ms", "Good"),
    (100, "250 ms", "Very good"),
    (1000, "5 s", "Excellent"),
]
SIZES = {
    "quick": dict(
        episodes=200, train_steps=4000, eval_episodes=100,
        samplers=("ddpm", "ddim", "dpmsolver++"), steps=(1, 2, 5, 10, 20, 50, 100),
        long_schedule=False,
    ),
    "full": dict(
        episodes=200, train_steps=12000, eval_episodes=200,
        samplers=("ddpm", "ddim", "dpmsolver++", "euler", "heun"),
        steps=(1, 2, 5, 10, 20, 50, 100), long_schedule=True,
    ),
}  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small size (minutes on a CPU)")
    parser.add_argument("--run", help="evaluate this trained diffusion run instead of training")
    parser.add_argument(
        "--runs", nargs="+",
        help="the extended study: compare the methods of these trained runs (RUN@1,2,10: "
        "that run's step counts instead of --steps)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", default="1,2,5,10,20,100", help="--runs: step counts of the multi-step methods"
    )
    parser.add_argument(
        "--remeasure-latency", action="store_true", help="--runs: time every cell again"
    )
    parser.add_argument("--work", default="runs/steps_vs_latency", help="data and runs go here")
    parser.add_argument("--eval-episodes", type=int, help="override the size's episode count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(common.RESULTS_DIR))
    parser.add_argument("--name", default="steps_vs_latency_methods",
                        help="--runs: the results' file name (without suffix)")  # fmt: skip
    return parser.parse_args(argv)


def train_policy(work: Path, episodes: int, train_steps: int, seed: int, timesteps: int, log):
    """A diffusion policy on the multimodal task with the demo's recipe; returns its run dir."""
    from dpjax.configs.multimodal_diffusion import recipe
    from dpjax.envs.collect import collect_demos
    from dpjax.training.loop import train

    dataset = collect_demos(work / "data", episodes, seed)
    config = recipe(dataset, "diffusion", "mlp", train_steps, seed)
    config = dataclasses.replace(
        config, policy=dataclasses.replace(config.policy, num_train_timesteps=timesteps)
    )
    run_dir = work / f"diffusion_T{timesteps}"
    log(f"training a diffusion policy (T={timesteps}, {train_steps} steps) in {run_dir}")
    train(config, run_dir, overwrite=True)
    return run_dir


def describe_run(run_dir: Path) -> str:
    """The trained policy's recipe, read from its run directory."""
    from dpjax.policy import load_run_config

    config = load_run_config(run_dir)
    p = config.policy
    return (
        f"{run_dir}: {p.denoiser.name} denoiser predicting {p.prediction_type}, {p.beta_schedule} "
        f"schedule with T={p.num_train_timesteps}, clip {p.clip_sample}, "
        f"{p.timestep_spacing} spacing; {config.num_steps} training steps at batch "
        f"{config.batch_size}"
    )


def evaluate_grid(run_dir: Path, samplers, steps, eval_episodes: int, log) -> list[dict]:
    from dpjax import evaluate
    from dpjax.policy import load_policy

    policy, params, _ = load_policy(run_dir)
    T = policy.config.num_train_timesteps
    rows = []
    for sampler in samplers:
        for n in steps:
            if n > T:
                continue
            metrics, _ = evaluate.evaluate_multimodal(
                policy, params, num_episodes=eval_episodes, sampler=sampler,
                num_inference_steps=n,
            )  # fmt: skip
            row = {"sampler": sampler, "steps": n, "num_train_timesteps": T, **metrics}
            rows.append(row)
            log(f"T={T} {sampler:>11} {n:>4} steps: success {metrics['success_rate']:.0%}, "
                f"{metrics['chunk_latency_ms']:.1f} ms/chunk")  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| sampler | T | steps | evals | success (95% CI) | north / east / south | jerk "
        "| chunk jump | ms/chunk (p95) |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["success_ci95"]
        f = r["mode_frequencies"]
        lines.append(
            f"| {r['sampler']} | {r['num_train_timesteps']} | {r['steps']} | "
            f"{r['denoiser_evaluations']} | {r['success_rate']:.0%} ({lo:.0%}-{hi:.0%}) | "
            f"{f['north']:.2f} / {f['east']:.2f} / {f['south']:.2f} | "
            f"{r['mean_squared_jerk']:.2e} | {r['chunk_jump']:.3f} | "
            f"{r['chunk_latency_ms']:.2f} ({r['chunk_latency_p95_ms']:.2f}) |"
        )
    return "\n".join(lines)


def seed_table() -> str:
    lines = ["| steps | latency (seed) | quality (seed) |", "|---:|---|---|"]
    lines += [f"| {n} | {latency} | {quality} |" for n, latency, quality in SEED_TABLE]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        for T in sorted({r["num_train_timesteps"] for r in rows}):
            mine = [r for r in rows if r["sampler"] == sampler and r["num_train_timesteps"] == T]
            if not mine:
                continue
            label = sampler if T == 100 else f"{sampler} (T={T})"
            latency = [r["chunk_latency_ms"] for r in mine]
            success = [100 * r["success_rate"] for r in mine]
            errors = [[100 * (r["success_rate"] - r["success_ci95"][0]) for r in mine],
                      [100 * (r["success_ci95"][1] - r["success_rate"]) for r in mine]]  # fmt: skip
            (line,) = left.plot(latency, success, "o-", label=label)
            left.errorbar(latency, success, yerr=errors, fmt="none", color=line.get_color(),
                          alpha=0.4)  # fmt: skip
            for r, x, y in zip(mine, latency, success, strict=True):
                left.annotate(str(r["steps"]), (x, y), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")  # fmt: skip
            right.plot([r["steps"] for r in mine], [r["mean_squared_jerk"] for r in mine], "o-",
                       color=line.get_color(), label=label)  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("latency per action chunk, batch 1 (ms, log)")
    left.set_ylabel("closed-loop success (%)")
    left.set_title("quality vs latency (labels: denoising steps)")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("denoising steps")
    right.set_ylabel("mean squared jerk of executed actions")
    right.set_title("smoothness vs steps")
    return common.save_figure(fig, path)


# --------------------------------------------------------------------------- --runs: methods
DIFFUSION_SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
CONSISTENCY_STEPS = (1, 2, 3)
BATCH_LATENCY = 64


def method_of(config, metadata) -> str:
    """What a run is: "consistency" / "bc student" (distilled), "bc", "flow", "diffusion"."""
    distilled = (metadata.get("distillation") or {}).get("method")
    if distilled:
        return "consistency" if distilled == "consistency" else "bc student"
    if config.policy.kind == "bc":
        return "bc"
    return "flow" if config.policy.objective == "flow_matching" else "diffusion"


def method_variant(config, metadata) -> str:
    """What sets a run apart from others of its method, for its curve's label: a consistency
    student's mode-seeking term, mode gate, training length and seed (other than 0); a BC
    head's hypotheses, and a BC student's head widths and training length ("" for none)."""
    from dpjax.distill import ModeSeeking

    mode_seeking = (metadata.get("distillation") or {}).get("mode_seeking")
    gate = config.policy.gate_modes
    if mode_seeking or gate > 1:
        label = ""
        if mode_seeking:
            times = mode_seeking["max_time"]
            window = "" if times == ModeSeeking().max_time else f", t <= {times:g} T"
            label += f" + mode seeking {mode_seeking['weight']:g}{window}"
        if gate > 1:
            label += f" + gate {gate}"
        seed = f", seed {config.seed}" if config.seed else ""
        return f"{label}, {config.num_steps} steps{seed}"
    if config.policy.kind != "bc":
        return ""
    head = config.policy.bc_head
    parts = [f"{head.num_hypotheses} hypotheses"] if head.num_hypotheses > 1 else []
    if metadata.get("distillation"):  # students differ by their heads and training lengths
        widths = "-".join(map(str, head.hidden_dims))
        parts += [f"head {widths}", f"{config.num_steps} steps"]
    return f" ({', '.join(parts)})" if parts else ""


def method_cells(method: str, steps, variant: str = "") -> list[tuple[str, str | None, int | None]]:
    """(curve label, sampler, steps) of each evaluation a run of this method gets; `variant`
    (method_variant) ends the label."""
    if method == "diffusion":
        return [(f"{s} (diffusion)", s, n) for s in DIFFUSION_SAMPLERS for n in steps]
    if method == "flow":
        return [("flow_euler (flow matching)", "flow_euler", n) for n in steps]
    if method == "consistency":
        return [(f"consistency student{variant}", "ddim", n) for n in CONSISTENCY_STEPS]
    return [(f"{method}{variant}", None, None)]


def evaluate_cell(run_dir, sampler, steps, episodes) -> dict:
    """Closed-loop quality of one (run, sampler, steps) cell (no timing: see latency_cell)."""
    from dpjax.evaluate import evaluate_run

    metrics, _, task = evaluate_run(
        run_dir, episodes=episodes, sampler=sampler, steps=steps, progress=False, latency=False
    )
    keep = ("score", "success_rate", "success_ci95", "mean_squared_jerk", "chunk_jump",
            "denoiser_evaluations", "mode_frequencies", "mean_max_reward")  # fmt: skip
    return {"task": task, "episodes": metrics["episodes"],
            **{k: metrics[k] for k in keep if k in metrics}}  # fmt: skip


def latency_cell(run_dir, sampler, steps) -> dict:
    """Median (p95) ms of one chunk call at batch 1, median at batch BATCH_LATENCY."""
    from dpjax.evaluate import measure_chunk_latency
    from dpjax.policy import load_policy

    policy, params, _ = load_policy(run_dir)
    one = measure_chunk_latency(policy, params, sampler=sampler, num_inference_steps=steps)
    wide = measure_chunk_latency(
        policy, params, repeats=5, batch_size=BATCH_LATENCY, sampler=sampler,
        num_inference_steps=steps,
    )  # fmt: skip
    return {"chunk_latency_ms": one["chunk_latency_ms"],
            "chunk_latency_p95_ms": one["chunk_latency_p95_ms"],
            "batch_latency_ms": wide["chunk_latency_ms"]}  # fmt: skip


def describe_any_run(run_dir: Path, method: str, variant: str = "") -> str:
    from dpjax.policy import load_run_config

    c = load_run_config(run_dir)
    p = c.policy
    net = p.denoiser.name if p.kind == "diffusion" else f"MLP head {p.bc_head.hidden_dims}"
    what = {"diffusion": f"diffusion ({p.prediction_type}, T={p.num_train_timesteps})",
            "flow": f"flow matching ({p.prediction_type}, {p.timestep_sampling} times)"}.get(
                method, method)  # fmt: skip
    return f"`{run_dir}`: {what}{variant}, {net}; {c.num_steps} steps at batch {c.batch_size}"


def _number(value, spec: str) -> str:
    """`value` formatted, or "-" where an episode set had none (no chunk switch to measure)."""
    return "-" if value is None else format(value, spec)


def _modes_cell(row: dict) -> str:
    """The cup's mode frequencies (north/east/south), "-" for a task without modes."""
    freqs = row.get("mode_frequencies")
    return "/".join(f"{v:.2f}" for v in freqs.values()) if freqs else "-"


def methods_table(rows: list[dict]) -> str:
    return common.markdown_table([
        ("task", "l", lambda r: r["task"]),
        ("curve", "l", lambda r: r["curve"]),
        ("steps", "r", lambda r: str(r["steps"] or "-")),
        ("evals", "r", lambda r: str(r["denoiser_evaluations"])),
        ("score", "r", lambda r: f"{r['score']:.3f}"),
        ("success (95% CI)", "l", common.success_cell),
        ("modes (cup: N/E/S)", "l", _modes_cell),
        ("jerk", "r", lambda r: _number(r["mean_squared_jerk"], ".2e")),
        ("chunk jump", "r", lambda r: _number(r["chunk_jump"], ".3f")),
        ("ms/chunk batch 1", "r", lambda r: f"{r['chunk_latency_ms']:.2f}"),
        (f"ms/chunk batch {BATCH_LATENCY}", "r", lambda r: f"{r['batch_latency_ms']:.1f}"),
    ], rows)  # fmt: skip


def methods_plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        mine = [r for r in rows if r["task"] == task]
        for ax, key, batch in zip(row_axes, ("chunk_latency_ms", "batch_latency_ms"),
                                  (1, BATCH_LATENCY), strict=True):  # fmt: skip
            for curve in dict.fromkeys(r["curve"] for r in mine):
                pts = [r for r in mine if r["curve"] == curve]
                x = [r[key] for r in pts]
                y = [r["score"] for r in pts]
                ax.plot(x, y, "o-" if len(pts) > 1 else "s", label=curve)
                for r, xi, yi in zip(pts, x, y, strict=True):
                    if r["steps"]:
                        ax.annotate(str(r["steps"]), (xi, yi), fontsize=7, xytext=(3, 3),
                                    textcoords="offset points")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel(f"latency per action chunk, batch {batch} (ms, log)")
            metric = "mean max reward" if task == "pusht" else "success rate"
            ax.set_ylabel(f"{task}: {metric}")
            ax.set_title(f"{task}, batch {batch} (labels: denoiser steps)")
            ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def compare_methods(args, argv) -> int:
    from dpjax.policy import load_policy, load_run_config

    log = common.Progress()
    steps = tuple(int(n) for n in args.steps.split(","))
    cache = common.CellCache(Path(args.work) / "cells.json")
    timings = common.CellCache(Path(args.work) / "latency.json")
    if args.remeasure_latency:
        timings.clear()
    rows, described = [], []
    for run in args.runs:
        run, _, own = run.partition("@")  # RUN@1,2,10: this run's step counts
        run_dir = Path(run)
        _, _, metadata = load_policy(run_dir)
        config = load_run_config(run_dir)
        method = method_of(config, metadata)
        variant = method_variant(config, metadata)
        described.append(describe_any_run(run_dir, method, variant))
        run_steps = tuple(int(n) for n in own.split(",")) if own else steps
        for curve, sampler, n in method_cells(method, run_steps, variant):
            cell = cache.get(
                f"{run_dir}|{sampler}|{n}|{args.eval_episodes}",
                lambda: evaluate_cell(run_dir, sampler, n, args.eval_episodes),  # noqa: B023
            )
            rows.append({"run": str(run_dir), "curve": curve, "sampler": sampler, "steps": n,
                         **cell})  # fmt: skip
            log(f"{cell['task']} {curve:>28} {n or '-':>4}: score {cell['score']:.3f}")
    # Timed after every rollout, so that a quiet machine can time them all (rerun with
    # --remeasure-latency when the rollouts ran beside other work).
    for row in rows:
        row.update(timings.get(
            f"{row['run']}|{row['sampler']}|{row['steps']}",
            lambda: latency_cell(row["run"], row["sampler"], row["steps"]),  # noqa: B023
        ))  # fmt: skip
        log(f"{row['task']} {row['curve']:>28} {row['steps'] or '-':>4}: "
            f"{row['chunk_latency_ms']:.2f} ms (batch 1), {row['batch_latency_ms']:.1f} ms "
            f"(batch {BATCH_LATENCY})")  # fmt: skip
    intro = (
        "Quality against latency per method, each trained run evaluated in closed loop "
        "(held-out seeds; PushT: Diffusion Policy's 50 episodes and mean max reward; cup: "
        "success) with every sampler and step count its training allows. Latency: median "
        "of one observation -> action-chunk call after compilation, at batch 1 (a robot's "
        f"control loop) and batch {BATCH_LATENCY} (a server's batch).\n\n"
        + "\n".join(f"- {d}" for d in described)
    )
    common.publish_study(
        args.name, quick=False, script=__file__, argv=argv,
        wall_seconds=log.elapsed, budget_cuts=[], intro=intro, body=methods_table(rows),
        data={"rows": rows}, plot=lambda path: methods_plot(rows, path),
        results_dir=args.results,
    )  # fmt: skip
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.runs:
        return compare_methods(args, argv)
    size = "quick" if args.quick else "full"
    s = SIZES[size]
    eval_episodes = args.eval_episodes or s["eval_episodes"]
    log = common.Progress()
    work = Path(args.work)
    cuts = []
    if args.run:
        runs = [Path(args.run)]
        cuts.append(f"evaluated the given run {args.run} (its own training budget)")
    else:
        runs = [train_policy(work, s["episodes"], s["train_steps"], args.seed, 100, log)]
        if s["long_schedule"]:
            runs.append(train_policy(work, s["episodes"], s["train_steps"], args.seed, 1000, log))
        else:
            cuts.append("no 1000-timestep policy (full size only), so no 1000-step row")
    if size == "quick":
        trained = "" if args.run else f"{s['train_steps']} training steps, "
        cuts.append(f"3 samplers of 5, {trained}1 training seed, "
                    f"{eval_episodes} evaluation episodes per cell")  # fmt: skip
    rows = []
    for run_dir in runs:
        T = 100 if "T1000" not in run_dir.name else 1000
        steps = s["steps"] + ((1000,) if T == 1000 else ())
        rows += evaluate_grid(run_dir, s["samplers"], steps, eval_episodes, log)
    intro = (
        "Closed loop on the multimodal cup task (receding horizon, held-out seeds), each "
        "sampler and step count chosen at evaluation of one trained diffusion policy per "
        "schedule. Latency: median (p95) of one batch-1 observation -> action-chunk call "
        "after compilation.\n\n" + "\n".join(f"- Policy: {describe_run(r)}" for r in runs)
    )
    footer = (
        "The seed's table, for comparison (the seed's numbers, not measured here):\n\n"
        f"{seed_table()}"
    )
    common.publish_study(
        "steps_vs_latency", quick=args.quick, script=__file__, argv=argv,
        wall_seconds=log.elapsed, budget_cuts=cuts, intro=intro, body=table(rows),
        footer=footer, data={"rows": rows}, plot=lambda path: plot(rows, path),
        results_dir=args.results,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
