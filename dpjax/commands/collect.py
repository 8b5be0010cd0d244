"""`dpjax collect TASK --episodes N --out DIR`: scripted-expert demonstrations -> dataset.

Runs the task's expert on seeds S, S+1, ..., S+N-1, keeps the successful episodes and writes
them with `dpjax.data.write_dataset` (atomically). TASK is a registered task name
(`dpjax.envs.task_names()`) or `package.module:factory` for a task defined elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Iterator
from typing import Any

# Episodes per call of a task's batched collector: big enough to amortize its compilation
# and vectorization, small enough for a live progress bar and bounded memory.
_COLLECT_CHUNK = 64


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record scripted-expert demonstrations into a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", metavar="TASK", help="task name, or module:factory")
    parser.add_argument("--episodes", type=int, required=True, help="episodes to attempt")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--action-noise", type=float, default=0.0, help="std of Gaussian noise on expert actions"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.set_defaults(func=run)


def resolve_task(name: str):
    """A registered task name, or "module:factory" (factory() -> Task)."""
    if ":" in name:
        from dpjax.errors import ConfigError

        module_name, _, factory = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), factory)()
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot load task factory {name!r}: {e}") from e
    from dpjax.envs import make_task

    return make_task(name)


def expert_episodes(task, num_episodes: int, seed: int, action_noise: float) -> Iterator[Any]:
    """The task's batched collector in chunks where it has one, else one rollout at a time."""
    collector = getattr(task, "collect_episodes", None)
    if not callable(collector):
        from dpjax.envs.base import iter_expert_episodes

        yield from iter_expert_episodes(task, num_episodes, seed, action_noise)
        return
    for start in range(0, num_episodes, _COLLECT_CHUNK):
        count = min(_COLLECT_CHUNK, num_episodes - start)
        yield from collector(count, seed + start, action_noise=action_noise)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dpjax.data import write_dataset
    from dpjax.errors import ConfigError

    if args.episodes < 1:
        raise ConfigError("--episodes must be >= 1")
    task = resolve_task(args.task)
    counts = {"attempted": 0, "kept": 0, "steps": 0, "expert_s": 0.0}
    start = time.perf_counter()

    def successful() -> Iterator[Any]:
        episodes = expert_episodes(task, args.episodes, args.seed, args.action_noise)
        with tqdm(total=args.episodes, unit="ep", desc=f"collect {task.name}") as bar:
            while True:
                # Expert time alone, apart from encoding and writing, is what tasks compare on.
                tick = time.perf_counter()
                episode = next(episodes, None)
                counts["expert_s"] += time.perf_counter() - tick
                if episode is None:
                    return
                counts["attempted"] += 1
                counts["steps"] += len(episode["steps"]["action"])
                bar.update(1)
                if episode["episode_metadata"].get("success"):
                    counts["kept"] += 1
                    bar.set_postfix(success=f"{counts['kept'] / counts['attempted']:.0%}")
                    yield episode

    def collection_info() -> dict[str, Any]:
        elapsed = time.perf_counter() - start
        return {
            "collection": {
                "task": task.name,
                "expert": task.expert_name,
                "seed": args.seed,
                "action_noise": args.action_noise,
                "episodes_attempted": counts["attempted"],
                "episodes_kept": counts["kept"],
                "expert_success_rate": counts["kept"] / max(counts["attempted"], 1),
                "steps_per_second": counts["steps"] / max(counts["expert_s"], 1e-9),
                "wall_seconds": elapsed,
            }
        }

    path = write_dataset(
        successful(),
        args.out,
        name=task.name,
        overwrite=args.overwrite,
        info=collection_info,
        description=f"{task.name} demonstrations by the {task.expert_name} expert",
    )
    info = collection_info()["collection"]
    print(
        f"kept {counts['kept']}/{counts['attempted']} episodes "
        f"(expert success rate {info['expert_success_rate']:.1%}), {counts['steps']} steps, "
        f"expert {info['steps_per_second']:.0f} steps/s, {info['wall_seconds']:.1f} s in all "
        f"-> {path}"
    )
    return 0
