"""benchmark_study: the seed's "Benchmark Study" table where its claim applies. BC vs diffusion
on demonstrations that disagree (several strategies, demonstrators of mixed quality) and on
single-strategy ones, on the cup, PushT keypoints and eight Meta-World tasks covering DP3's
difficulty groups, at 200 and at 10 (DP3's protocol) demonstrations; two Meta-World tasks
from images as well.

    python experiments/benchmark_study.py --quick                # ~20 min on 2 cores, 1 seed
    python experiments/benchmark_study.py --budget-minutes 150   # full size, resumable
    python experiments/benchmark_study.py --report               # the page from finished cells
    python experiments/benchmark_study.py --shard 0/2 & python experiments/benchmark_study.py --shard 1/2
                                                                 # two processes side by side

The full size does not fit one sitting on 2 CPU cores (about 30 hours of training and
evaluation): it is resumable. Every finished cell (task x demonstrations x variant x policy x
training seed) is stored at once in experiments/results/benchmark_study_cells.json (committed),
a rerun skips finished cells, and `--budget-minutes` stops starting new ones after that long,
so the study runs over several sittings; the page says how many cells are done. Cells run
training seed by seed (seed 0 of every cell first), so a partial table covers every row.

Per cell: scripted-expert demonstrations (`dpjax collect`'s `collect`, successful episodes
kept; the 10-demonstration datasets are the first 10 kept episodes of the 200), a BC policy or
a diffusion policy trained with the recipes of the PushT/cup work (`RECIPES`), then closed-loop
evaluation on held-out seeds (from 100000) with `dpjax.evaluate.evaluate_on_task`, which also
reports the modes a policy shows where the task has them.

Variants of the demonstrations (`VARIANTS`, `dpjax.envs.demonstrators`):
  single      one strategy: the cup's north approach only; PushT's free planner; Meta-World's
              scripted policy (with action noise 0.1, as before)
  multimodal  strategies drawn per episode: the cup's three approaches (0.45/0.40/0.15);
              PushT's first contact on the bar or the stem (0.5/0.5); Meta-World's direct,
              left or right approach (1/3 each)
  mixed       demonstrators of mixed quality, proficient / slow / hesitant / noisy 0.4/0.2/0.2/0.2
              (robomimic's mixed-human data has three operator grades in equal parts)

Writes experiments/results/benchmark_study.md, .json and .png (with matplotlib; the `plot`
extra). The seed's numbers and DP3's published Diffusion Policy numbers are printed beside
ours, labelled as theirs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
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
# DP3 (Ze et al. 2024), Table: Diffusion Policy from images on Meta-World, 10 demonstrations,
# mean success (%) per difficulty group (Seo et al.'s grouping).
DP3_DIFFUSION_POLICY = {"easy": 83.6, "medium": 31.1, "hard": 9.0, "very hard": 26.6}
MIX = (0.4, 0.2, 0.2, 0.2)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One line of the table: a dataset's policies evaluated with `options` added."""

    label: str
    seed_row: str | None = None
    options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class StudyTask:
    key: str
    task: str  # the registered task name
    family: str  # a key of RECIPES and VARIANTS
    group: str | None = None  # DP3's difficulty group (Meta-World)
    options: tuple[tuple[str, Any], ...] = ()
    evaluations: tuple[Evaluation, ...] = ()
    image: bool = False

    def evals(self) -> tuple[Evaluation, ...]:
        return self.evaluations or (Evaluation(self.key),)


_MW_NOISE = (("action_noise", 0.1),)
_MW_IMAGE = (*_MW_NOISE, ("image_size", 96), ("max_episode_steps", 200))
GROUP_TASKS = {
    "easy": ("drawer-open-v3", "button-press-v3"),
    "medium": ("hammer-v3", "peg-insert-side-v3"),
    "hard": ("assembly-v3", "pick-place-v3"),
    "very hard": ("stick-pull-v3", "shelf-place-v3"),
}
_SEED_ROWS = {"drawer-open-v3": "Open Drawer", "peg-insert-side-v3": "Insert Peg"}


def _metaworld(env: str, group: str) -> StudyTask:
    key = env.removesuffix("-v3")
    if env == "pick-place-v3":  # the seed's seen / novel object rows share its policies
        return StudyTask(key, f"metaworld-{env}", "metaworld", group,
                         (*_MW_NOISE, ("position_split", "train")),
                         (Evaluation("pick-place (seen object)", "Grasp Seen Object"),
                          Evaluation("pick-place (novel object)", "Grasp Novel Object",
                                     (("position_split", "heldout"),))))  # fmt: skip
    return StudyTask(key, f"metaworld-{env}", "metaworld", group, _MW_NOISE,
                     (Evaluation(key, _SEED_ROWS.get(env)),))  # fmt: skip


TASKS = (
    StudyTask("cup", "multimodal", "cup", evaluations=(Evaluation("cup"),)),
    *(_metaworld(env, group) for group, envs in GROUP_TASKS.items() for env in envs),
    # Last among the state rows: its UNet recipe trains ~45 min a policy here.
    StudyTask(
        "pusht",
        "pusht",
        "pusht",
        options=(("obs_type", "keypoints"),),
        evaluations=(Evaluation("PushT keypoints", "Push Block"),),
    ),
    *(
        StudyTask(
            f"{env.removesuffix('-v3')}-image",
            f"metaworld-{env}",
            "metaworld-image",
            group,
            _MW_IMAGE,
            (Evaluation(f"{env.removesuffix('-v3')} (image)", _SEED_ROWS.get(env)),),
            image=True,
        )
        for group, env in (("easy", "drawer-open-v3"), ("medium", "peg-insert-side-v3"))
    ),
)
VARIANTS = {
    "cup": {"single": {"mode_probs": [1.0, 0.0, 0.0]}, "multimodal": {},
            "mixed": {"quality_mix": list(MIX)}},
    "pusht": {"single": {}, "multimodal": {"strategies": {"bar": 0.5, "stem": 0.5}},
              "mixed": {"quality_mix": list(MIX)}},
    "metaworld": {"single": {}, "multimodal": {"strategies": ["direct", "left", "right"]},
                  "mixed": {"quality_mix": list(MIX)}},
    "metaworld-image": {"single": {}},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Size:
    demos: tuple[int, ...]  # demonstrations per dataset: kept episodes (the first N)
    image_demos: tuple[int, ...]
    train_steps: dict[str, int] | None  # per family; None: the recipe's own
    eval_episodes: int  # per training seed and evaluation
    image_eval_episodes: int
    seeds: tuple[int, ...]
    tasks: tuple[str, ...] | None = None  # None: all


SIZES = {
    "full": Size(demos=(200, 10), image_demos=(10,), train_steps=None, eval_episodes=50,
                 image_eval_episodes=20, seeds=(0, 1, 2)),
    "quick": Size(demos=(50, 10), image_demos=(), train_steps={"cup": 3000, "metaworld": 3000},
                  eval_episodes=20, image_eval_episodes=0, seeds=(0,),
                  tasks=("cup", "drawer-open", "peg-insert-side")),
    # The test suite's: seconds a cell.
    "tiny": Size(demos=(16, 8), image_demos=(), train_steps={"cup": 150}, eval_episodes=8,
                 image_eval_episodes=0, seeds=(0,), tasks=("cup",)),
}  # fmt: skip


def recipe(task: StudyTask, dataset: Path, kind: str, seed: int, size: Size):
    """The PushT/cup work's recipe for this task's family (`RECIPES` says which)."""
    from dpjax.configs import multimodal_diffusion, pusht_keypoints

    steps = (size.train_steps or {}).get(task.family)
    if task.family == "pusht":
        config = pusht_keypoints.CONFIG
        config = dataclasses.replace(
            config, policy=dataclasses.replace(config.policy, kind=kind), rollout_every=0
        )
    else:
        # The cup's recipe; BC trains 4000 steps there (dpjax.configs.multimodal_bc).
        default = {"cup": 6000 if kind == "diffusion" else 4000}.get(task.family, 10_000)
        config = multimodal_diffusion.recipe(dataset, kind=kind, num_steps=steps or default)
        if task.family.startswith("metaworld"):
            # Diffusion Policy's horizons: Meta-World's 80 Hz control needs feedback within
            # a chunk that the cup's 23-step chunks would not give.
            policy = dataclasses.replace(
                config.policy, action_dim=4, pred_horizon=16, action_horizon=8
            )
            if task.image:
                # The PushT image recipe's encoder and crops; the robot's own state beside.
                policy = dataclasses.replace(
                    policy, low_dim_keys=("agent_pos",), image_keys=("image",),
                    image_encoder="small_cnn_pool2", crop_hw=(84, 84),
                )  # fmt: skip
            config = dataclasses.replace(config, policy=policy)
            if task.image:
                config = dataclasses.replace(config, batch_size=64, num_steps=steps or 4000)
    if steps is not None:
        config = dataclasses.replace(config, num_steps=steps, eval_every=max(steps // 4, 1),
                                     checkpoint_every=max(steps // 4, 1))  # fmt: skip
    return dataclasses.replace(config, dataset=str(dataset), seed=seed)


RECIPES = {
    "cup": "dpjax.configs.multimodal_diffusion.recipe (MLP 512-512-256, x0, DDIM 10, horizons "
    "2/24/23, batch 128; diffusion 6000 steps, BC 4000)",
    "pusht": "dpjax.configs.pusht_keypoints (UNet 32-64-128, x0, DDIM 10, horizons 2/16/8, "
    "batch 256, 10000 steps; BC: its regression head on the same encoder)",
    "metaworld": "the cup's recipe with Diffusion Policy's horizons 2/16/8, 10000 steps",
    "metaworld-image": "the Meta-World recipe from a 96x96 image (84x84 crops, the PushT image "
    "recipe's small CNN) and the hand's state, batch 64, 4000 steps (~0.3 s a step here)",
}


def make_task(name: str, options: dict):
    from dpjax.envs import make_task as make

    return make(name, **options)


def collect_dataset(task: StudyTask, variant: str, demos: int, size: Size, work: Path, log):
    """The demonstrations of (task, variant): the first `demos` kept episodes of the largest
    size's collection, collected once (reused when the recorded settings match)."""
    from dpjax.data import load_dataset, write_dataset
    from dpjax.envs.collect import collect
    from dpjax.errors import DataError

    options = {**dict(task.options), **VARIANTS[task.family][variant]}
    largest = max(size.image_demos if task.image else size.demos)
    source = work / "data" / f"{task.key}_{variant}"
    # Attempts: a few more than needed where the expert fails now and then.
    attempts = largest if largest >= 50 else largest + max(4, largest // 2)
    try:
        info = (load_dataset(source).stats.info or {}).get("collection", {})
        reuse = (info.get("task"), info.get("task_options"), info.get("episodes_attempted")) == (
            task.task, options, attempts)  # fmt: skip
    except DataError:
        reuse, info = False, {}
    if not reuse:
        log(f"{task.key}/{variant}: collecting {attempts} expert episodes")
        _, info = collect(make_task(task.task, options), source, episodes=attempts, seed=0,
                          overwrite=True, task_options=options, progress=False)  # fmt: skip
    collection = {k: info.get(k) for k in ("episodes_attempted", "episodes_kept",
                                           "expert_success_rate", "wall_seconds")}  # fmt: skip
    if demos >= info["episodes_kept"]:
        return source, {**collection, "demos": info["episodes_kept"]}
    subset = work / "data" / f"{task.key}_{variant}_{demos}"
    try:
        ok = len(load_dataset(subset)) == demos
    except DataError:
        ok = False
    if not ok:
        dataset = load_dataset(source)
        episodes = (dataset[i] for i in range(demos))
        write_dataset(episodes, subset, name=f"{task.task}", overwrite=True,
                      info={"collection": {**info, "subset_of": str(source), "first": demos}},
                      description=f"the first {demos} demonstrations of {source}")  # fmt: skip
    return subset, {**collection, "demos": demos}


KEEP = ("episodes", "success_rate", "success_ci95", "mean_max_reward", "mean_squared_jerk",
        "chunk_jump", "mean_episode_length", "collision_rate", "mode_frequencies",
        "expert_mode_frequencies", "mode_frequency_error", "no_mode_fraction")  # fmt: skip


def run_cell(task, variant, demos, kind, seed, size, args, log) -> dict[str, Any]:
    """Trains one policy and evaluates it on each of the task's evaluations."""
    from dpjax.data import load_dataset
    from dpjax.evaluate import demonstration_mode_frequencies, evaluate_on_task
    from dpjax.policy import load_policy
    from dpjax.training.loop import train

    work = Path(args.work_dir)
    dataset, collection = collect_dataset(task, variant, demos, size, work, log)
    config = recipe(task, dataset, kind, seed, size)
    run_dir = work / "runs" / task.key / variant / str(demos) / f"{kind}_seed{seed}"
    t0 = time.perf_counter()
    summary = train(config, run_dir, overwrite=True, progress=False)
    train_seconds = time.perf_counter() - t0
    policy, params, _ = load_policy(run_dir)
    options = {**dict(task.options), **VARIANTS[task.family][variant]}
    probe = make_task(task.task, options)
    expert = (
        demonstration_mode_frequencies(load_dataset(dataset), probe.modes) if probe.modes else None
    )
    episodes = size.image_eval_episodes if task.image else size.eval_episodes
    evaluations = {}
    t0 = time.perf_counter()
    for ev in task.evals():
        metrics, _ = evaluate_on_task(
            policy, params, task.task, {**options, **dict(ev.options)}, num_episodes=episodes,
            seed=EVAL_SEED, latency=False, expert_mode_frequencies=expert,
        )  # fmt: skip
        evaluations[ev.label] = {k: metrics[k] for k in KEEP if k in metrics}
    eval_seconds = time.perf_counter() - t0
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints: ~40 cells a sitting
    machine = common.machine()
    return {
        "task": task.key, "variant": variant, "demos": demos, "kind": kind, "seed": seed,
        "collection": collection,
        "train_steps": config.num_steps, "train_loss": summary.get("loss"),
        "val_loss": summary.get("val_loss"), "train_seconds": train_seconds,
        "eval_seconds": eval_seconds, "evaluations": evaluations,
        "machine": f"{machine['cpu']}, {machine['cores']} cores",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": common.git_commit(),
    }  # fmt: skip


def cell_plan(size: Size, tasks) -> list[tuple]:
    """(task, variant, demos, kind, seed) in the order they run: seed by seed, the state
    rows at both sizes before the image rows."""
    plan = []
    for seed in size.seeds:
        for image in (False, True):
            for task in (t for t in tasks if t.image == image):
                for demos in size.image_demos if image else size.demos:
                    for variant in VARIANTS[task.family]:
                        plan += [(task, variant, demos, kind, seed) for kind in KINDS]
    return plan


def cell_key(size_name: str, task, variant, demos, kind, seed) -> str:
    return f"{size_name}|{task.key}|{variant}|{demos}|{kind}|{seed}"


# --- the page ---------------------------------------------------------------------------


def pooled(cells: list[dict], label: str) -> dict[str, Any] | None:
    """Success pooled over training seeds (Wilson interval), with per-seed rates and modes."""
    from dpjax.evaluate import wilson_interval

    evals = [c["evaluations"][label] for c in cells if label in c["evaluations"]]
    if not evals:
        return None
    successes = sum(round(e["success_rate"] * e["episodes"]) for e in evals)
    episodes = sum(e["episodes"] for e in evals)
    out = {
        "success_rate": successes / episodes,
        "ci95": wilson_interval(successes, episodes),
        "episodes": episodes,
        "seeds": [c["seed"] for c in cells if label in c["evaluations"]],
        "per_seed": [e["success_rate"] for e in evals],
    }
    if "mean_max_reward" in evals[0]:
        out["mean_max_reward"] = sum(e["mean_max_reward"] for e in evals) / len(evals)
    if "mode_frequencies" in evals[0]:
        names = list(evals[0]["mode_frequencies"])
        out["mode_frequencies"] = {m: sum(e["mode_frequencies"][m] for e in evals) / len(evals)
                                   for m in names}  # fmt: skip
        out["expert_mode_frequencies"] = evals[0].get("expert_mode_frequencies")
    return out


def table_rows(cells: dict[str, dict], size_name: str, size: Size, tasks) -> list[dict]:
    rows = []
    for task in tasks:
        for ev in task.evals():
            for variant in VARIANTS[task.family]:
                row = {"label": ev.label, "task": task.key, "variant": variant, "group": task.group,
                       "seed_row": ev.seed_row, "image": task.image, "cells": {}}  # fmt: skip
                for demos in size.image_demos if task.image else size.demos:
                    for kind in KINDS:
                        done = [cells[k] for seed in size.seeds
                                if (k := cell_key(size_name, task, variant, demos, kind, seed)) in cells]  # fmt: skip
                        row["cells"][f"{demos}|{kind}"] = pooled(done, ev.label)
                        if done:
                            row.setdefault("collection", {})[demos] = done[0]["collection"]
                rows.append(row)
    return rows


def pct(a) -> str:
    return "-" if a is None else f"{100 * a:.0f}%"


def success_cell(a: dict | None, total_seeds: int) -> str:
    if a is None:
        return "-"
    lo, hi = a["ci95"]
    seeds = "" if len(a["seeds"]) == total_seeds else f" [{len(a['seeds'])} seed]"
    return f"{pct(a['success_rate'])} ({pct(lo)}-{pct(hi)}){seeds}"


def modes_cell(a: dict | None) -> str:
    if a is None or "mode_frequencies" not in a:
        return ""
    return "/".join(f"{v:.2f}" for v in a["mode_frequencies"].values())


def gap(row: dict, demos: int) -> tuple[float, bool] | None:
    """(diffusion - BC success, whether their intervals are disjoint) at `demos`."""
    bc, diffusion = row["cells"].get(f"{demos}|bc"), row["cells"].get(f"{demos}|diffusion")
    if bc is None or diffusion is None:
        return None
    disjoint = diffusion["ci95"][0] > bc["ci95"][1] or bc["ci95"][0] > diffusion["ci95"][1]
    return diffusion["success_rate"] - bc["success_rate"], disjoint


def _verdict(confirmed: int, refuted: int, pending: int) -> str:
    if confirmed + refuted == 0:
        return "pending"
    if refuted == 0:
        verdict = "confirmed"
    elif confirmed == 0:
        verdict = "refuted"
    else:
        verdict = f"mixed ({confirmed} confirmed, {refuted} not)"
    return verdict + (f" so far, {pending} rows pending" if pending else "")


def verdicts(rows: list[dict], size: Size) -> list[str]:
    """The seed's claims, one by one and at each demonstration count: confirmed / refuted /
    not testable here, with the evidence (only from finished cells; "so far" while some are
    missing). Diffusion beats BC where its interval lies above BC's."""
    lines = []
    mapped = [r for r in rows if r["seed_row"] and not r["image"]]
    for demos in size.demos:
        for variant in ("single", "multimodal", "mixed"):
            evidence, confirmed, refuted, pending = [], 0, 0, 0
            for r in (r for r in mapped if r["variant"] == variant):
                g = gap(r, demos)
                if g is None:
                    pending += 1
                    continue
                seed_bc, seed_dp, _ = SEED_TABLE[r["seed_row"]]
                d, disjoint = g
                confirmed += d > 0 and disjoint
                refuted += not (d > 0 and disjoint)
                evidence.append(
                    f"{r['label']}: BC {pct(r['cells'][f'{demos}|bc']['success_rate'])} vs "
                    f"diffusion {pct(r['cells'][f'{demos}|diffusion']['success_rate'])} (the "
                    f"seed's {seed_bc}% vs {seed_dp}%){'' if disjoint else ', intervals overlap'}"
                )
            if not evidence and not pending:
                continue  # no row of this run's tasks has a seed row
            lines.append(
                f"- **Diffusion beats BC by the seed's margin ({variant} demonstrations, {demos} "
                f"each): {_verdict(confirmed, refuted, pending)}.** " + "; ".join(evidence)
                + ("." if evidence else "")
            )  # fmt: skip
    for demos in size.demos:
        for variant, cause in (("multimodal", "demonstrations are multimodal"),
                               ("mixed", "human motion varies")):  # fmt: skip
            growth, pending = [], 0
            for r in (r for r in rows if r["variant"] == variant and not r["image"]):
                single = next((s for s in rows if s["label"] == r["label"]
                               and s["variant"] == "single"), None)  # fmt: skip
                g, g0 = gap(r, demos), single and gap(single, demos)
                if g is not None and g0:
                    growth.append((r["label"], g0[0], g[0]))
                else:
                    pending += 1
            grew = sum(b - a > 0.1 for _, a, b in growth)
            verdict = _verdict(grew, len(growth) - grew, pending) if growth else "pending"
            evidence = (" Gap (diffusion - BC) single -> " + variant + ": " + "; ".join(
                f"{label} {100 * a:+.0f} -> {100 * b:+.0f} points" for label, a, b in growth
            ) + ".") if growth else ""  # fmt: skip
            lines.append(f"- **The gap grows because {cause} ({demos} demonstrations; by more "
                         f"than 10 points counts): {verdict}.**{evidence}")  # fmt: skip
    lines.append(
        "- **RL reaches 75-88% (the seed's RL column): not testable here** (no RL training "
        "in dpjax; the numbers are printed as the seed's)."
    )
    return lines


def group_means(rows: list[dict], demos: int, image: bool) -> dict[str, dict[str, float | None]]:
    """Mean diffusion / BC success per DP3 group over its tasks (single variant)."""
    out = {}
    for group in GROUP_TASKS:
        mine = [r for r in rows if r["group"] == group and r["variant"] == "single"
                and r["image"] == image and "novel" not in r["label"]]  # fmt: skip
        out[group] = {}
        for kind in KINDS:
            cells = [r["cells"].get(f"{demos}|{kind}") for r in mine]
            done = [c["success_rate"] for c in cells if c]
            out[group][kind] = sum(done) / len(done) if done and len(done) == len(cells) else None
    return out


def markdown(data: dict) -> str:
    size, rows = data["size_config"], data["rows"]
    total_seeds = len(size["seeds"])
    demos = list(size["demos"])
    lines = [
        "# Benchmark study: BC vs diffusion where the seed's claim applies",
        "",
        'The seed\'s "Benchmark Study" table says BC reaches 30-50% and diffusion 70-85% on '
        "grasping, pushing, peg insertion and drawer opening, because demonstrations are "
        "multimodal and human motion varies. Here both are trained on demonstrations that "
        "disagree (`multimodal`: strategies drawn per episode; `mixed`: demonstrators of mixed "
        "quality) and on single-strategy ones (`single`), at 200 and at 10 demonstrations "
        "(DP3's protocol). Columns marked *seed's* or *DP3's* are their numbers, quoted, not "
        "measured here.",
        "",
        common.provenance_markdown(data["provenance"]),
        f"**Progress: {data['cells_done']} of {data['cells_total']} cells finished**"
        + ("" if data["cells_done"] == data["cells_total"] else " (partial: a rerun of the "
           "command continues; `[k seed]` marks a cell with fewer than "
           f"{total_seeds} training seeds so far)") + ". "
        f"Compute so far: {data['compute_hours']:.1f} h of training and evaluation "
        f"on {', '.join(data['machines'])}.",
        "",
        "Input: the state (cup: agent, cup and velocity; PushT: the T's keypoints and the agent; "
        "Meta-World: its 39-D goal-observable state, object poses included) except the "
        "`(image)` rows (a 96x96 camera image and the hand's position and gripper). Recipes: "
        + "; ".join(f"{k}: {v}" for k, v in RECIPES.items()) + ". "
        f"Evaluation: {size['eval_episodes']} episodes per training seed "
        f"({size['image_eval_episodes']} for image rows), seeds {EVAL_SEED}.., success pooled "
        "over training seeds with its 95% Wilson interval; PushT: success = coverage > 95%. "
        "Modes (where the demonstrations have several): the fraction of episodes showing each "
        "strategy (cup: north/east/south; PushT: bar/stem first contact; Meta-World: direct/"
        "left/right approach), at the larger demonstration count, beside the demonstrations'.",
        "",
    ]  # fmt: skip
    header = "| row | demos | " + " | ".join(
        f"BC {n} | diffusion {n}" for n in demos) + " | modes, BC / diffusion | seed's BC / diffusion |"  # fmt: skip
    lines += [header, "|" + "---|" * (4 + 2 * len(demos))]
    for r in rows:
        cells = []
        for n in demos:
            for kind in KINDS:
                cells.append(success_cell(r["cells"].get(f"{n}|{kind}"), total_seeds)
                             if f"{n}|{kind}" in r["cells"] else "n/a")  # fmt: skip
        seed = SEED_TABLE.get(r["seed_row"]) if r["seed_row"] else None
        collection = r.get("collection") or {}
        kept = ", ".join(f"{c['demos']}" for c in collection.values()) or "-"
        best = max(demos) if f"{max(demos)}|diffusion" in r["cells"] else min(demos)
        bc, a = r["cells"].get(f"{best}|bc"), r["cells"].get(f"{best}|diffusion")
        expert = (a or bc or {}).get("expert_mode_frequencies")
        modes = f"{modes_cell(bc)} / {modes_cell(a)}" if expert else ""
        if expert:
            modes += f" (expert {'/'.join(f'{v:.2f}' for v in expert.values())})"
        lines.append(
            f"| {r['label']} ({r['variant']}) | {kept} | "
            + " | ".join(cells)
            + f" | {modes} | "
            + (f"{seed[0]}% / {seed[1]}%" if seed else "-")
            + " |"
        )
    lines += ["", "## DP3's difficulty groups (single-strategy demonstrations)", "",
              "| group | tasks | BC, state | diffusion, state | diffusion, image | "
              "DP3's Diffusion Policy (image, 10 demos) |", "|---|---|---|---|---|---|"]  # fmt: skip
    small = min(demos)
    state, image = data["groups"]["state"], data["groups"]["image"]
    for group, envs in GROUP_TASKS.items():
        lines.append(
            f"| {group} | {', '.join(e.removesuffix('-v3') for e in envs)} | "
            f"{pct(state[group].get('bc'))} | {pct(state[group].get('diffusion'))} | "
            f"{pct(image[group].get('diffusion'))} | {DP3_DIFFUSION_POLICY[group]}% |"
        )
    lines += [
        "",
        f"Group means at {small} demonstrations (a group's mean shows once all its tasks have "
        "a cell); image rows exist for drawer-open (easy) and peg-insert-side (medium) only.",
        "",
        "## Verdicts, claim by claim",
        "",
        *data["verdicts"],
        "",
        "Per cell (training seed): `benchmark_study.json` keeps every cell with its losses, "
        "times, machine, date and commit; `benchmark_study_cells.json` is the resumable store.",
    ]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> Path:
    """Success per task and variant: BC and diffusion at each demonstration count (bars with
    95% intervals), the seed's numbers as diamonds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = ("single", "multimodal", "mixed")
    sizes = sorted(data["size_config"]["demos"], reverse=True)
    rows = [r for r in data["rows"] if not r["image"]]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, axes = plt.subplots(len(variants), 1, figsize=(13, 8.5), sharex=True)
    colors = {("bc", 0): "dimgray", ("diffusion", 0): "tab:blue",
              ("bc", 1): "silver", ("diffusion", 1): "lightskyblue"}  # fmt: skip
    bars = [(kind, n, k) for k, n in enumerate(sizes) for kind in KINDS]
    width = 0.8 / len(bars)
    x = np.arange(len(labels))
    handles = {}
    for ax, variant in zip(axes, variants, strict=True):
        for b, (kind, n, k) in enumerate(bars):
            offset = (b - (len(bars) - 1) / 2) * width
            for i, label in enumerate(labels):
                r = next((r for r in rows if r["label"] == label and r["variant"] == variant), None)
                a = r and r["cells"].get(f"{n}|{kind}")
                if not a:
                    continue
                lo, hi = a["ci95"]
                rate = a["success_rate"]
                handles[f"{kind}, {n} demos"] = ax.bar(
                    x[i] + offset, 100 * rate, width * 0.95, color=colors[(kind, min(k, 1))],
                    yerr=[[100 * (rate - lo)], [100 * (hi - rate)]], capsize=1.5,
                )  # fmt: skip
                seed = SEED_TABLE.get(r["seed_row"]) if r["seed_row"] and k == 0 else None
                if seed:
                    handles[f"seed's {kind}"] = ax.plot(
                        x[i] + offset, seed[KINDS.index(kind)], "D", color="black", ms=5,
                        mfc="gold" if kind == "diffusion" else "white",
                    )[0]  # fmt: skip
        ax.set_ylabel(f"{variant}\nsuccess (%)")
        ax.set_ylim(0, 105)
    axes[-1].set_xticks(x, [label.replace(" (", "\n(") for label in labels], fontsize=7)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=6, fontsize=8,
               bbox_to_anchor=(0.5, 0.955))  # fmt: skip
    fig.suptitle(
        f"BC vs diffusion ({data['cells_done']}/{data['cells_total']} cells finished); bars: "
        "95% Wilson intervals; diamonds: the seed's numbers", fontsize=10,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room for the legend above the panels
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build(cells, size_name, size, tasks, argv, elapsed) -> dict[str, Any]:
    plan = cell_plan(size, tasks)
    mine = {k: v for k, v in cells.items() if k.startswith(f"{size_name}|")}
    done = [cell_key(size_name, *p) for p in plan if cell_key(size_name, *p) in mine]
    rows = table_rows(mine, size_name, size, tasks)
    cuts = [] if size_name == "full" else [f"{size_name} size: {size}"]
    if size_name == "full":
        cuts.append(f"image rows: {size.image_demos[0]} demonstrations (DP3's protocol), "
                    f"{size.image_eval_episodes} evaluation episodes, 200-step episodes: "
                    "MuJoCo renders ~12 frames/s in software here")  # fmt: skip
    finished = [mine[k] for k in done]
    return {
        "provenance": common.provenance(
            script=__file__,
            argv=argv,
            size=size_name,
            wall_seconds=elapsed,
            budget_cuts=cuts,
            extra=("gym-pusht", "pymunk", "metaworld", "mujoco", "matplotlib"),
        ),  # fmt: skip
        "size_config": dataclasses.asdict(size),
        "recipes": RECIPES,
        "variants": VARIANTS,
        "eval_seed": EVAL_SEED,
        "seed_table": {
            k: dict(zip(("bc", "diffusion", "rl"), v, strict=True)) for k, v in SEED_TABLE.items()
        },  # fmt: skip
        "dp3_diffusion_policy": DP3_DIFFUSION_POLICY,
        "cells_done": len(done),
        "cells_total": len(plan),
        "compute_hours": sum(c["train_seconds"] + c["eval_seconds"] for c in finished) / 3600,
        "machines": sorted({c["machine"] for c in finished}) or ["-"],
        "rows": rows,
        "groups": {
            "state": group_means(rows, min(size.demos), False),
            "image": group_means(rows, min(size.image_demos or size.demos), True),
        },  # fmt: skip
        "verdicts": verdicts(rows, size),
        "cells": finished,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~20 min on 2 cores, 1 seed")
    parser.add_argument("--size", choices=sorted(SIZES), help="a size by name (default full)")
    parser.add_argument("--tasks", help=f"comma-separated subset of {[t.key for t in TASKS]}")
    parser.add_argument("--budget-minutes", type=float,
                        help="start no new cell after this many minutes (the rest: a rerun)")  # fmt: skip
    parser.add_argument("--variants", help=f"comma-separated subset of {sorted(VARIANTS['cup'])}")
    parser.add_argument("--shard", help="I/N: run the cells of every N-th dataset from the I-th "
                        "(0-based), for N processes side by side sharing the cells file")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="only rebuild the page")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run directories")
    parser.add_argument(
        "--work-dir", help="datasets and runs (default /tmp/dpjax_benchmark_study/SIZE)"
    )
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    size_name = args.size or ("quick" if args.quick else "full")
    size = SIZES[size_name]
    args.work_dir = args.work_dir or f"/tmp/dpjax_benchmark_study/{size_name}"
    valid = [t.key for t in TASKS]
    wanted = args.tasks.split(",") if args.tasks else list(size.tasks or valid)
    unknown = sorted(set(wanted) - set(valid))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; valid: {valid}")
    tasks = [t for t in TASKS if t.key in wanted]
    suffix = "" if size_name == "full" else f"_{size_name}"
    results = Path(args.results_dir)
    cache = common.CellCache(results / f"{NAME}{suffix}_cells.json")
    log = common.Progress()
    plan = cell_plan(size, tasks)
    variants = args.variants.split(",") if args.variants else None
    todo = [p for p in plan if cell_key(size_name, *p) not in cache.cells
            and (variants is None or p[1] in variants)]  # fmt: skip
    if args.shard:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
            assert 0 <= index < count
        except (ValueError, AssertionError):
            parser.error(f"--shard wants I/N with 0 <= I < N, got {args.shard!r}")
        # By dataset (task, variant), over the whole plan (not what is left): a shard's cells
        # stay its own, and no two shards collect the same demonstrations.
        datasets = list(dict.fromkeys((p[0].key, p[1]) for p in plan))
        mine = set(datasets[index::count])
        todo = [p for p in todo if (p[0].key, p[1]) in mine]
    done = sum(cell_key(size_name, *p) in cache.cells for p in plan)
    log(f"{NAME} ({size_name}): {done} of {len(plan)} cells done, {len(todo)} to run now")
    from dpjax.errors import MissingExtraError

    # The page covers the whole study whatever this process runs (--tasks, --shard, ...), and
    # names the command that continues it.
    page_tasks = [t for t in TASKS if t.key in (size.tasks or valid)]
    page_argv = [] if size_name == "full" else ["--size", size_name]

    def page() -> dict[str, Any]:
        return build(cache.cells, size_name, size, page_tasks, page_argv, log.elapsed)

    def publish() -> list[Path]:
        data = page()
        written = list(common.write_results(NAME + suffix, markdown(data), data, results))
        if common.have_matplotlib() and data["cells_done"]:
            written.append(plot(data, results / f"{NAME}{suffix}.png"))
        return written

    skipped = set()
    for cell in [] if args.report else todo:
        task, variant, demos, kind, seed = cell
        if task.key in skipped:
            continue
        if args.budget_minutes is not None and log.elapsed > 60 * args.budget_minutes:
            log(f"budget of {args.budget_minutes} min reached: stopping; rerun to continue")
            break
        log(f"{task.key} {variant} {demos} demos: {kind}, seed {seed}")
        cache.refresh()  # what other shards finished, for the page
        try:
            record = cache.get(cell_key(size_name, *cell),
                               lambda cell=cell: run_cell(*cell, size, args, log))  # fmt: skip
        except MissingExtraError as e:
            log(f"{task.key}: skipped ({e})")
            skipped.add(task.key)
            continue
        summary = ", ".join(f"{label} {pct(m['success_rate'])}"
                            for label, m in record["evaluations"].items())  # fmt: skip
        log(
            f"  -> {summary} (train {record['train_seconds']:.0f} s, eval {record['eval_seconds']:.0f} s)"
        )
        publish()
    written = publish()
    print("\n" + markdown(page()))
    log("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
