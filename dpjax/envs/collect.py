"""Recording scripted-expert demonstrations into a dataset (what `dpjax collect` runs).

`collect(task, out, episodes=N)` runs the task's expert on seeds S, S+1, ..., S+N-1 (its
batched collector where it has one), keeps the successful episodes and writes them with
`dpjax.data.write_dataset` (atomically), with the collection record in the statistics.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dpjax.data import load_dataset, write_dataset
from dpjax.envs.base import iter_expert_episodes
from dpjax.envs.tasks import check_options, make_task
from dpjax.errors import ConfigError, DataError

# Episodes per call of a task's batched collector: big enough to amortize its compilation
# and vectorization, small enough for a live progress bar and bounded memory.
_COLLECT_CHUNK = 64


def parse_task_options(items: Sequence[str]) -> dict[str, Any]:
    """["a=1", "b=0.5", "c=true", "d=train"] -> {"a": 1, "b": 0.5, "c": True, "d": "train"}."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--task-option wants KEY=VALUE, got {item!r}")
        if key in options:
            raise ConfigError(f"--task-option {key} given twice")
        options[key] = parse_option_value(text)
    return options


def parse_option_value(text: str) -> Any:
    """int, float, bool (true/false, any case), None (none/null), JSON list/dict, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:  # what JSON does not spell: "3.", ".5", "inf"
        return float(text)
    except ValueError:
        return text


def resolve_task(name: str, options: dict[str, Any] | None = None):
    """A registered task name, or "module:factory" (factory(**options) -> Task)."""
    options = dict(options or {})
    if ":" in name:
        module_name, _, factory_name = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot load task factory {name!r}: {e}") from e
        check_options(factory, options, f"task {name!r}")
        return factory(**options)
    return make_task(name, **options)


def expert_episodes(
    task, num_episodes: int, seed: int, action_noise: float, execution_noise: float = 0.0
) -> Iterator[Any]:
    """The task's batched collector in chunks where it has one, else one rollout at a time.

    Execution noise always takes the one-at-a-time path: batched collectors record what they
    execute.
    """
    collector = getattr(task, "collect_episodes", None)
    if not callable(collector) or execution_noise > 0:
        yield from iter_expert_episodes(task, num_episodes, seed, action_noise, execution_noise)
        return
    for start in range(0, num_episodes, _COLLECT_CHUNK):
        count = min(_COLLECT_CHUNK, num_episodes - start)
        yield from collector(count, seed + start, action_noise=action_noise)


def collect(
    task,
    out: str | Path,
    *,
    episodes: int,
    seed: int = 0,
    action_noise: float = 0.0,
    execution_noise: float = 0.0,
    overwrite: bool = False,
    task_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Runs `task`'s expert for `episodes` seeds and writes the successful episodes to `out`.

    Returns the dataset path and the collection record stored in its statistics
    (`stats.info["collection"]`): attempts, kept episodes, success rate, expert steps and
    seconds, wall time. What `dpjax collect` runs; benchmarks call it too.
    """
    from tqdm import tqdm

    if episodes < 1:
        raise ConfigError("--episodes must be >= 1")
    for flag, value in (("--action-noise", action_noise), ("--execution-noise", execution_noise)):
        if not value >= 0:  # also refuses NaN
            raise ConfigError(f"{flag} must be >= 0, got {value}")
    counts = {"attempted": 0, "kept": 0, "steps": 0, "expert_s": 0.0}
    start = time.perf_counter()

    def successful() -> Iterator[Any]:
        stream = expert_episodes(task, episodes, seed, action_noise, execution_noise)
        bar = tqdm(total=episodes, unit="ep", desc=f"collect {task.name}", disable=not progress)
        with bar:
            while True:
                # Expert time alone, apart from encoding and writing, is what tasks compare on.
                tick = time.perf_counter()
                episode = next(stream, None)
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
        return {
            "task": task.name,
            "task_options": dict(task_options or {}),
            "expert": task.expert_name,
            "modes": list(task.modes),  # names of the episodes' integer modes
            "seed": seed,
            "action_noise": action_noise,
            "execution_noise": execution_noise,
            "episodes_attempted": counts["attempted"],
            "episodes_kept": counts["kept"],
            "expert_success_rate": counts["kept"] / max(counts["attempted"], 1),
            "expert_steps": counts["steps"],
            "expert_seconds": counts["expert_s"],
            "steps_per_second": counts["steps"] / max(counts["expert_s"], 1e-9),
            "wall_seconds": time.perf_counter() - start,
        }

    path = write_dataset(
        successful(),
        out,
        name=task.name,
        overwrite=overwrite,
        info=lambda: {"collection": collection_info()},
        description=f"{task.name} demonstrations by the {task.expert_name} expert",
    )
    return path, collection_info()


def collect_demos(
    path: Path,
    episodes: int,
    seed: int,
    *,
    task: str = "multimodal",
    execution_noise: float = 0.0,
    progress: bool = True,
    **task_options,
) -> Path:
    """Expert demonstrations of the registered `task` at `path` (`task_options`: e.g.
    goal_conditioned=True, obs_type="keypoints"), reused when the dataset there was collected
    the same way (task, options, seed, episodes, noise), else collected anew over it."""
    try:
        collection = load_dataset(path).stats.info.get("collection", {})
    except DataError:
        collection = {}
    # Records written before a noise option existed were collected without it.
    recorded = {"action_noise": 0.0, "execution_noise": 0.0, **collection}
    wanted = {"task": task, "task_options": task_options, "seed": seed,
              "episodes_attempted": episodes, "action_noise": 0.0,
              "execution_noise": execution_noise}  # fmt: skip
    if collection and all(recorded.get(k) == v for k, v in wanted.items()):
        print(f"reusing the {episodes} demonstrations in {path}")
        return path
    collect(make_task(task, **task_options), path, episodes=episodes, seed=seed,
            execution_noise=execution_noise, overwrite=True, task_options=task_options,
            progress=progress)  # fmt: skip
    return path
