"""Dataset statistics, computed once while a dataset is written and stored next to it.

`dpjax_stats.json` holds, for the action and each low-dimensional observation key, the
per-dimension min / max / mean / std over all steps, plus the episode lengths (so windows can
be indexed without reading the data), the step spec and free-form `info` (e.g. how the
dataset was collected). Its presence is also what marks a dpjax dataset as complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpjax.data.features import StepSpec, flatten_steps, low_dim_keys
from dpjax.errors import DataError

STATS_FILENAME = "dpjax_stats.json"
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ArrayStats:
    """Per-dimension statistics of one step key; each field has the per-step shape, float64."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Statistics of a whole dataset. `arrays` is keyed like "action", "observation/state"."""

    arrays: dict[str, ArrayStats]
    episode_lengths: tuple[int, ...]
    spec: StepSpec
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_lengths)

    @property
    def num_steps(self) -> int:
        return int(sum(self.episode_lengths))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": _FORMAT_VERSION,
            "num_episodes": self.num_episodes,
            "num_steps": self.num_steps,
            "episode_lengths": list(self.episode_lengths),
            "spec": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.spec.items()},
            "arrays": {
                k: {f.name: getattr(a, f.name).tolist() for f in dataclasses.fields(a)}
                for k, a in self.arrays.items()
            },
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "stats") -> DatasetStats:
        """Parses and validates `to_dict` output; DataError on anything inconsistent."""
        try:
            spec = {
                k: (tuple(int(n) for n in v["shape"]), str(v["dtype"]))
                for k, v in d["spec"].items()
            }
            lengths = tuple(int(n) for n in d["episode_lengths"])
            arrays = {
                k: ArrayStats(
                    **{f: np.asarray(v[f], np.float64) for f in ("min", "max", "mean", "std")}
                )
                for k, v in d["arrays"].items()
            }
            info = dict(d.get("info", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{source} is corrupt: {type(e).__name__}: {e}") from e
        if d.get("num_episodes") != len(lengths) or d.get("num_steps") != sum(lengths):
            raise DataError(f"{source} is corrupt: episode counts do not add up")
        for key, a in arrays.items():
            if key not in spec:
                raise DataError(f"{source} is corrupt: statistics for unknown key {key!r}")
            for f in dataclasses.fields(a):
                value = getattr(a, f.name)
                if value.shape != spec[key][0] or not np.all(np.isfinite(value)):
                    raise DataError(f"{source} is corrupt: {key}.{f.name} has a wrong shape or NaN")
        if "action" not in arrays:
            raise DataError(f"{source} is corrupt: no statistics for 'action'")
        return cls(arrays=arrays, episode_lengths=lengths, spec=spec, info=info)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATS_FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DatasetStats:
        path = Path(directory) / STATS_FILENAME
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise DataError(f"{path} is missing") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is corrupt: {e}") from e
        if not isinstance(d, dict):
            raise DataError(f"{path} is corrupt: not a JSON object")
        return cls.from_dict(d, source=str(path))


@dataclasses.dataclass
class _Moments:
    count: int
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations from the mean
    min: np.ndarray
    max: np.ndarray


class StatsAccumulator:
    """Accumulates `DatasetStats` one episode at a time (single pass, streaming).

    Per-episode moments are merged with Chan et al.'s pairwise formula, which stays accurate
    where the naive sum of squares would cancel catastrophically.
    """

    def __init__(self, spec: StepSpec):
        self.spec = spec
        self.keys = low_dim_keys(spec)
        self.lengths: list[int] = []
        self._moments: dict[str, _Moments] = {}

    def add(self, flat_steps: Mapping[str, np.ndarray]) -> None:
        """`flat_steps`: {key: (T, ...)} as returned by `check_episode`."""
        self.lengths.append(len(flat_steps["action"]))
        for key in self.keys:
            x = np.asarray(flat_steps[key], np.float64)
            mean = x.mean(axis=0)
            new = _Moments(
                len(x), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0)
            )
            old = self._moments.get(key)
            self._moments[key] = new if old is None else _merge(old, new)

    def finish(self, info: Mapping[str, Any] | None = None) -> DatasetStats:
        if not self.lengths:
            raise DataError("no episodes to compute statistics of")
        arrays = {
            k: ArrayStats(m.min, m.max, m.mean, np.sqrt(m.m2 / m.count))
            for k, m in self._moments.items()
        }
        return DatasetStats(arrays, tuple(self.lengths), dict(self.spec), dict(info or {}))


def compute_stats(episodes: Iterable[Mapping[str, Any]]) -> DatasetStats:
    """One pass over in-memory or stored episodes (the `Episode` layout)."""
    accumulator = None
    for episode in episodes:
        flat = flatten_steps(episode["steps"])
        if accumulator is None:
            accumulator = StatsAccumulator(
                {k: (v.shape[1:], v.dtype.name) for k, v in flat.items()}
            )
        accumulator.add(flat)
    if accumulator is None:
        raise DataError("no episodes to compute statistics of")
    return accumulator.finish()


def _merge(a: _Moments, b: _Moments) -> _Moments:
    count = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / count)
    m2 = a.m2 + b.m2 + delta**2 * (a.count * b.count / count)
    return _Moments(count, mean, m2, np.minimum(a.min, b.min), np.maximum(a.max, b.max))


def format_stats(stats: DatasetStats, max_dims: int = 8) -> list[str]:
    """Human-readable lines, one per key and statistic, for `dpjax data info`."""

    def fmt(values: np.ndarray) -> str:
        flat = values.reshape(-1)
        shown = " ".join(f"{v: .4g}" if math.isfinite(v) else str(v) for v in flat[:max_dims])
        return shown + (f" ... ({flat.size} dims)" if flat.size > max_dims else "")

    lines = []
    for key, a in stats.arrays.items():
        lines.append(f"  {key}:")
        for field in ("min", "max", "mean", "std"):
            lines.append(f"    {field:>4}: {fmt(getattr(a, field))}")
    return lines
