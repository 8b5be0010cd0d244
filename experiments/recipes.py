"""recipes: which training recipe makes a policy work, measured closed loop, cell by cell.

Each variant is a list of `--set`-style overrides on a task's shipped recipe (the cup: the
`dpjax demo` config; PushT keypoints: dpjax/configs/pusht_keypoints.py). A cell (variant,
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


def _widths(dims: str) -> tuple[str, str]:
    """Overrides giving the MLP denoiser and the BC head the widths `dims` (one flat
    `policy.hidden_dims` set both before the denoiser had its own config)."""
    return f"policy.denoiser.hidden_dims={dims}", f"policy.bc_head.hidden_dims={dims}"


# The shipped demo recipe (dpjax demo's diffusion policy) as overrides on the cup's
# exploration base, and the 4000-step budget the BC sweep used.
_DEMO = ("policy.pred_horizon=24", "policy.action_horizon=23",
         *_widths("(1024,1024,512)"))  # fmt: skip
_BC = (*_DEMO, "num_steps=4000", "eval_every=1000", "checkpoint_every=1000")
# The PushT variants before the shipped recipe moved to 150k steps with rollouts: its earlier
# 30k-step size, DDPM 100 by default, pinned so that their recorded cells stay reproducible.
_PUSHT_30K = (
    "policy.denoiser=mlp",
    "num_steps=30000",
    "eval_every=2500",
    "checkpoint_every=2500",
    "max_to_keep=12",
    "rollout_every=0",
    "policy.sampler=ddpm",
    "policy.num_inference_steps=100",
)
# The MLP recipe shipped before the UNet (its 150k-step size), as overrides on today's.
_MLP_150K = (
    "policy.denoiser=mlp",
    "num_steps=150000",
    "eval_every=10000",
    "checkpoint_every=10000",
    "max_to_keep=16",
    "rollout_every=10000",
)
# variant name -> (what it tests, overrides on the task's base recipe)
VARIANTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "cup": {
        "demo_ah8": ("the previous demo recipe: MLP, x0, 8 of 16 actions executed",
                     ("policy.pred_horizon=16", "policy.action_horizon=8")),
        "ah4": ("replan every 4 steps", ("policy.pred_horizon=16", "policy.action_horizon=4")),
        "ah12": ("execute 12 of 16", ("policy.pred_horizon=16", "policy.action_horizon=12")),
        "ah15": ("execute 15 of 16", ("policy.pred_horizon=16", "policy.action_horizon=15")),
        "p32_ah16": ("predict 32, execute 16",
                     ("policy.pred_horizon=32", "policy.action_horizon=16")),
        "p24_ah23": ("predict 24, execute 23", ("policy.pred_horizon=24",
                     "policy.action_horizon=23")),
        "ah15_noise05": ("ah15 + observation noise 0.05", ("policy.pred_horizon=16",
                         "policy.action_horizon=15", "policy.obs_noise_std=0.05")),
        "p24_noise02": ("p24_ah23 + observation noise 0.02", ("policy.pred_horizon=24",
                        "policy.action_horizon=23", "policy.obs_noise_std=0.02")),
        "p24_noise05": ("p24_ah23 + observation noise 0.05", ("policy.pred_horizon=24",
                        "policy.action_horizon=23", "policy.obs_noise_std=0.05")),
        "p24_wide": ("p24_ah23 with a 1024-1024-512 MLP: the dpjax demo recipe", _DEMO),
        "p24_wide_4k": ("p24_wide, 4000 steps", _BC),
        "v_pred": ("demo_ah8 with v-prediction", ("policy.pred_horizon=16",
                   "policy.action_horizon=8", "policy.prediction_type=v_prediction")),
        # BC with the demo's horizons; its settings chosen on validation loss.
        "bc_lr1e-3": ("BC, demo settings: lr 1e-3, 1024-1024-512", (*_BC, "policy.kind=bc")),
        "bc_narrow": ("BC, lr 1e-3, 512-512-256", (*_BC, "policy.kind=bc",
                      *_widths("(512,512,256)"))),
        "bc_lr3e-4": ("BC, lr 3e-4, 1024-1024-512", (*_BC, "policy.kind=bc",
                      "optim.learning_rate=3e-4")),
        "bc_lr1e-4": ("BC, lr 1e-4, 1024-1024-512", (*_BC, "policy.kind=bc",
                      "optim.learning_rate=1e-4")),
        "bf16_matmul": ("p24_wide (the demo recipe) with bfloat16 matmul operands",
                        (*_DEMO, "policy.precision=bfloat16-matmul")),
    },
    "pusht": {
        "mlp_x0": ("the naive first attempt: MLP, x0, 8 of 16 executed, no augmentation",
                   (*_PUSHT_30K, "policy.pred_horizon=16", "policy.action_horizon=8",
                    "policy.obs_noise_std=0.0")),
        "noise05": ("mlp_x0 + observation noise 0.05", (*_PUSHT_30K, "policy.pred_horizon=16",
                    "policy.action_horizon=8", "policy.obs_noise_std=0.05")),
        "ah15_noise05": ("noise05, executing 15 of 16", (*_PUSHT_30K, "policy.pred_horizon=16",
                         "policy.action_horizon=15", "policy.obs_noise_std=0.05")),
        "p24_noise05": ("noise05, predicting 24, executing 23", (*_PUSHT_30K, "policy.pred_horizon=24",
                        "policy.action_horizon=23", "policy.obs_noise_std=0.05")),
        "noise10": ("mlp_x0 + observation noise 0.1", (*_PUSHT_30K, "policy.pred_horizon=16",
                    "policy.action_horizon=8", "policy.obs_noise_std=0.1")),
        "wide_noise05": ("noise05 with a 1024-1024-512 MLP", (*_PUSHT_30K, "policy.pred_horizon=16",
                         "policy.action_horizon=8", "policy.obs_noise_std=0.05",
                         *_widths("(1024,1024,512)"))),
        "unet32_noise05": ("noise05 with a UNet (32, 64, 128), 10k steps", (
            *_PUSHT_30K, "policy.pred_horizon=16", "policy.action_horizon=8", "policy.obs_noise_std=0.05",
            "policy.denoiser=unet1d", "policy.denoiser.down_dims=(32,64,128)", "num_steps=10000")),
        "unet32_bf16": ("unet32_noise05 with bfloat16 matmul operands", (
            *_PUSHT_30K, "policy.pred_horizon=16", "policy.action_horizon=8", "policy.obs_noise_std=0.05",
            "policy.denoiser=unet1d", "policy.denoiser.down_dims=(32,64,128)", "num_steps=10000",
            "policy.precision=bfloat16-matmul")),
        "obs4_noise05": ("noise05 observing 4 steps instead of 2", (*_PUSHT_30K,
                         "policy.pred_horizon=16", "policy.action_horizon=8",
                         "policy.obs_noise_std=0.05", "policy.obs_horizon=4")),
        "dart10_noise05": ("noise05 on DART demonstrations (execution noise 10 px)",
                           (*_PUSHT_30K, "policy.pred_horizon=16", "policy.action_horizon=8",
                            "policy.obs_noise_std=0.05")),
        "ah4_60k": ("mlp_150k executing 4 (in-training rollouts too), 60k steps, rollouts every 5k",
                    (*_MLP_150K, "policy.action_horizon=4", "num_steps=60000",
                     "rollout_every=5000", "checkpoint_every=5000", "eval_every=5000",
                     "max_to_keep=12")),
        "mlp_150k": ("the MLP recipe shipped before the UNet: 150k steps, rollouts every 10k",
                     _MLP_150K),
        "shipped": ("the shipped recipe (dpjax/configs/pusht_keypoints.py)", ()),
    },
    "pusht_image": {
        "shipped": ("the shipped recipe (dpjax/configs/pusht_image.py)", ()),
    },
}  # fmt: skip
# Variants trained on other demonstrations than the task's default 200: variant -> (name,
# `collect` options). DART: Gaussian noise on the executed action, the expert's own action
# recorded, so the demonstrations show recoveries; at 10 px 211 attempts keep 191 (90.5%).
DEMONSTRATIONS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "cup": {},
    "pusht": {"dart10_noise05": ("dart10", {"episodes": 211, "execution_noise": 10.0})},
    "pusht_image": {},
}
# Each evaluation of a diffusion cell: (sampler, steps, actions executed per chunk or None for
# the policy's own, checkpoint). "best-rollout": the kept checkpoint with the best in-training
# rollout score (runs with rollout_every; those rollouts use seeds 200000..., not the test's).
EVALUATIONS = {
    "cup": (("ddim", 10, None, "last"), ("ddpm", 100, None, "last")),
    "pusht": (("ddim", 10, None, "last"), ("ddpm", 100, None, "last"), ("ddim", 10, 4, "last"),
              ("ddpm", 100, 4, "last"), ("ddim", 10, None, "best-rollout"),
              ("ddim", 10, 4, "best-rollout"), ("ddpm", 100, 4, "best-rollout")),
    "pusht_image": (("ddim", 10, None, "last"), ("ddpm", 100, None, "last"),
                    ("ddim", 10, None, "best-rollout")),
}  # fmt: skip
EVAL_EPISODES = {"cup": 200, "pusht": 50, "pusht_image": 50}
# The PushT observation each PushT task of this script trains on (`collect`'s obs_type).
PUSHT_OBS_TYPES = {"pusht": "keypoints", "pusht_image": "pixels"}
EVAL_SEED = 100_000


def base_config(task: str, dataset: Path, seed: int):
    import dataclasses

    if task == "cup":
        from dpjax.config import apply_overrides
        from dpjax.configs.multimodal_diffusion import recipe

        # The exploration's base, pinned so that recorded cells stay reproducible when the
        # demo's recipe moves: the cup recipe at 6000 steps with the seed's 512-512-256 MLP.
        return apply_overrides(
            recipe(dataset, "diffusion", "mlp", 6000, seed),
            ["num_steps=6000", *_widths("(512,512,256)")],
        )
    from dpjax.config import load_config_file

    config = load_config_file("pusht_keypoints" if task == "pusht" else task)
    return dataclasses.replace(config, dataset=str(dataset), seed=seed)


def prepare_dataset(task: str, work: Path, dataset: str | None, log, variant: str = "") -> Path:
    """The variant's demonstrations: `dataset` (or <work>/<task>/data, collected unless the
    same collection is there) for the task's default 200, <work>/<task>/data_<name> for a
    `DEMONSTRATIONS` variant."""
    from dpjax.envs.collect import collect_demos

    if task == "cup":
        return Path(dataset) if dataset else collect_demos(work / task / "data", 200, 0,
                                                           progress=False)  # fmt: skip
    name, options = DEMONSTRATIONS[task].get(variant, ("", {}))
    if dataset and not name:
        return Path(dataset)
    path = work / task / (f"data_{name}" if name else "data")
    episodes = options.get("episodes", 200)
    obs_type = PUSHT_OBS_TYPES[task]
    log(f"PushT {obs_type} demonstrations ({episodes} attempts, ~4-7 min to collect) -> {path}")
    return collect_demos(path, episodes, 0, task="pusht", obs_type=obs_type,
                         execution_noise=options.get("execution_noise", 0.0))  # fmt: skip


def evaluations(task: str, kind: str) -> list[tuple[str, dict]]:
    """(label, evaluate_run options) of a cell: each sampler of the task for diffusion; BC
    executed in chunks as trained and one action per prediction."""
    if kind == "bc":
        return [("chunked", {}), ("single step", {"action_horizon": 1})]
    out = []
    for sampler, steps, action_horizon, checkpoint in EVALUATIONS[task]:
        label, options = f"{sampler} {steps}", {"sampler": sampler, "steps": steps}
        if action_horizon is not None:
            label += f" ah{action_horizon}"
            options["action_horizon"] = action_horizon
        if checkpoint != "last":
            label += f" {checkpoint}"
            options["checkpoint"] = checkpoint
        out.append((label, options))
    return out


def evaluate_cell(task: str, run_dir: Path, kind: str, skip=()) -> dict[str, Any]:
    """{label: metrics} of a trained cell, for each evaluation not in `skip`."""
    from dpjax.evaluate import best_rollout_step, evaluate_run

    out = {}
    for label, options in evaluations(task, kind):
        if label in skip or label.replace(" ", "_") in skip:
            continue
        t0 = time.perf_counter()
        options = dict(options)
        if options.pop("checkpoint", "last") == "best-rollout":
            if not learning_curve(run_dir):
                continue  # trained without in-training rollouts: nothing to choose by
            options["step"] = best_rollout_step(run_dir)
        metrics, _, _ = evaluate_run(
            run_dir, episodes=EVAL_EPISODES[task], seed=EVAL_SEED, progress=False, **options
        )
        keep = ("score", "success_rate", "success_ci95", "mean_max_reward", "mode_frequencies",
                "expert_mode_frequencies", "mode_frequency_error", "collision_rate",
                "no_mode_fraction", "mean_squared_jerk", "chunk_latency_ms", "checkpoint")  # fmt: skip
        row = {k: metrics[k] for k in keep if k in metrics}
        if "per_episode" in metrics:
            row["per_episode_max_reward"] = metrics["per_episode"].get("max_reward")
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        out[label] = row
    return out


CELL_MARKER = "recipe_cell"  # written into a run dir this script trains, before training


def resumable(run_dir: Path, config) -> int | None:
    """The last checkpoint's step if `run_dir` holds an interrupted (or finished) run of exactly
    `config` (the cell then continues it rather than training again from scratch), else None."""
    from dpjax.checkpoint import Checkpointer
    from dpjax.config import to_dict
    from dpjax.errors import DpjaxError
    from dpjax.policy import load_run_config

    try:
        same = to_dict(load_run_config(run_dir)) == to_dict(config)
    except (DpjaxError, OSError):
        return None
    if not same:
        return None
    checkpointer = Checkpointer(run_dir, max_to_keep=config.max_to_keep)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def last_logged(run_dir: Path, name: str) -> float | None:
    from dpjax.training.logs import read_metrics

    values = [r[name] for r in read_metrics(run_dir) if name in r]
    return values[-1] if values else None


def logged_train_seconds(run_dir: Path) -> float:
    """Seconds spent in training steps, over every sitting, from the run's metrics log: each
    record's steps since the previous one at its logged speed (compilation, validation and
    rollouts not counted, nor the time between sittings)."""
    from dpjax.training.logs import read_metrics

    seconds, previous = 0.0, 0
    for record in read_metrics(run_dir):
        seconds += (record["step"] - previous) / max(record["steps_per_sec"], 1e-9)
        previous = record["step"]
    return seconds


CURVE_KEYS = ("step", "rollout_score", "rollout_success", "val_loss")


def learning_curve(run_dir: Path) -> list[dict[str, float]]:
    """The run's in-training closed-loop rollouts (`rollout_every`), with the validation loss
    logged at the same steps: [{step, rollout_score, rollout_success, val_loss}]."""
    from dpjax.training.logs import read_metrics

    return [{k: r[k] for k in CURVE_KEYS if k in r}
            for r in read_metrics(run_dir) if "rollout_score" in r]  # fmt: skip


def plot_curves(task: str, cells: list[dict], path: Path) -> Path | None:
    """Rollout score and validation loss against training step, a line per cell with a curve."""
    with_curve = [c for c in cells if c.get("curve")]
    if not with_curve or not common.have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for cell in with_curve:
        steps = [p["step"] for p in cell["curve"]]
        label = f"{cell['variant']} seed {cell['seed']}"
        top.plot(steps, [p["rollout_score"] for p in cell["curve"]], marker="o", label=label)
        if all("val_loss" in p for p in cell["curve"]):
            bottom.plot(steps, [p["val_loss"] for p in cell["curve"]], marker="o", label=label)
    top.set_ylabel("rollout score\n(50 episodes, seeds 200000...)")
    top.set_title(f"{task}: in-training closed-loop score and validation loss")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.set_ylabel("validation loss (EMA)")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3)
    return common.save_figure(fig, path)


def save(task: str, cells: list[dict], results_dir) -> None:
    """Writes <task>.md / .json and, where cells have learning curves, <task>_curves.png.
    Cells recorded before curves were kept get theirs from their run directory if it is here."""
    for cell in cells:
        if "curve" not in cell and cell.get("run_dir") and Path(cell["run_dir"]).is_dir():
            cell["curve"] = learning_curve(Path(cell["run_dir"]))
    page = f"# {task} recipes\n\n" + markdown(task, cells)
    figure = Path(results_dir) / f"{task}_curves.png"
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    if plot_curves(task, cells, figure):
        page += f"\n![learning curves]({figure.name})\n"
    common.write_results(task, page, {"cells": cells}, results_dir)


def run_cell(task, variant, seed, dataset, work, log) -> dict[str, Any]:
    from dpjax.config import apply_overrides
    from dpjax.training.loop import train

    _, overrides = VARIANTS[task][variant]
    config = apply_overrides(base_config(task, dataset, seed), overrides)
    run_dir = work / task / variant / f"seed{seed}"
    start = resumable(run_dir, config)
    resume = start is not None
    log(f"{task}/{variant} seed {seed}: training {config.num_steps} steps -> {run_dir}"
        + (f" (resuming at step {start})" if resume else ""))  # fmt: skip
    t0 = time.perf_counter()
    note = None
    if resume:
        note = (f"resumed at step {start}" if (run_dir / CELL_MARKER).exists() else
                "trained by `dpjax train` with this config, then evaluated here")  # fmt: skip
        note += "; train minutes: time in training steps, from its metrics log"
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CELL_MARKER).write_text(f"{variant} seed {seed}\n")
    train(config, run_dir, resume=resume, overwrite=not resume)
    # Wall time when trained here in one go; across sittings, the log's time in steps.
    train_seconds = logged_train_seconds(run_dir) if resume else time.perf_counter() - t0
    log(f"{task}/{variant} seed {seed}: evaluating")
    return {
        **({"note": note} if note else {}),
        "variant": variant,
        "seed": seed,
        "overrides": list(overrides),
        "run_dir": str(run_dir),
        "demonstrations": demonstrations_record(dataset),
        "train_steps": config.num_steps,
        "train_seconds": round(train_seconds, 1),
        # From the metrics log: a resumed finished run trains no step and returns none.
        "final_loss": last_logged(run_dir, "loss"),
        "val_loss": last_logged(run_dir, "val_loss"),
        "kind": config.policy.kind,
        "curve": learning_curve(run_dir),
        "eval": evaluate_cell(task, run_dir, config.policy.kind),
        **common.provenance(script=__file__, argv=sys.argv[1:], size="cell",
                            wall_seconds=time.perf_counter() - t0, budget_cuts=()),
    }  # fmt: skip


def demonstrations_record(dataset: Path) -> dict[str, Any]:
    """How the cell's dataset was collected (episodes kept, noise), from its statistics."""
    from dpjax.data import load_dataset

    collection = load_dataset(dataset).stats.info.get("collection", {})
    keep = ("episodes_attempted", "episodes_kept", "action_noise", "execution_noise", "seed")
    return {"path": str(dataset), **{k: collection[k] for k in keep if k in collection}}


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def markdown(task: str, cells: list[dict]) -> str:
    """One row per (variant, evaluation): mean over training seeds, (min-max) with several."""
    pusht = task in PUSHT_OBS_TYPES
    head = ["variant", "what", "evaluated", "seeds", "train min", "val loss"]
    head += ["score", "success"] if pusht else ["success", "north / east / south", "max mode error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_variant: dict[str, list[dict]] = {}
    for cell in cells:
        by_variant.setdefault(cell["variant"], []).append(cell)
    for variant, group in by_variant.items():
        what = VARIANTS[task].get(variant, ("(no longer defined)", ()))[0]
        for label in group[0]["eval"]:
            evals = [c["eval"][label] for c in group if label in c["eval"]]
            row = [variant, what, label.replace("_", " "), ",".join(str(c["seed"]) for c in group),
                   spread([c["train_seconds"] / 60 for c in group], ".1f"),
                   spread([c["val_loss"] for c in group if c.get("val_loss") is not None],
                          ".4f")]  # fmt: skip
            if pusht:
                row += [spread([e["mean_max_reward"] for e in evals], ".3f"),
                        spread([e["success_rate"] for e in evals], ".0%")]  # fmt: skip
            else:
                modes = [statistics.fmean(e["mode_frequencies"][m] for e in evals)
                         for m in ("north", "east", "south")]  # fmt: skip
                row += [spread([e["success_rate"] for e in evals], ".0%"),
                        " / ".join(f"{m:.2f}" for m in modes),
                        spread([e["mode_frequency_error"] for e in evals], ".2f")]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    machines = sorted({c["machine"]["cpu"] for c in cells})
    expert = next((e["expert_mode_frequencies"] for c in cells for e in c["eval"].values()
                   if "expert_mode_frequencies" in e), None)  # fmt: skip
    notes = [""]
    if pusht:
        notes.append(
            f"Score: Diffusion Policy's mean over {EVAL_EPISODES[task]} episodes (seeds "
            f"{EVAL_SEED}...) of clip(max coverage / 0.95, 0, 1); success: coverage > 0.95."
        )
    else:
        notes.append(
            f"Success on {EVAL_EPISODES[task]} held-out episodes (seeds {EVAL_SEED}...). "
            + (
                "Expert's mode frequencies, measured on the 200 demonstrations: "
                + " / ".join(f"{expert[m]:.3f}" for m in ("north", "east", "south"))
                if expert
                else ""
            )
            + "; max mode error: the largest |policy - expert| of the three."
        )
    notes += [
        f"Re-run a cell: `python experiments/recipes.py --task {task} --variants NAME --seeds S "
        "--redo"
        + (f" --dataset DIR` (200 {PUSHT_OBS_TYPES[task]} demonstrations)" if pusht else "`")
        + "; the overrides of each variant: `--list`.",
        f"Machines: {'; '.join(machines)}. Train minutes are wall time on a shared 2-core "
        "machine (other cells often ran beside), so compare them loosely.",
        f"Each cell's command, commit, date, losses and metrics are in {task}.json.",
    ]
    # Cells recorded before "checkpoint" was kept were evaluated on the default: the last.
    checkpoints = {(e.get("checkpoint") or "last").split(" (")[0]
                   for c in cells for e in c["eval"].values()}  # fmt: skip
    if checkpoints == {"last"}:
        notes.append("Every number is the last checkpoint's, with EMA parameters.")
    notes += [f"{c['variant']} seed {c['seed']}: {c['note']}." for c in cells if c.get("note")]
    chosen = [f"{c['variant']} seed {c['seed']}: {e['checkpoint']}" for c in cells
              for label, e in c["eval"].items() if label.endswith("best-rollout")
              and label.startswith("ddim 10 ah4")]  # fmt: skip
    if chosen:
        notes.append("best-rollout: the kept checkpoint with the best in-training rollout score "
                     "(50 episodes from seed 200000, DDIM 10, the policy's own chunk length); "
                     + "; ".join(chosen) + ".")  # fmt: skip
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
    parser.add_argument(
        "--import-cells",
        metavar="JSON",
        help="add the cells recorded in another results file of this task (a sweep split over "
        "processes or machines); cells already here are kept",
    )
    parser.add_argument(
        "--add-evals",
        action="store_true",
        help="evaluate recorded cells of --variants with the evaluations they lack (e.g. a "
        "sampler added to EVALUATIONS), without retraining",
    )
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
    if args.import_cells:
        known = {(c["variant"], c["seed"]) for c in cells}
        new = [c for c in json.loads(Path(args.import_cells).read_text())["cells"]
               if (c["variant"], c["seed"]) not in known]  # fmt: skip
        cells += new
        save(args.task, cells, args.results)
        log(f"imported {len(new)} cells from {args.import_cells}")
    for variant in args.variants:
        dataset = None
        for seed in args.seeds:
            done = [c for c in cells if c["variant"] == variant and c["seed"] == seed]
            if done and args.add_evals:
                cell = done[0]
                new = evaluate_cell(args.task, Path(cell["run_dir"]), cell.get("kind", "diffusion"),
                                    skip=set(cell["eval"]))  # fmt: skip
                cell["eval"].update(new)
                log(f"{args.task}/{variant} seed {seed}: added {sorted(new) or 'nothing'}")
                save(args.task, cells, args.results)
                continue
            if done and not args.redo:
                log(f"{args.task}/{variant} seed {seed}: recorded, skipped (--redo to retrain)")
                continue
            dataset = dataset or prepare_dataset(args.task, work, args.dataset, log, variant)
            cell = run_cell(args.task, variant, seed, dataset, work, log)
            cells = [c for c in cells if c not in done] + [cell]
            # Written after every cell, so an interrupted sweep keeps what it finished.
            save(args.task, cells, args.results)
            log(f"{args.task}/{variant} seed {seed}: {json.dumps(cell['eval'])[:300]}")
    if cells:  # also redraws the page and figure from the recorded cells (no --variants)
        save(args.task, cells, args.results)
        print(markdown(args.task, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
