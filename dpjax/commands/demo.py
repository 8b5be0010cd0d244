"""`dpjax demo`: collect -> train diffusion and BC -> evaluate both, on the seed's cup example.

1. Collects scripted-expert demonstrations on the pure-JAX multimodal task: a gripper must
   reach a cup from the north (45%), east (40%) or south (15%); a wall blocks the west, so
   the average of the three approaches collides.
2. Trains a diffusion policy and the behavioral-cloning baseline (same encoder and MLP sizes).
3. Evaluates both in closed loop (receding horizon) on held-out seeds, the diffusion policy at
   several denoising-step counts, and prints a side-by-side table.
Writes OUT/summary.json, OUT/rollouts.png, the dataset (OUT/data) and the two run directories
(OUT/diffusion, OUT/bc), which `dpjax eval` and `dpjax train --resume` continue from.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SIZES = {
    # episodes, train steps (diffusion, BC), eval episodes, (sampler, steps) the diffusion policy
    # is evaluated with. BC's 4000 steps: its lowest validation loss among the settings tried
    # (experiments/results/cup.md); more steps only overfit a regressor.
    "full": (200, (6000, 4000), 200,
             (("ddim", 1), ("ddim", 3), ("ddim", 10), ("ddim", 30), ("ddpm", 100))),
    "quick": (100, (1000, 500), 60, (("ddim", 1), ("ddim", 10))),
}  # fmt: skip


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="collect, train diffusion + BC, evaluate: the end-to-end demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="dpjax_demo", help="directory for everything it writes")
    parser.add_argument("--quick", action="store_true", help="a smaller size (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--denoiser", default="mlp", choices=("mlp", "unet1d", "transformer"))
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpjax import evaluate
    from dpjax.configs import multimodal_diffusion
    from dpjax.data import load_dataset
    from dpjax.envs.collect import collect_demos
    from dpjax.policy import load_policy, with_action_horizon
    from dpjax.training.loop import train

    episodes, train_steps, eval_episodes, step_counts = SIZES["quick" if args.quick else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dataset = collect_demos(out / "data", episodes, args.seed)
    expert = evaluate.demonstration_mode_frequencies(load_dataset(dataset))
    results, rollouts = {}, {}
    for kind, num_steps in zip(("diffusion", "bc"), train_steps, strict=True):
        print(f"\ntraining the {kind} policy ({num_steps} steps)")
        config = multimodal_diffusion.recipe(dataset, kind, args.denoiser, num_steps, args.seed)
        train(config, out / kind, overwrite=True)
        policy, params, _ = load_policy(out / kind)
        if kind == "diffusion":
            default = (config.policy.sampler, config.policy.num_inference_steps)
            for sampler, steps in step_counts:
                metrics, r = evaluate.evaluate_multimodal(
                    policy, params, num_episodes=eval_episodes, sampler=sampler,
                    num_inference_steps=steps, expert_mode_frequencies=expert,
                )  # fmt: skip
                results[f"diffusion ({sampler}, {steps} steps)"] = metrics
                if (sampler, steps) == default:
                    results["diffusion"], rollouts["diffusion"] = metrics, r
        else:
            results["bc"], rollouts["bc"] = evaluate.evaluate_multimodal(
                policy, params, num_episodes=eval_episodes, expert_mode_frequencies=expert
            )
            # BC executed one action per prediction, so that its numbers are not an artefact
            # of open-loop chunks from a mean regressor.
            results["bc (single step)"], _ = evaluate.evaluate_multimodal(
                with_action_horizon(policy, 1), params, num_episodes=eval_episodes,
                expert_mode_frequencies=expert,
            )  # fmt: skip
    print_table(results, eval_episodes)
    summary = {
        "what": "dpjax demo: multimodal cup task, diffusion vs BC (closed loop, held-out seeds)",
        "size": "quick" if args.quick else "full",
        "episodes": episodes,
        "train_steps": dict(zip(("diffusion", "bc"), train_steps, strict=True)),
        "eval_episodes": eval_episodes,
        "denoiser": args.denoiser,
        "wall_seconds": time.perf_counter() - t_start,
        "expert_mode_frequencies": expert,  # measured on the demonstrations
        **{name: _public(m) for name, m in results.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    written = [out / "summary.json"]
    try:
        written.append(evaluate.plot_multimodal(rollouts, out / "rollouts.png"))
    except ImportError:
        print("(install the `plot` extra for rollouts.png: pip install 'dpjax[plot]')")
    print("\nwrote " + ", ".join(map(str, written)))
    print(f"runs: {out / 'diffusion'}, {out / 'bc'}  (try: dpjax eval {out / 'diffusion'} "
          f"--sampler dpmsolver++ --steps 5)")  # fmt: skip
    return 0


def _public(metrics: dict) -> dict:
    keep = ("success_rate", "success_ci95", "collision_rate", "mode_frequencies",
            "mode_frequency_error", "no_mode_fraction", "mean_squared_jerk", "chunk_jump", "within_chunk_step",
            "chunk_latency_ms", "chunk_latency_p95_ms", "denoiser_evaluations")  # fmt: skip
    return {k: metrics[k] for k in keep if k in metrics}


def print_table(results: dict, eval_episodes: int) -> None:
    expert = next(iter(results.values()))["expert_mode_frequencies"]
    print(f"\nClosed loop on {eval_episodes} held-out episodes (expert, measured on the "
          f"demonstrations: north {expert['north']:.3f} / east {expert['east']:.3f} / "
          f"south {expert['south']:.3f})")  # fmt: skip
    print("| policy | success (95% CI) | north | east | south | max mode error | no side | jerk "
          "| chunk jump | ms/chunk | evals |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in results.items():
        if name == "diffusion":
            continue  # the same numbers as its own step count's row
        f = m["mode_frequencies"]
        lo, hi = m["success_ci95"]
        print(f"| {name} | {m['success_rate']:.0%} ({lo:.0%}-{hi:.0%}) | {f['north']:.2f} | "
              f"{f['east']:.2f} | {f['south']:.2f} | {m['mode_frequency_error']:.3f} | "
              f"{m['no_mode_fraction']:.2f} | "
              f"{m['mean_squared_jerk']:.2e} | {m['chunk_jump']:.3f} | "
              f"{m['chunk_latency_ms']:.1f} | {m['denoiser_evaluations']} |")  # fmt: skip
