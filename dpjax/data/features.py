"""The TFDS feature spec of an RLDS episode, derived from one `Episode`, and episode checks.

Steps become a `tfds.features.Dataset` (as in RLDS / Open X-Embodiment), so TensorFlow users
get the usual nested `tf.data.Dataset` of steps; without TensorFlow, `as_data_source` hands
back the steps lazily and `stack_steps` turns them into arrays with a leading time axis.

Keys are named by their path inside `steps`, e.g. "action" or "observation/state".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpjax.errors import DataError, ShapeError


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype name of one array per step (no batch or time axis)."""

    shape: tuple[int, ...]
    dtype: str


# step key -> (per-step shape, dtype name); e.g. {"observation/image": ((96, 96, 3), "uint8")}
StepSpec = dict[str, tuple[tuple[int, ...], str]]


def flatten_steps(
    steps: Mapping[str, Any], prefix: str = "", as_array: bool = True
) -> dict[str, Any]:
    """{"observation": {"state": a}} -> {"observation/state": a}; leaves are arrays (T, ...)."""
    flat = {}
    for key, value in steps.items():
        if isinstance(value, Mapping):
            flat.update(flatten_steps(value, f"{prefix}{key}/", as_array))
        else:
            flat[prefix + key] = np.asarray(value) if as_array else value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_steps`."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def step_spec(episode: Mapping[str, Any]) -> StepSpec:
    """Per-step shape and dtype of every array in `episode["steps"]`."""
    steps = _steps_of(episode, "?")
    return {k: (tuple(v.shape[1:]), v.dtype.name) for k, v in flatten_steps(steps).items()}


def is_image(shape: tuple[int, ...], dtype: str) -> bool:
    """uint8 arrays of rank >= 2 per step are images: stored as raw bytes, never normalized."""
    return dtype == "uint8" and len(shape) >= 2


def low_dim_keys(spec: StepSpec) -> list[str]:
    """Keys that get statistics and normalization: the action and non-image observations."""
    keys = [k for k in spec if k == "action" or k.startswith("observation/")]
    return [k for k in keys if not is_image(*spec[k]) and np.dtype(spec[k][1]).kind in "fiu"]


def episode_features(spec: StepSpec, metadata: Mapping[str, Any]):
    """The `tfds.features.FeaturesDict` of episodes whose steps match `spec`."""
    import tensorflow_datasets as tfds

    features = tfds.features

    def tensor(shape, dtype):
        if not shape:
            return features.Scalar(dtype=np.dtype(dtype))
        # Raw bytes keep images compact and decode with one np.frombuffer per step.
        encoding = features.Encoding.BYTES if is_image(shape, dtype) else features.Encoding.NONE
        return features.Tensor(shape=shape, dtype=np.dtype(dtype), encoding=encoding)

    steps = unflatten({k: tensor(*v) for k, v in spec.items()})
    return features.FeaturesDict(
        {
            "steps": features.Dataset(_as_features_dict(steps)),
            "episode_metadata": features.FeaturesDict(
                {k: _metadata_feature(k, v) for k, v in metadata.items()}
            ),
        }
    )


def _as_features_dict(tree: dict):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {k: _as_features_dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    )


def _metadata_feature(key: str, value: Any):
    import tensorflow_datasets as tfds

    features = tfds.features
    if isinstance(value, str):
        return features.Text()
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool | np.bool_):
        return features.Scalar(dtype=np.bool_)
    if isinstance(value, int | np.integer):
        return features.Scalar(dtype=np.int64)
    if isinstance(value, float | np.floating):
        return features.Scalar(dtype=np.float32)
    raise DataError(f"episode_metadata[{key!r}] has unsupported type {type(value).__name__}")


def check_episode(episode: Mapping[str, Any], index: int, spec: StepSpec) -> dict[str, np.ndarray]:
    """Raises DataError / ShapeError naming the key and episode if `episode` does not fit `spec`
    or holds NaN/inf; returns its flattened steps."""
    where = _where(episode, index)
    flat = flatten_steps(_steps_of(episode, where))
    if set(flat) != set(spec):
        missing, extra = sorted(set(spec) - set(flat)), sorted(set(flat) - set(spec))
        raise DataError(
            f"{where}: step keys differ from the first episode's ({missing=}, {extra=})"
        )
    lengths = {k: len(v) if v.ndim else -1 for k, v in flat.items()}
    num_steps = lengths.get("action", next(iter(lengths.values())))
    if num_steps <= 0:
        raise DataError(f"{where} has no steps")
    for key, value in flat.items():
        shape, dtype = spec[key]
        if lengths[key] != num_steps or tuple(value.shape[1:]) != shape:
            raise ShapeError(
                f"{where}: steps/{key} has shape {value.shape}, expected ({num_steps}, "
                f"{', '.join(map(str, shape))})"
            )
        if value.dtype.name != dtype:
            raise ShapeError(f"{where}: steps/{key} has dtype {value.dtype}, expected {dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.argmax(~np.isfinite(value).reshape(num_steps, -1).all(axis=1)))
            raise DataError(f"{where}: steps/{key} holds NaN/inf (first at step {bad})")
    return flat


def check_metadata(episode: Mapping[str, Any], index: int, reference: Mapping[str, Any]) -> None:
    metadata = episode.get("episode_metadata", {})
    if set(metadata) != set(reference):
        raise DataError(
            f"{_where(episode, index)}: episode_metadata keys {sorted(metadata)} differ from "
            f"the first episode's {sorted(reference)}"
        )


def stack_steps(steps: Any) -> dict[str, Any]:
    """Decoded `steps` (a sequence of step dicts, or already a dict of arrays) -> dict of
    arrays with a leading time axis."""
    if isinstance(steps, Mapping):
        return {
            k: stack_steps(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in steps.items()
        }
    step_list = list(steps)
    if not step_list:
        raise DataError("episode has no steps")
    flat = [flatten_steps(s) for s in step_list]
    return unflatten({k: np.stack([f[k] for f in flat]) for k in flat[0]})


def to_python(value: Any) -> Any:
    """Decoded TFDS metadata value (bytes, numpy scalar) -> str / bool / int / float."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0 or isinstance(value, np.generic):
        return value.item()
    return value


def dataset_name(name: str) -> str:
    """A TFDS-valid dataset name (snake_case, starts with a letter) from e.g. a task name."""
    snake = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return snake if snake[:1].isalpha() else f"dpjax_{snake}"


def _steps_of(episode: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    if not isinstance(episode, Mapping) or "steps" not in episode:
        raise DataError(f"{where} is not an episode dict with 'steps' and 'episode_metadata'")
    return episode["steps"]


def _where(episode: Mapping[str, Any], index: int) -> str:
    seed = episode.get("episode_metadata", {}).get("seed") if isinstance(episode, Mapping) else None
    return f"episode {index}" + (f" (seed {seed})" if seed is not None else "")
