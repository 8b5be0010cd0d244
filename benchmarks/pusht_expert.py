"""Success rate and speed of the scripted PushT expert over many seeds.

    python benchmarks/pusht_expert.py --episodes 100 --seed 0

Prints one line per episode, then a table: success rate, mean steps to success, mean final
coverage, seconds per episode, env steps per second (expert planning included), and where the
failures end (final-coverage histogram, failure reasons). Needs `dpjax[pusht]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpjax.envs.pusht import MAX_EPISODE_STEPS, PushTEnv  # noqa: E402
from dpjax.envs.pusht_expert import PushTExpert  # noqa: E402

COVERAGE_BINS = (0.0, 0.5, 0.8, 0.9, 0.95, 1.0)


@dataclasses.dataclass
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    final_coverage: float
    best_coverage: float
    seconds: float
    plans: int
    max_target_step: float  # largest distance between consecutive targets, px


def run_episode(seed: int, expert_options: dict) -> EpisodeResult:
    env = PushTEnv("state")
    start = time.perf_counter()
    obs, info = env.reset(seed=seed)
    expert = PushTExpert(env.physics, **expert_options)
    previous = np.asarray(env.physics.agent.position)
    best_coverage, max_step, steps = info["coverage"], 0.0, 0
    while steps < MAX_EPISODE_STEPS:
        steps += 1
        action = expert(obs)
        max_step = max(max_step, float(np.linalg.norm(action - previous)))
        previous = action
        obs, _, terminated, truncated, info = env.step(action)
        best_coverage = max(best_coverage, info["coverage"])
        if info["success"] or terminated or truncated:
            break
    seconds = time.perf_counter() - start
    env.close()
    return EpisodeResult(
        seed,
        info["success"],
        steps,
        info["coverage"],
        best_coverage,
        seconds,
        expert.num_plans,
        max_step,
    )


def failure_reason(result: EpisodeResult) -> str:
    if result.final_coverage >= 0.9:
        return "ran out of steps during the final alignment (coverage >= 0.9)"
    if result.best_coverage >= 0.9:
        return "was close (coverage >= 0.9) but lost it"
    return "ran out of steps far from the goal (coverage < 0.9)"


def summarize(results: list[EpisodeResult]) -> str:
    ok = [r for r in results if r.success]
    failed = [r for r in results if not r.success]
    total_steps = sum(r.steps for r in results)
    total_seconds = sum(r.seconds for r in results)
    rows = [
        ("episodes", f"{len(results)}"),
        ("success rate", f"{len(ok) / len(results):.1%} ({len(ok)}/{len(results)})"),
        ("mean steps to success", f"{np.mean([r.steps for r in ok]):.1f}" if ok else "-"),
        ("max steps to success", f"{max(r.steps for r in ok)}" if ok else "-"),
        ("mean final coverage", f"{np.mean([r.final_coverage for r in results]):.3f}"),
        ("seconds / episode", f"{total_seconds / len(results):.2f}"),
        ("env steps / s (with planning)", f"{total_steps / total_seconds:.1f}"),
        ("plans / episode", f"{np.mean([r.plans for r in results]):.1f}"),
        ("max target step, px", f"{max(r.max_target_step for r in results):.2f}"),
    ]
    lines = [f"{name:<32}{value}" for name, value in rows]
    finals = [r.final_coverage for r in results]
    counts, _ = np.histogram(finals, bins=COVERAGE_BINS)
    lines.append("final coverage histogram (all episodes):")
    for lo, hi, count in zip(COVERAGE_BINS[:-1], COVERAGE_BINS[1:], counts, strict=True):
        lines.append(f"  [{lo:.2f}, {hi:.2f}{']' if hi == 1.0 else ')'}  {count}")
    if failed:
        lines.append("failures:")
        reasons: dict[str, list[int]] = {}
        for r in failed:
            reasons.setdefault(failure_reason(r), []).append(r.seed)
        for reason, seeds in reasons.items():
            lines.append(f"  {len(seeds):3d}  {reason}: seeds {seeds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="first seed; episodes use seed + i")
    parser.add_argument("--max-step-px", type=float, default=12.0)
    parser.add_argument("--step-cost", type=float, default=0.3)
    args = parser.parse_args(argv)
    options = {"max_step_px": args.max_step_px, "step_cost": args.step_cost}
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    results = []
    for seed in range(args.seed, args.seed + args.episodes):
        r = run_episode(seed, options)
        results.append(r)
        print(
            f"seed {r.seed:4d}  success {int(r.success)}  steps {r.steps:3d}  "
            f"coverage {r.final_coverage:.3f}  best {r.best_coverage:.3f}  "
            f"plans {r.plans:2d}  {r.seconds:5.1f} s",
            flush=True,
        )
    print(summarize(results))


if __name__ == "__main__":
    main()
