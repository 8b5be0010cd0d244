"""Scripted-expert success rate and collection speed per task; prints a markdown table.

    PYTHONPATH=. python benchmarks/expert_success.py \
        --tasks metaworld-pick-place-v3,metaworld-push-v3 --episodes 100 [--action-noise 0.1]

(from the repo root; PYTHONPATH=. is not needed once dpjax is pip-installed.)

Success = the expert reached `info["success"]` within the task's max steps; seeds are
seed .. seed+episodes-1. Speed counts every env step of every episode (expert included) over
the wall time of the whole collection, env construction and resets included. Tasks with a
batched `collect_episodes` (the pure-JAX "multimodal") are timed through it, compile excluded.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from dpjax.envs import make_task, rollout_expert
from dpjax.machine import package_version

DEFAULT_TASKS = (
    "metaworld-pick-place-v3,metaworld-push-v3,metaworld-peg-insert-side-v3,"
    "metaworld-drawer-open-v3"
)


def measure(task_name: str, episodes: int, seed: int, action_noise: float) -> dict:
    task = make_task(task_name)
    if task.collect_episodes is not None:
        task.collect_episodes(1, seed, action_noise=action_noise)  # compile outside the clock
        start = time.perf_counter()
        results = task.collect_episodes(episodes, seed, action_noise=action_noise)
    else:
        start = time.perf_counter()
        results = [rollout_expert(task, seed + i, action_noise) for i in range(episodes)]
    seconds = time.perf_counter() - start
    lengths = np.array([len(e["steps"]["action"]) for e in results])
    success = np.array([e["episode_metadata"]["success"] for e in results])
    return {
        "task": task_name,
        "episodes": episodes,
        "success": success.mean(),
        "steps_success": lengths[success].mean() if success.any() else float("nan"),
        "steps_per_s": lengths.sum() / seconds,
        "episodes_per_s": episodes / seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--action-noise", type=float, default=0.0)
    args = parser.parse_args(argv)

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus; "
        f"python {platform.python_version()}, "
        + ", ".join(f"{p} {package_version(p, '-')}" for p in ("jax", "metaworld", "mujoco"))
        + f"; action_noise {args.action_noise}, "
        f"seeds {args.seed}..{args.seed + args.episodes - 1}"
    )
    print("| task | episodes | success | mean steps (successes) | steps/s | episodes/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.tasks.split(","):
        r = measure(name.strip(), args.episodes, args.seed, args.action_noise)
        print(
            f"| {r['task']} | {r['episodes']} | {r['success']:.2f} | {r['steps_success']:.1f} "
            f"| {r['steps_per_s']:.0f} | {r['episodes_per_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
