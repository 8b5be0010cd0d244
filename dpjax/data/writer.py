"""Writes episodes as a TFDS dataset (RLDS layout, array_record shards), atomically.

The result is one directory that `tfds.builder_from_directory(path)` opens directly:

    out_dir/
      dataset_info.json, features.json            TFDS metadata
      NAME-train.array_record-0000i-of-0000n      the episodes, one record each
      dpjax_stats.json                            `DatasetStats`; written last

Everything is first written into a hidden sibling `.NAME.incomplete-PID@HOST-XXXX` and renamed
into place only once complete, so an interrupted collection never leaves a dataset that looks
finished, and an existing dataset is only replaced when `overwrite=True`. What a killed writer
left behind is deleted by the next write to the same path on the same host.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dpjax.data.features import (
    check_episode,
    check_metadata,
    dataset_name,
    episode_features,
    step_spec,
)
from dpjax.data.stats import StatsAccumulator
from dpjax.errors import DataError

DESCRIPTION_PREFIX = "dpjax episodes"
DATASET_VERSION = "1.0.0"


def write_dataset(
    episodes: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    name: str = "dpjax",
    overwrite: bool = False,
    info: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    description: str = "",
) -> Path:
    """Writes `episodes` (the `dpjax.envs.base.Episode` layout) to `out_dir`; returns its path.

    `episodes` may be a generator: it is consumed once, while the statistics are computed.
    `info` (or a function returning it, called after the last episode, e.g. to record how
    many attempts a collection took) is stored in the statistics file.
    Raises DataError if `out_dir` exists and `overwrite` is False, if there are no episodes,
    or if an episode holds NaN/inf or differs in layout from the first one.
    """
    out = Path(out_dir).absolute()
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_leftovers(out)
    prefix = f".{out.name}.incomplete-{os.getpid()}@{socket.gethostname()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    try:
        iterator = iter(episodes)
        first = next(iterator, None)
        if first is None:
            raise DataError(f"no episodes to write to {out}")
        spec = step_spec(first)
        metadata = dict(first.get("episode_metadata", {}))
        accumulator = StatsAccumulator(spec)
        summary = {"successful": 0, "modes": collections.Counter(),
                   "qualities": collections.Counter()}  # fmt: skip

        def checked() -> Iterator[tuple[int, Mapping[str, Any]]]:
            for index, episode in enumerate(itertools.chain([first], iterator)):
                accumulator.add(check_episode(episode, index, spec))
                check_metadata(episode, index, metadata)
                summary["successful"] += bool(episode["episode_metadata"].get("success", False))
                summary["modes"][str(episode["episode_metadata"].get("mode", -1))] += 1
                if "quality" in episode["episode_metadata"]:  # mixed-quality demonstrators
                    summary["qualities"][str(episode["episode_metadata"]["quality"])] += 1
                yield index, episode

        builder = _EpisodeBuilder(
            name=dataset_name(name),
            features=episode_features(spec, metadata),
            examples=checked(),
            description=f"{DESCRIPTION_PREFIX}: {description or name}",
            data_dir=str(tmp),
            file_format="array_record",
        )
        with _tfds_progress_bars(False):
            builder.download_and_prepare()
        extra = dict(info() if callable(info) else info or {})
        stats = accumulator.finish(
            {
                "episodes": {
                    **summary,
                    "modes": dict(summary["modes"]),
                    "qualities": dict(summary["qualities"]),
                },
                **extra,
            }  # fmt: skip
        )
        version_dir = Path(builder.data_dir)
        stats.save(version_dir)
        _commit(version_dir, out, overwrite)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")


def _remove_stale_leftovers(out: Path) -> None:
    """Deletes what writers of `out` killed on this host (SIGKILL, power loss) left behind.

    A leftover is only removed when its writer ran on this host and its process is gone; on
    a shared filesystem another host's writer may still be busy.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.incomplete-(\d+)@(.*)-[^-]+")
    host = socket.gethostname()
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.incomplete-*"):
        match = pattern.fullmatch(leftover.name)
        if match and match.group(2) == host and not _process_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _commit(version_dir: Path, out: Path, overwrite: bool) -> None:
    """Renames the finished dataset into place; the old one is deleted only after that."""
    _check_target(out, overwrite)  # may have appeared while we were writing
    trash = None
    if out.exists():
        trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
        os.rename(out, trash)
    try:
        os.rename(version_dir, out)
    except BaseException:
        if trash is not None:
            os.rename(trash, out)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _tfds_progress_bars(enable: bool):
    # TFDS' own bars would nest inside the caller's and show the temporary path.
    from tensorflow_datasets.core.utils import tqdm_utils

    previous = tqdm_utils._active
    tqdm_utils.display_progress_bar(enable)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(previous)


def _builder_class():
    import tensorflow_datasets as tfds

    class EpisodeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Builds a dataset from an iterator of (key, episode) given at construction."""

        VERSION = tfds.core.Version(DATASET_VERSION)
        # TFDS probes `code_path` for checksum files through importlib_resources, which recent
        # etils no longer installs; this builder has no code file and no downloads.
        code_path = None

        def __init__(self, *, name: str, features, examples, description: str, **kwargs):
            self.name = name
            self._features = features
            self._examples = examples
            self._description = description
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=self._description,
                features=self._features,
                # Keep episodes in the order they were written (seed order for collections).
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._examples}

        def _generate_examples(self):  # required abstract method; splits come from __init__
            raise NotImplementedError

        def _log_download_bytes(self) -> None:  # would print the temporary path
            pass

        def _log_download_done(self) -> None:
            pass

    return EpisodeBuilder


def _EpisodeBuilder(**kwargs):  # noqa: N802 - defers importing TFDS until a dataset is written
    return _builder_class()(**kwargs)
