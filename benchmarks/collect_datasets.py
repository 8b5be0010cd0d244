"""Demonstration datasets per task: expert success, collection speed, size, read-back speed.

    python benchmarks/collect_datasets.py [--episodes 100] [--pixel-episodes 10] \
        [--tasks multimodal,pusht,pusht-pixels,metaworld-push-v3] [--out-dir DIR]

Each task goes through `dpjax.envs.collect.collect`, the function `dpjax collect` runs
(seeds 0 .. N-1, successful episodes kept, written atomically as TFDS array_record), then the
dataset is read back with `load_dataset`. Prints a Markdown table.

Columns: *expert success* = successful / attempted episodes; *steps* = env steps of all
attempted episodes (kept ones in brackets); *expert steps/s* = those steps over the time
spent inside the expert and simulator (JAX compilation included for "multimodal");
*end-to-end steps/s* = the same steps over the wall time of the whole collection, encoding,
statistics and writing included; *size* = bytes of the dataset directory (array_record
compresses; the bytes of the decoded step arrays in brackets); *read-back* =
steps/s decoding every episode of the dataset into numpy through `load_dataset`.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from dpjax.data import load_dataset
from dpjax.envs.collect import collect, resolve_task
from dpjax.machine import cpu_model, package_version

# label -> (task name, task options). Meta-World demos get small action noise for diversity,
# through the task's own (clipped) noise option so recorded actions stay in [-1, 1].
PRESETS: dict[str, tuple[str, dict]] = {
    "multimodal": ("multimodal", {}),
    "pusht": ("pusht", {"obs_type": "state"}),
    "pusht-pixels": ("pusht", {"obs_type": "pixels"}),
    **{
        f"metaworld-{name}": (f"metaworld-{name}", {"action_noise": 0.1})
        for name in ("pick-place-v3", "push-v3", "peg-insert-side-v3", "drawer-open-v3")
    },
}
DEFAULT_TASKS = ",".join(PRESETS)


def machine_line() -> str:
    packages = ("jax", "tensorflow-datasets", "array-record", "gym-pusht", "metaworld", "mujoco")
    return (
        f"{cpu_model()}, {os.cpu_count()} cores visible, load average at start "
        f"{os.getloadavg()[0]:.1f}; {platform.system()} {platform.release()}; "
        f"python {platform.python_version()}, "
        + ", ".join(f"{p} {package_version(p, '-')}" for p in packages)
    )


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else (value,)


def measure(label: str, episodes: int, out_dir: Path, seed: int) -> dict:
    name, options = PRESETS.get(label, (label, {}))
    task = resolve_task(name, options)
    path, info = collect(
        task,
        out_dir / label,
        episodes=episodes,
        seed=seed,
        overwrite=True,
        task_options=options,
        progress=False,
    )
    start = time.perf_counter()
    dataset = load_dataset(path)
    read_steps, raw_bytes = 0, 0
    for episode in dataset:
        read_steps += len(episode["steps"]["action"])
        raw_bytes += sum(leaf.nbytes for leaf in _leaves(episode["steps"]))
    read_s = time.perf_counter() - start
    size = directory_bytes(path)
    return {
        "label": label,
        "options": ", ".join(f"{k}={v}" for k, v in options.items()) or "-",
        "attempted": info["episodes_attempted"],
        "kept": info["episodes_kept"],
        "success": info["expert_success_rate"],
        "steps": info["expert_steps"],
        "kept_steps": dataset.stats.num_steps,
        "expert_sps": info["steps_per_second"],
        "wall_s": info["wall_seconds"],
        "e2e_sps": info["expert_steps"] / info["wall_seconds"],
        "size_mb": size / 1e6,
        "raw_mb": raw_bytes / 1e6,
        "read_sps": read_steps / read_s,
        "read_mb_s": size / 1e6 / read_s,
    }


HEADER = (
    "| task | options | episodes | expert success | kept | steps (kept) | expert steps/s "
    "| wall s | end-to-end steps/s | size MB (raw arrays) | read-back steps/s (MB/s) |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: dict) -> str:
    return (
        f"| {r['label']} | {r['options']} | {r['attempted']} | {r['success']:.0%} | {r['kept']} "
        f"| {r['steps']} ({r['kept_steps']}) | {r['expert_sps']:.0f} | {r['wall_s']:.1f} "
        f"| {r['e2e_sps']:.0f} | {r['size_mb']:.2f} ({r['raw_mb']:.2f}) | {r['read_sps']:.0f} "
        f"({r['read_mb_s']:.1f}) |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated labels/names")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task")
    parser.add_argument(
        "--pixel-episodes", type=int, default=10, help="episodes for pusht-pixels (slow)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="where datasets go (default: a temp dir)")
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="dpjax-datasets-"))
    print(f"machine: {machine_line()}")
    print(f"datasets in {out_dir}; seeds {args.seed}..; episodes {args.episodes} per task")
    print()
    print(HEADER, flush=True)
    for label in (t.strip() for t in args.tasks.split(",") if t.strip()):
        episodes = args.pixel_episodes if label == "pusht-pixels" else args.episodes
        print(row(measure(label, episodes, out_dir, args.seed)), flush=True)


if __name__ == "__main__":
    main()
