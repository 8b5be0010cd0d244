"""recipes: which training recipe makes a policy work, measured closed loop, cell by cell.

Each variant is a list of `--set`-style overrides on a task's shipped recipe (the cup: the
`dpjax demo` config; PushT keypoints: experiments/pusht_keypoints.py). A cell (variant,
training seed) trains a run, then evaluates it in closed loop on the task's protocol (PushT:
Diffusion Policy's 50 episodes from seed 100000 and its `mean_max_reward`; the cup: 200
held-out episodes and the mode frequencies), with each sampler listed for the task.

The study is resumable: results accumulate in experiments/results/<task>.json and a rerun
skips the cells already there (`--redo` trains them again), so a long sweep can run over
several sittings. Every cell records its own machine, commit, date and wall times.

    python experiments/recipes.py --task cup --variants demo x0_ah12          # minutes each
    python experiments/recipes.py --task pusht --dataset data/pusht_kp --variants unet_eps
    python experiments/recipes.py --task pusht --list                          # the variants

Writes experiments/results/<task>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# variant name -> (what it tests, overrides on the task's base recipe)
VARIANTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "cup": {
        "demo": ("the previous demo recipe: MLP, x0, 8 of 16 actions executed", ()),
        "demo_12k": ("twice the training steps", ("num_steps=12000",)),
        "ah4": ("replan every 4 steps", ("policy.action_horizon=4",)),
        "ah12": ("execute 12 of 16 actions", ("policy.action_horizon=12",)),
        "ah15": ("execute 15 of 16 actions", ("policy.action_horizon=15",)),
        "p32_ah16": ("predict 32, execute 16", ("policy.pred_horizon=32", "policy.action_horizon=16")),
        "unet": ("UNet (64, 128, 256) denoiser", ("policy.denoiser=unet1d",)),
        "batch256": ("batch 256", ("batch_size=256",)),
    },
    "pusht": {
        "mlp_x0": (
            "the naive first attempt: MLP, x0, 64-d features per key",
            ("policy.denoiser=mlp", "policy.prediction_type=sample", "policy.low_dim_features=64",
             "num_steps=30000"),
        ),
        "mlp_x0_noise": (
            "mlp_x0 with observation noise 0.05",
            ("policy.denoiser=mlp", "policy.prediction_type=sample", "policy.low_dim_features=64",
             "num_steps=30000", "policy.obs_noise_std=0.05"),
        ),
        "unet_eps": ("the shipped recipe (see pusht_keypoints.py)", ()),
    },
}  # fmt: skip
EVAL_SAMPLERS = {"cup": (("ddim", 10), ("ddpm", 100)), "pusht": (("ddim", 10),)}
EVAL_EPISODES = {"cup": 200, "pusht": 50}
EVAL_SEED = 100_000


def base_config(task: str, dataset: Path, seed: int):
    import dataclasses

    if task == "cup":
        from dpjax.commands.demo import demo_config

        return demo_config(dataset, "diffusion", "mlp", 6000, seed)
    from dpjax.config import load_config_file

    config = load_config_file(str(Path(__file__).resolve().parent / "pusht_keypoints.py"))
    return dataclasses.replace(config, dataset=str(dataset), seed=seed)


def prepare_dataset(task: str, work: Path, dataset: str | None, log) -> Path:
    if dataset:
        return Path(dataset)
    path = work / task / "data"
    if task == "cup":
        from dpjax.commands.demo import collect_demos

        return collect_demos(path, 200, 0, progress=False)
    from dpjax.data import load_dataset
    from dpjax.errors import DataError

    try:
        load_dataset(path)
        return path
    except DataError:
        pass
    from dpjax.commands.collect import collect
    from dpjax.envs import make_task

    log("collecting 200 PushT keypoint demonstrations (~7 min)")
    collect(make_task("pusht", obs_type="keypoints"), path, episodes=200, seed=0,
            action_noise=0.0, overwrite=True, progress=True)  # fmt: skip
    return path


def evaluate_cell(task: str, run_dir: Path) -> dict[str, Any]:
    from dpjax.commands.eval import evaluate_run

    out = {}
    for sampler, steps in EVAL_SAMPLERS[task]:
        t0 = time.perf_counter()
        metrics, _, _ = evaluate_run(
            run_dir, episodes=EVAL_EPISODES[task], seed=EVAL_SEED, sampler=sampler, steps=steps
        )
        keep = ("success_rate", "mean_max_reward", "mode_frequencies", "collision_rate",
                "no_mode_fraction", "mean_squared_jerk", "chunk_latency_ms")  # fmt: skip
        row = {k: metrics[k] for k in keep if k in metrics}
        if "per_episode" in metrics:
            row["per_episode_max_reward"] = metrics["per_episode"].get("max_reward")
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        out[f"{sampler}_{steps}"] = row
    return out


def run_cell(task, variant, seed, dataset, work, log) -> dict[str, Any]:
    from dpjax.config import apply_overrides
    from dpjax.run import train

    _, overrides = VARIANTS[task][variant]
    config = apply_overrides(base_config(task, dataset, seed), overrides)
    run_dir = work / task / variant / f"seed{seed}"
    log(f"{task}/{variant} seed {seed}: training {config.num_steps} steps -> {run_dir}")
    t0 = time.perf_counter()
    summary = train(config, run_dir, overwrite=True)
    train_seconds = time.perf_counter() - t0
    log(f"{task}/{variant} seed {seed}: evaluating")
    return {
        "variant": variant,
        "seed": seed,
        "overrides": list(overrides),
        "run_dir": str(run_dir),
        "train_steps": config.num_steps,
        "train_seconds": round(train_seconds, 1),
        "final_loss": summary.get("loss"),
        "val_loss": summary.get("val_loss"),
        "eval": evaluate_cell(task, run_dir),
        **common.provenance(script=__file__, argv=sys.argv[1:], size="cell",
                            wall_seconds=time.perf_counter() - t0, budget_cuts=()),
    }  # fmt: skip


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def markdown(task: str, cells: list[dict]) -> str:
    samplers = [f"{s}_{k}" for s, k in EVAL_SAMPLERS[task]]
    score = "mean_max_reward" if task == "pusht" else "success_rate"
    head = "| variant | what | seeds | train min | " + " | ".join(
        f"{s} {'score' if task == 'pusht' else 'success'} | {s} success" if task == "pusht"
        else f"{s} success" for s in samplers
    ) + " |"  # fmt: skip
    cols = head.count("|") - 1
    lines = [head, "|" + "---|" * cols]
    by_variant: dict[str, list[dict]] = {}
    for cell in cells:
        by_variant.setdefault(cell["variant"], []).append(cell)
    for variant, group in by_variant.items():
        what = VARIANTS[task].get(variant, ("(no longer defined)", ()))[0]
        row = [variant, what, ",".join(str(c["seed"]) for c in group),
               spread([c["train_seconds"] / 60 for c in group], ".1f")]  # fmt: skip
        for s in samplers:
            if task == "pusht":
                row.append(spread([c["eval"][s][score] for c in group if s in c["eval"]], ".3f"))
            row.append(spread([c["eval"][s]["success_rate"] for c in group if s in c["eval"]],
                              ".0%"))  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    machines = sorted({c["machine"]["cpu"] for c in cells})
    notes = [
        "",
        f"Machines: {'; '.join(machines)}. Mean over training seeds, (min-max) where there "
        "are several. Score: Diffusion Policy's mean over episodes of clip(max coverage / "
        "0.95, 0, 1)."
        if task == "pusht"
        else "",
        "Each cell's command, commit, date, wall time, losses and per-sampler metrics are in "
        f"{task}.json.",
    ]
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--dataset", help="dataset directory (default: collected into --work)")
    parser.add_argument("--work", default="runs/recipes", help="datasets and runs go here")
    parser.add_argument("--results", default=str(common.RESULTS_DIR))
    parser.add_argument("--redo", action="store_true", help="retrain cells already recorded")
    parser.add_argument("--list", action="store_true", help="list the task's variants")
    args = parser.parse_args(argv)
    if args.list:
        for name, (what, overrides) in VARIANTS[args.task].items():
            print(f"{name:16s} {what}  [{' '.join(overrides)}]")
        return 0
    unknown = [v for v in args.variants if v not in VARIANTS[args.task]]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS[args.task])}")
    log = common.Progress()
    work = Path(args.work)
    results_path = Path(args.results) / f"{args.task}.json"
    cells = json.loads(results_path.read_text())["cells"] if results_path.exists() else []
    dataset = prepare_dataset(args.task, work, args.dataset, log) if args.variants else None
    for variant in args.variants:
        for seed in args.seeds:
            done = [c for c in cells if c["variant"] == variant and c["seed"] == seed]
            if done and not args.redo:
                log(f"{args.task}/{variant} seed {seed}: recorded, skipped (--redo to retrain)")
                continue
            cell = run_cell(args.task, variant, seed, dataset, work, log)
            cells = [c for c in cells if c not in done] + [cell]
            # Written after every cell, so an interrupted sweep keeps what it finished.
            common.write_results(
                args.task, f"# {args.task} recipes\n\n" + markdown(args.task, cells),
                {"cells": cells}, args.results,
            )  # fmt: skip
            log(f"{args.task}/{variant} seed {seed}: {json.dumps(cell['eval'])[:300]}")
    if cells:
        print(markdown(args.task, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
