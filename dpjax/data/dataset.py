"""Opens a dpjax dataset, or any RLDS / TFDS dataset directory, as a sequence of episodes.

array_record datasets are read through `tfds.builder_from_directory(...).as_data_source()`,
with random access and without TensorFlow. TFRecord datasets (most of Open X-Embodiment)
can only be decoded by TensorFlow: they need the extra `dpjax[tensorflow]` and can only be
iterated in order.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpjax.data.features import (
    StepSpec,
    flatten_steps,
    is_image,
    stack_steps,
    to_python,
    unflatten,
)
from dpjax.data.stats import STATS_FILENAME, DatasetStats, compute_stats
from dpjax.data.writer import DESCRIPTION_PREFIX
from dpjax.errors import DataError, require_extra

Episode = dict[str, Any]
_INFO_FILENAME = "dataset_info.json"


class EpisodeDataset:
    """Episodes of one split of a TFDS dataset directory, in the `Episode` layout (numpy).

    `stats` is the stored `DatasetStats` of a dpjax dataset, None for foreign datasets
    (call `compute_stats()`).
    """

    def __init__(self, path: Path, info: dict[str, Any], split: str = "train"):
        self.path = path
        self.info = info
        self.split = split
        self.name = str(info.get("name", path.name))
        self.file_format = str(info.get("fileFormat", "tfrecord"))
        self.is_dpjax = str(info.get("description", "")).startswith(DESCRIPTION_PREFIX)
        self._num_episodes = _split_lengths(info, split, path)
        self.stats: DatasetStats | None = None
        if (path / STATS_FILENAME).exists() or self.is_dpjax:
            self.stats = DatasetStats.load(path)
            if self.stats.num_episodes != len(self):
                raise DataError(
                    f"{path}: {STATS_FILENAME} lists {self.stats.num_episodes} episodes but the "
                    f"shards hold {len(self)}"
                )

    def __len__(self) -> int:
        return self._num_episodes

    @functools.cached_property
    def builder(self):
        import tensorflow_datasets as tfds

        if self.file_format == "tfrecord":
            # Decoding tf.train.Example records out of TFRecord files needs TensorFlow itself.
            require_extra("tensorflow", "tensorflow")
        try:
            return tfds.builder_from_directory(str(self.path))
        except Exception as e:  # TFDS raises a zoo of types for unreadable metadata
            raise DataError(f"{self.path}: TFDS cannot open it: {type(e).__name__}: {e}") from e

    @functools.cached_property
    def source(self):
        """The TFDS random-access data source (array_record datasets only)."""
        if self.file_format != "array_record":
            raise DataError(
                f"{self.path} is stored as {self.file_format}; random access (and the streaming "
                "loader) needs array_record. Iterate it instead, or convert it with write_dataset."
            )
        return self.builder.as_data_source(split=self.split)

    @property
    def spec(self) -> StepSpec:
        """Per-step shape and dtype of every step key ("action", "observation/state", ...)."""
        if self.stats is not None:
            return self.stats.spec
        tensor_info = self.builder.info.features["steps"].feature.get_tensor_info()
        return {
            k: (tuple(v.shape), np.dtype(v.np_dtype).name)
            for k, v in flatten_steps(tensor_info, as_array=False).items()
        }

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < len(self):
            raise IndexError(f"episode {index} out of range for {len(self)} episodes")
        # Only dpjax's own encodings are known to be raw arrays / raw bytes (not PNG, ...).
        return decode_episode(self.source[index], self.stats.spec if self.is_dpjax else None)

    def __iter__(self) -> Iterator[Episode]:
        if self.file_format == "array_record":
            for index in range(len(self)):
                yield self[index]
            return
        import tensorflow_datasets as tfds

        for example in tfds.as_numpy(self.builder.as_dataset(split=self.split)):
            yield decode_episode(example)

    def episode_lengths(self) -> tuple[int, ...]:
        if self.stats is not None:
            return self.stats.episode_lengths
        return tuple(len(self.source[i]["steps"]) for i in range(len(self)))

    def compute_stats(self) -> DatasetStats:
        """One pass over the data; what `write_dataset` stores for dpjax datasets."""
        if len(self) == 0:
            raise DataError(f"{self.path} holds no episodes")
        return compute_stats(self)

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.path)!r}, episodes={len(self)}, format={self.file_format})"
        )


def decode_episode(example: Mapping[str, Any], spec: StepSpec | None = None) -> Episode:
    """A TFDS-decoded RLDS example -> `Episode` (arrays with a leading time axis, str metadata).

    With the `spec` of a dpjax dataset, steps are decoded all at once instead of step by step.
    """
    if "steps" not in example:
        raise DataError(f"not an RLDS episode: keys {sorted(example)} have no 'steps'")
    metadata = example.get("episode_metadata", {})
    steps = _stack_serialized_steps(example["steps"], spec) if spec else None
    return {
        "steps": stack_steps(example["steps"]) if steps is None else steps,
        "episode_metadata": {k: to_python(v) for k, v in metadata.items()},
    }


def _stack_serialized_steps(steps: Any, spec: StepSpec) -> dict[str, Any] | None:
    """Fast path: TFDS' numpy data source keeps a Dataset feature's still-serialized columns
    (T, ...) in `steps.getitem.flat_example` and decodes them one step per access, which costs
    ~0.1 ms per step in Python. Decodes the columns directly; None if they look unexpected."""
    getitem = getattr(steps, "getitem", None)
    flat, nest = getattr(getitem, "flat_example", None), getattr(getitem, "nest", None)
    if flat is None or nest is None:
        return None
    try:
        columns = flatten_steps(nest(list(flat)))
    except (TypeError, ValueError):
        return None
    if set(columns) != set(spec):
        return None
    decoded = {}
    for key, column in columns.items():
        shape, dtype = spec[key]
        if column.dtype == object and is_image(shape, dtype):  # raw bytes, one entry per step
            column = np.frombuffer(bytearray(b"".join(column)), dtype).reshape(len(column), *shape)
        if column.shape[1:] != shape or column.dtype.name != dtype:
            return None
        decoded[key] = column
    return unflatten(decoded)


def load_dataset(path: str | os.PathLike, split: str = "train") -> EpisodeDataset:
    """Opens a dataset written by `write_dataset`, or an RLDS/TFDS dataset directory
    (the folder holding dataset_info.json, or a TFDS `data_dir/name[/version]` above it).

    Raises DataError for a directory that is not a dataset, one that is half-written
    (shards or statistics missing) or whose metadata is corrupt; MissingExtraError for a
    TFRecord dataset when TensorFlow is not installed (on first read).
    """
    root = Path(path).absolute()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    if ".incomplete-" in root.name or root.name.startswith("incomplete."):
        raise DataError(f"{root} is a half-written dataset (its writer was interrupted)")
    directory = _find_info_dir(root)
    try:
        info = json.loads((directory / _INFO_FILENAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{directory / _INFO_FILENAME} is corrupt: {e}") from e
    if not isinstance(info, dict):
        raise DataError(f"{directory / _INFO_FILENAME} is corrupt: not a JSON object")
    return EpisodeDataset(directory, info, split)


def _find_info_dir(root: Path) -> Path:
    if (root / _INFO_FILENAME).exists():
        return root
    found = sorted(root.glob(f"*/{_INFO_FILENAME}")) + sorted(root.glob(f"*/*/{_INFO_FILENAME}"))
    if any("incomplete" in p.parent.name for p in found) or any(root.glob("*/incomplete.*")):
        raise DataError(f"{root} holds a half-written dataset (its writer was interrupted)")
    if len(found) == 1:
        return found[0].parent
    if found:
        options = ", ".join(str(p.parent.relative_to(root)) for p in found)
        raise DataError(f"{root} holds several datasets; pick one of: {options}")
    raise DataError(f"{root} is not a dpjax or RLDS/TFDS dataset (no {_INFO_FILENAME})")


def _split_lengths(info: Mapping[str, Any], split: str, directory: Path) -> int:
    """Number of episodes in `split`; checks that every shard file listed is present."""
    splits = {s.get("name"): s for s in info.get("splits", []) if isinstance(s, dict)}
    if split not in splits:
        raise DataError(f"{directory}: no split {split!r} (splits: {sorted(splits)})")
    shard_lengths = [int(n) for n in splits[split].get("shardLengths", [])]
    template = splits[split].get(
        "filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    )
    file_format = str(info.get("fileFormat", "tfrecord"))
    for i in range(len(shard_lengths)):
        filename = (
            template.replace("{DATASET}", str(info.get("name")))
            .replace("{SPLIT}", split)
            .replace("{FILEFORMAT}", file_format)
            .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(shard_lengths):05d}")
        )
        if "{" not in filename and not (directory / filename).exists():
            raise DataError(f"{directory} is half-written or damaged: shard {filename} is missing")
    return sum(shard_lengths)


def collection_task(dataset: EpisodeDataset) -> tuple[str, dict[str, Any]]:
    """(task name, task options) that `dpjax collect` recorded for `dataset`."""
    info = (dataset.stats.info if dataset.stats else {}) or {}
    collection = info.get("collection", {})
    name = collection.get("task") or dataset[0]["episode_metadata"].get("task")
    return str(name), dict(collection.get("task_options", {}))
