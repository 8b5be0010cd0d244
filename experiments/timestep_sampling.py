"""timestep_sampling: does sampling the middle timesteps (or min-SNR weighting) speed training?

The seed's "Problem 1: training is slow -> sample more important timesteps (middle of the
noise schedule)". Diffusion policies that differ only in their training objective: epsilon
prediction with uniform timesteps (Diffusion Policy's default), with logit-normal timesteps
(mass on the middle of the schedule), with min-SNR-5 weighting, and clean-chunk (x0)
prediction with uniform timesteps (the `dpjax demo` recipe). Each is trained on the
multimodal cup task with the demo's other settings, and at every checkpoint we measure
- the validation loss of the *standard* objective (uniform timesteps, unweighted; the same
  yardstick for the three epsilon runs, while the x0 run's is in x0 units, so compare it by
  success only; `dpjax train` logs it as val_loss), and
- closed-loop success on held-out seeds (DDPM, 100 steps: the sampler Diffusion Policy uses).

    python experiments/timestep_sampling.py --quick      # ~10 min on 2 CPU cores
    python experiments/timestep_sampling.py              # full size (3 training seeds)

Writes experiments/results/timestep_sampling{_quick}.md / .json / .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = {  # name: (prediction_type, timestep_sampling, loss_weighting)
    "eps, uniform": ("epsilon", "uniform", "none"),
    "eps, logit-normal": ("epsilon", "logit_normal", "none"),
    "eps, min-SNR-5": ("epsilon", "uniform", "min_snr"),
    "x0, uniform": ("sample", "uniform", "none"),
}
SIZES = {
    "quick": dict(episodes=200, train_steps=4000, checkpoints=4, eval_episodes=100, seeds=(0,)),
    "full": dict(episodes=200, train_steps=12000, checkpoints=6, eval_episodes=200,
                 seeds=(0, 1, 2)),
}  # fmt: skip
EVAL_SAMPLER = dict(sampler="ddpm", num_inference_steps=100)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small size (minutes on a CPU)")
    parser.add_argument("--work", default="runs/timestep_sampling", help="data and runs go here")
    parser.add_argument("--results", default=str(common.RESULTS_DIR))
    return parser.parse_args(argv)


def train_variant(work: Path, dataset: Path, name: str, seed: int, size: dict, log) -> Path:
    from dpjax.configs.multimodal_diffusion import recipe
    from dpjax.training.loop import train

    prediction_type, sampling, weighting = VARIANTS[name]
    config = recipe(dataset, "diffusion", "mlp", size["train_steps"], seed)
    every = size["train_steps"] // size["checkpoints"]
    config = dataclasses.replace(
        config,
        policy=dataclasses.replace(
            config.policy,
            prediction_type=prediction_type,
            timestep_sampling=sampling,
            loss_weighting=weighting,
        ),
        eval_every=every,
        checkpoint_every=every,
        max_to_keep=size["checkpoints"],
    )
    run_dir = work / f"{name.replace(', ', '_')}_seed{seed}"
    log(f"training {name} (seed {seed}, {size['train_steps']} steps)")
    train(config, run_dir, overwrite=True)
    return run_dir


def curve(run_dir: Path, eval_episodes: int) -> list[dict]:
    """[{step, val_loss, success_rate, success_ci95}] at every kept checkpoint."""
    from dpjax import evaluate
    from dpjax.checkpoint import Checkpointer
    from dpjax.policy import load_policy

    val = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            val[record["step"]] = record["val_loss"]
    with Checkpointer(run_dir) as ckpt:
        steps = ckpt.all_steps()
    points = []
    for step in steps:
        policy, params, _ = load_policy(run_dir, step=step)
        metrics, _ = evaluate.evaluate_multimodal(
            policy, params, num_episodes=eval_episodes, latency=False, **EVAL_SAMPLER
        )
        points.append({
            "step": step, "val_loss": val.get(step),
            "success_rate": metrics["success_rate"], "success_ci95": metrics["success_ci95"],
        })  # fmt: skip
    return points


def table(curves: dict[str, list[list[dict]]]) -> str:
    steps = [p["step"] for p in next(iter(curves.values()))[0]]
    head = " | ".join(f"step {s}" for s in steps)
    lines = [f"| objective | seed | {head} |", "|---|---:|" + "---|" * len(steps)]
    for name, runs in curves.items():
        for seed, points in enumerate(runs):
            cells = " | ".join(f"{p['val_loss']:.4f} / {p['success_rate']:.0%}" for p in points)
            lines.append(f"| {name} | {seed} | {cells} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[list[dict]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in curves.items():
        color = None
        for i, points in enumerate(runs):
            steps = [p["step"] for p in points]
            (line,) = left.plot(steps, [p["val_loss"] for p in points], "o-", color=color,
                                alpha=0.8, label=name if i == 0 else None)  # fmt: skip
            color = line.get_color()
            right.plot(steps, [100 * p["success_rate"] for p in points], "o-", color=color,
                       alpha=0.8, label=name if i == 0 else None)  # fmt: skip
    left.set_xlabel("training step")
    left.set_ylabel("validation loss (uniform t, unweighted)")
    left.set_yscale("log")
    left.legend()
    right.set_xlabel("training step")
    right.set_ylabel("closed-loop success (%), DDPM 100 steps")
    right.legend()
    fig.suptitle("Timestep sampling and loss weighting: multimodal cup task")
    return common.save_figure(fig, path)


def main(argv=None) -> int:
    from dpjax.envs.collect import collect_demos

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    log = common.Progress()
    work = Path(args.work)
    dataset = collect_demos(work / "data", size["episodes"], 0)
    curves = {}
    for name in VARIANTS:
        curves[name] = []
        for seed in size["seeds"]:
            run_dir = train_variant(work, dataset, name, seed, size, log)
            log(f"evaluating {name} (seed {seed}) at every checkpoint")
            curves[name].append(curve(run_dir, size["eval_episodes"]))
    cuts = []
    if size_name == "quick":
        cuts.append(f"1 training seed, {size['train_steps']} steps, "
                    f"{size['eval_episodes']} evaluation episodes per point")  # fmt: skip
    intro = (
        "Diffusion policies on the multimodal cup task that differ only in the training "
        "objective. Cells: validation loss of the standard objective (uniform timesteps, "
        "unweighted; one yardstick for the epsilon rows, while the x0 row's loss is in x0 units) / "
        "closed-loop success on held-out "
        f"seeds ({EVAL_SAMPLER['sampler']}, {EVAL_SAMPLER['num_inference_steps']} steps)."
    )
    common.publish_study(
        "timestep_sampling", quick=args.quick, script=__file__, argv=argv,
        wall_seconds=log.elapsed, budget_cuts=cuts, intro=intro, body=table(curves),
        data={"curves": curves}, plot=lambda path: plot(curves, path), results_dir=args.results,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
