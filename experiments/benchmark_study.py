"""benchmark_study: the seed's "Benchmark Study" table, measured. BC vs diffusion policy on the
multimodal cup task, PushT (state) and four Meta-World tasks, plus "grasp novel object".

    python experiments/benchmark_study.py --quick    # ~15 min on 2 busy CPU cores, 1 seed
    python experiments/benchmark_study.py            # full: 200 demos, 10k steps, 3 seeds, 50 eps

For each task: scripted-expert demonstrations (`dpjax.envs.collect.collect`, successful
episodes kept), a diffusion policy and the BC baseline trained on them with the demo's recipe
(`dpjax.configs.multimodal_diffusion.recipe`: seed MLP sizes, DDIM 10 steps; the task's action size),
then closed-loop evaluation on held-out seeds (from 100000) with `dpjax.evaluate` (the
multimodal task in one compiled program; simulators through `rollout_gym`, receding horizon).

Grasp seen / novel object: one pick-place dataset whose object positions avoid a fixed
quarter of Meta-World's sampling box (`position_split="train"`); the same policies are then
evaluated on new seeds with positions outside that quarter (seen) and inside it (novel).
Meta-World demos carry the expert's action noise (std 0.1) for diversity.

Writes experiments/results/benchmark_study.md, .json and .png (with matplotlib; the `plot`
extra). The seed's RL column is not trained here: its numbers are printed as the seed's.
Datasets and run directories go to --work-dir and are reused by a rerun of the same size.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/common.py
import common  # noqa: E402

NAME = "benchmark_study"
EVAL_SEED = 100_000  # as `dpjax eval`: far from the demonstration seeds 0, 1, ...
KINDS = ("bc", "diffusion")
# The seed's table (its "Benchmark Study", quoting Chi et al. 2023): BC, diffusion, RL in %.
SEED_TABLE = {
    "Grasp Seen Object": (50, 85, 88),
    "Grasp Novel Object": (30, 70, 75),
    "Push Block": (45, 80, 82),
    "Insert Peg": (35, 75, 80),
    "Open Drawer": (40, 78, 85),
}


@dataclasses.dataclass(frozen=True)
class Size:
    demos: int  # attempted expert episodes per dataset (multimodal, Meta-World)
    pusht_demos: int  # PushT's expert plans in a simulator copy: ~2 s an episode here
    train_steps: int
    eval_episodes: int  # per training seed and task
    seeds: tuple[int, ...]


SIZES = {
    # Diffusion needs the steps: pick-place at 50 demos went from 25% (1000 steps) to 85% (3000).
    "quick": Size(demos=50, pusht_demos=20, train_steps=3000, eval_episodes=20, seeds=(0,)),
    "full": Size(demos=200, pusht_demos=200, train_steps=10000, eval_episodes=50, seeds=(0, 1, 2)),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Collected once; a BC and a diffusion policy trained on it per training seed."""

    key: str
    task: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: policies of `dataset` evaluated on `task` with `options`."""

    label: str
    dataset: str
    options: tuple[tuple[str, Any], ...] = ()
    seed_row: str | None = None
    note: str = ""


_MW_NOISE = (("action_noise", 0.1),)
DATASETS = (
    Dataset("multimodal", "multimodal"),
    Dataset("pusht", "pusht", (("obs_type", "state"),)),
    Dataset("pick-place", "metaworld-pick-place-v3", (*_MW_NOISE, ("position_split", "train"))),
    Dataset("push", "metaworld-push-v3", _MW_NOISE),
    Dataset("peg-insert", "metaworld-peg-insert-side-v3", _MW_NOISE),
    Dataset("drawer-open", "metaworld-drawer-open-v3", _MW_NOISE),
)
ROWS = (
    Row("multimodal cup", "multimodal", note="the seed's cup example; no row in its table"),
    Row("PushT (state)", "pusht", (("obs_type", "state"),), note="no seed row (pushing)"),
    Row(
        "grasp seen object (pick-place)",
        "pick-place",
        (("position_split", "train"),),
        "Grasp Seen Object",
        "object positions from the training region",
    ),  # fmt: skip
    Row(
        "grasp novel object (pick-place)",
        "pick-place",
        (("position_split", "heldout"),),
        "Grasp Novel Object",
        "object positions in the held-out quarter",
    ),  # fmt: skip
    Row("push block (push)", "push", seed_row="Push Block"),
    Row("insert peg (peg-insert-side)", "peg-insert", seed_row="Insert Peg"),
    Row("open drawer (drawer-open)", "drawer-open", seed_row="Open Drawer"),
)


def make_task(name: str, options) -> Any:
    from dpjax.envs import make_task as make

    return make(name, **dict(options))


def collect_dataset(ds: Dataset, episodes: int, work_dir: Path, log) -> tuple[Path, dict]:
    """The dataset's demos, reused from an earlier run with the same collection settings."""
    from dpjax.data import load_dataset
    from dpjax.envs.collect import collect
    from dpjax.errors import DataError

    path = work_dir / "data" / ds.key
    try:
        info = (load_dataset(path).stats.info or {}).get("collection", {})
        if (info.get("task"), info.get("task_options"), info.get("episodes_attempted")) == (
            ds.task,
            dict(ds.options),
            episodes,
        ):
            log(f"{ds.key}: reusing {info['episodes_kept']} demos in {path}")
            return path, {**info, "reused": True}
    except DataError:
        pass
    log(f"{ds.key}: collecting {episodes} expert episodes ({ds.task}, {dict(ds.options)})")
    path, info = collect(
        make_task(ds.task, ds.options),
        path,
        episodes=episodes,
        seed=0,
        overwrite=True,
        task_options=dict(ds.options),
        progress=False,
    )
    log(
        f"{ds.key}: kept {info['episodes_kept']}/{episodes} "
        f"(expert success {info['expert_success_rate']:.0%}) in {info['wall_seconds']:.0f} s"
    )
    return path, {**info, "reused": False}


def train_config(dataset: Path, kind: str, action_dim: int, size: Size, seed: int, denoiser: str):
    """The demo's recipe, with this task's action size."""
    from dpjax.configs.multimodal_diffusion import recipe

    config = recipe(
        dataset=dataset, kind=kind, denoiser=denoiser, num_steps=size.train_steps, seed=seed
    )
    return dataclasses.replace(
        config, policy=dataclasses.replace(config.policy, action_dim=action_dim)
    )


def recipe(config) -> dict[str, Any]:
    """What the results table says about how the policies were built and trained."""
    pc = config.policy
    return {
        "denoiser": pc.denoiser.name,
        "hidden_dims": list(
            pc.bc_head.hidden_dims if pc.kind == "bc" else getattr(pc.denoiser, "hidden_dims", [])
        ),
        "prediction_type": pc.prediction_type,
        "sampler": pc.sampler,
        "num_inference_steps": pc.num_inference_steps,
        "horizons (obs, pred, action)": [pc.obs_horizon, pc.pred_horizon, pc.action_horizon],
        "batch_size": config.batch_size,
        "learning_rate": config.optim.learning_rate,
        "num_steps": config.num_steps,
    }


def evaluate_row(row: Row, task_name: str, policy, params, episodes: int) -> dict[str, Any]:
    from dpjax import evaluate

    if task_name == "multimodal":
        metrics, _ = evaluate.evaluate_multimodal(
            policy, params, num_episodes=episodes, seed=EVAL_SEED, latency=False
        )
    else:
        rollouts = evaluate.rollout_gym(
            make_task(task_name, row.options),
            policy,
            params,
            num_episodes=episodes,
            seed=EVAL_SEED,
            num_envs=min(10, episodes),
        )
        metrics = evaluate.summarize_gym(rollouts, policy.config.action_horizon)
    keep = (
        "episodes",
        "success_rate",
        "mean_squared_jerk",
        "chunk_jump",
        "within_chunk_step",
        "mean_episode_length",
        "collision_rate",
        "mode_frequencies",
        "max_coverage",
    )
    return {k: metrics[k] for k in keep if k in metrics}


def run_dataset(ds: Dataset, size: Size, args, log) -> dict[str, Any]:
    """Collect, then train and evaluate every kind x seed on each row of this dataset."""
    from dpjax.policy import load_policy
    from dpjax.training.loop import train

    episodes = size.pusht_demos if ds.task == "pusht" else size.demos
    t0 = time.perf_counter()
    path, collection = collect_dataset(ds, episodes, Path(args.work_dir), log)
    rows = [r for r in ROWS if r.dataset == ds.key]
    action_dim = make_task(ds.task, ds.options).action_dim
    result = {"collection": collection, "collect_seconds": time.perf_counter() - t0, "runs": []}
    for seed in size.seeds:
        for kind in KINDS:
            run_dir = Path(args.work_dir) / "runs" / ds.key / f"{kind}_seed{seed}"
            config = train_config(path, kind, action_dim, size, seed, args.denoiser)
            log(f"{ds.key}: training {kind}, seed {seed} ({size.train_steps} steps)")
            t0 = time.perf_counter()
            summary = train(config, run_dir, overwrite=True, progress=False)
            result["recipe"] = recipe(config)
            train_seconds = time.perf_counter() - t0
            loss, val_loss = summary.get("loss"), summary.get("val_loss")
            log(
                f"{ds.key}: {kind} trained in {train_seconds:.0f} s, loss {num(loss)}, val {num(val_loss)}"
            )
            policy, params, _ = load_policy(run_dir)
            for row in rows:
                log(f"{row.label}: evaluating {kind}, seed {seed} ({size.eval_episodes} episodes)")
                t0 = time.perf_counter()
                metrics = evaluate_row(row, ds.task, policy, params, size.eval_episodes)
                eval_seconds = time.perf_counter() - t0
                log(
                    f"{row.label}: {kind} seed {seed} success {metrics['success_rate']:.0%} "
                    f"in {eval_seconds:.0f} s"
                )
                result["runs"].append(
                    {
                        "row": row.label,
                        "kind": kind,
                        "seed": seed,
                        **metrics,
                        "train_loss": loss,
                        "val_loss": val_loss,
                        "train_seconds": train_seconds,
                        "eval_seconds": eval_seconds,
                    }
                )
    return result


def aggregate(runs: list[dict], label: str, kind: str) -> dict[str, Any] | None:
    from dpjax.evaluate import wilson_interval

    mine = [r for r in runs if r["row"] == label and r["kind"] == kind]
    if not mine:
        return None
    successes = sum(round(r["success_rate"] * r["episodes"]) for r in mine)
    episodes = sum(r["episodes"] for r in mine)
    rates = [r["success_rate"] for r in mine]
    mean = sum(rates) / len(rates)
    spread = (
        (sum((x - mean) ** 2 for x in rates) / (len(rates) - 1)) ** 0.5 if len(rates) > 1 else None
    )
    return {
        "success_rate": successes / episodes,
        "ci95": wilson_interval(successes, episodes),
        "episodes": episodes,
        "seeds": len(mine),
        "per_seed": rates,
        "seed_std": spread,
        "jerk": sum(r["mean_squared_jerk"] for r in mine) / len(mine),
    }


def budget_cuts(size_name: str, size: Size, datasets: list[Dataset]) -> list[str]:
    cuts = []
    if size.demos < 100 or size.pusht_demos < 100:
        cuts.append(
            f"{size.demos} attempted demos per task ({size.pusht_demos} for PushT), not 100-200"
        )
    if len(size.seeds) < 3:
        cuts.append(f"{len(size.seeds)} training seed(s), not 3")
    if size.eval_episodes < 50:
        cuts.append(f"{size.eval_episodes} evaluation episodes per seed, not 50+")
    if size_name == "quick":
        cuts.append(
            f"{size.train_steps} training steps per policy (full size: {SIZES['full'].train_steps})"
        )
    if len(datasets) < len(DATASETS):
        cuts.append("only the tasks " + ", ".join(d.key for d in datasets))
    return cuts


def num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def markdown(data: dict) -> str:
    size = data["size_config"]
    lines = [
        "# Benchmark study: BC vs diffusion policy, measured",
        "",
        'The seed\'s "Benchmark Study" table (BC / Diffusion / RL on grasp, novel-object grasp, '
        "push, peg insertion, drawer opening) re-run for real on the simulators dpjax ships. "
        "Columns marked *seed's* are the seed document's numbers, quoted, not measured here; "
        "its RL column is not trained here.",
        "",
        common.provenance_markdown(data["provenance"]),
        "Each policy: the demo's recipe (`dpjax.configs.multimodal_diffusion.recipe`: "
        + ", ".join(f"{k} {v}" for k, v in data["recipe"].items())
        + f"); {size['eval_episodes']} closed-loop episodes per training seed on seeds "
        f"{EVAL_SEED}.., training seeds {list(size['seeds'])}. Success: pooled over seeds, "
        "95% Wilson interval. Diffusion and BC share the encoder and MLP sizes.",
        "",
        "| task | demos kept (expert success) | BC | diffusion | seed's BC | seed's diffusion "
        "| seed's RL (not run) | note |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    for row in data["rows"]:
        cells = []
        for kind in KINDS:
            a = row[kind]
            cells.append(
                "-"
                if a is None
                else f"{pct(a['success_rate'])} ({pct(a['ci95'][0])}-{pct(a['ci95'][1])})"
            )
        seed = SEED_TABLE.get(row["seed_row"]) if row["seed_row"] else None
        seeds = [f"{v}%" for v in seed] if seed else ["-"] * 3
        c = row["collection"]
        demos = f"{c['episodes_kept']} ({c['expert_success_rate']:.0%})" if c else "-"
        note = "; ".join(
            filter(None, [row["note"], row["seed_row"] and f"seed: {row['seed_row']}"])
        )
        lines.append(
            f"| {row['label']} | {demos} | {cells[0]} | {cells[1]} | "
            + " | ".join(seeds)
            + f" | {note} |"
        )
    mapped = [r for r in data["rows"] if r["seed_row"] and r["bc"] and r["diffusion"]]
    if mapped:
        mean = lambda xs: sum(xs) / len(xs)
        ours = [mean([r[k]["success_rate"] for r in mapped]) for k in KINDS]
        seed = [mean([SEED_TABLE[r["seed_row"]][i] for r in mapped]) for i in range(2)]
        lines += [
            "",
            f"Mean over the {len(mapped)} rows with a seed row: BC {pct(ours[0])}, "
            f"diffusion {pct(ours[1])}; the seed's: BC {seed[0]:.0f}%, diffusion "
            f"{seed[1]:.0f}%.",
        ]
    lines += [
        "",
        "Per training seed (success; mean squared jerk of executed actions; "
        "final training loss; seconds to train / evaluate):",
        "",
        "| task | policy | seed | success | jerk | loss | train s | eval s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["runs"]:
        lines.append(
            f"| {r['row']} | {r['kind']} | {r['seed']} | {pct(r['success_rate'])} | "
            f"{r['mean_squared_jerk']:.3g} | {num(r['train_loss'])} | "
            f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    lines += [
        "",
        "Notes:",
        "- Grasp seen / novel object share one pick-place dataset and its policies: demos "
        "with object positions outside a fixed quarter of the sampling box "
        "(`position_split=train`, x > 0 and y > 0.65 held out); 'seen' evaluates on new "
        "seeds outside that quarter, 'novel' inside it (dpjax/envs/metaworld.py).",
        "- Meta-World demos: the scripted expert with action noise std 0.1; episodes up "
        "to 500 steps. PushT: the simulator-planning expert, episodes up to 300 steps. "
        "Only successful demos are kept; 'expert success' is that rate.",
        f"- Demonstrations reused from an earlier run: "
        f"{', '.join(data['reused']) if data['reused'] else 'none'} (their collection "
        "time is not in the wall time).",
    ]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> Path | None:
    if not common.have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = data["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    colors = {"bc": "tab:gray", "diffusion": "tab:blue"}
    seed_faces = {"bc": "white", "diffusion": "gold"}  # visible on either bar
    labelled = set()

    def once(label: str) -> str | None:  # one legend entry per kind of mark
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for j, kind in enumerate(KINDS):
        offset = (j - 0.5) * 0.38
        for i, row in enumerate(rows):
            a = row[kind]
            if a is None:
                continue
            lo, hi = a["ci95"]
            rate = a["success_rate"]
            ax.bar(x[i] + offset, 100 * rate, 0.36, color=colors[kind], label=once(kind),
                   yerr=[[100 * (rate - lo)], [100 * (hi - rate)]], capsize=3)  # fmt: skip
            seed = SEED_TABLE.get(row["seed_row"]) if row["seed_row"] else None
            if seed:
                ax.plot(x[i] + offset, seed[j], marker="D", color="black", mfc=seed_faces[kind],
                        ms=7, ls="none", label=once(f"seed's {kind}"))  # fmt: skip
                if j == 1:
                    ax.plot(x[i], seed[2], marker="*", color="tab:red", ms=10, ls="none",
                            label=once("seed's RL (not run)"))  # fmt: skip
    ax.set_xticks(x, [r["label"].replace(" (", "\n(") for r in rows], fontsize=8)
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    p = data["provenance"]
    ax.set_title(
        f"BC vs diffusion, {data['size_config']['eval_episodes']} episodes x "
        f"{len(data['size_config']['seeds'])} seed(s) ({p['size']} size); "
        "bars: 95% Wilson CI; diamonds/stars: the seed's numbers"
    )
    handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    order = (*KINDS, *(f"seed's {k}" for k in KINDS), "seed's RL (not run)")
    shown = [k for k in order if k in handles]
    ax.legend([handles[k] for k in shown], shown, fontsize=8, ncol=5, loc="upper center",
              bbox_to_anchor=(0.5, -0.16))  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores, 1 seed")
    parser.add_argument("--tasks", help=f"comma-separated subset of {[d.key for d in DATASETS]}")
    parser.add_argument("--denoiser", default="mlp", choices=("mlp", "unet1d", "transformer"))
    parser.add_argument(
        "--work-dir", help="datasets and runs (default /tmp/dpjax_benchmark_study/SIZE)"
    )
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    args.work_dir = args.work_dir or f"/tmp/dpjax_benchmark_study/{size_name}"
    wanted = args.tasks.split(",") if args.tasks else [d.key for d in DATASETS]
    unknown = sorted(set(wanted) - {d.key for d in DATASETS})
    if unknown:
        parser.error(f"unknown task(s) {unknown}; valid: {[d.key for d in DATASETS]}")
    datasets = [d for d in DATASETS if d.key in wanted]
    log = common.Progress()
    log(f"{NAME} ({size_name}): {len(datasets)} datasets, {size}")
    from dpjax.errors import MissingExtraError

    results, skipped = {}, []
    data: dict[str, Any] = {}
    for ds in datasets:
        try:
            results[ds.key] = run_dataset(ds, size, args, log)
        except MissingExtraError as e:
            log(f"{ds.key}: skipped ({e})")
            skipped.append(f"{ds.key} skipped: {e}")
        data = build(results, datasets, size_name, size, skipped, argv, args, log.elapsed)
        common.write_results(NAME, markdown(data), data, args.results_dir)  # partial results
    written = list(common.write_results(NAME, markdown(data), data, args.results_dir))
    png = plot(data, Path(args.results_dir) / f"{NAME}.png")
    written += [png] if png else []
    print("\n" + markdown(data))
    log("wrote " + ", ".join(map(str, written)))
    return 0


def build(results, datasets, size_name, size, skipped, argv, args, elapsed) -> dict[str, Any]:
    runs = [r for res in results.values() for r in res["runs"]]
    rows = []
    for row in ROWS:
        if row.dataset not in results:
            continue
        rows.append(
            {
                "label": row.label,
                "dataset": row.dataset,
                "seed_row": row.seed_row,
                "note": row.note,
                "options": dict(row.options),
                "collection": results[row.dataset]["collection"],
                **{k: aggregate(runs, row.label, k) for k in KINDS},
            }
        )
    cuts = budget_cuts(size_name, size, datasets) + skipped
    return {
        "provenance": common.provenance(
            script=__file__,
            argv=argv,
            size=size_name,
            wall_seconds=elapsed,
            budget_cuts=cuts,
            extra=("gym-pusht", "pymunk", "metaworld", "mujoco", "matplotlib"),
        ),
        "size_config": dataclasses.asdict(size),
        "denoiser": args.denoiser,
        "recipe": next((r["recipe"] for r in results.values() if "recipe" in r), {}),
        "eval_seed": EVAL_SEED,
        "seed_table": {
            k: dict(zip(("bc", "diffusion", "rl"), v, strict=True)) for k, v in SEED_TABLE.items()
        },
        "reused": [k for k, r in results.items() if r["collection"].get("reused")],
        "rows": rows,
        "runs": runs,
    }


if __name__ == "__main__":
    sys.exit(main())
