"""Converts other demonstration formats into dpjax datasets.

Diffusion Policy's zarr replay buffers (`pusht_cchi_v7_replay.zarr` and alike):

    data/action (N, A)  data/state (N, D)  data/img (N, H, W, 3)  data/keypoint (N, K, 2) ...
    meta/episode_ends (E,) int: exclusive end step of each episode

become episodes with observations named after the arrays ("img" is renamed "image" and
stored as uint8). RLDS / TFDS datasets need no import: `load_dataset` reads them in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpjax.data.writer import write_dataset
from dpjax.errors import DataError, require_extra

DEFAULT_KEY_MAP = {"img": "image"}


def import_zarr(
    zarr_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str = "pusht",
    key_map: Mapping[str, str] | None = None,
    expert: str = "human",
    overwrite: bool = False,
) -> Path:
    """Writes the episodes of a Diffusion Policy zarr replay buffer (directory or .zip) to
    `out_dir` as a dpjax dataset and returns its path. Needs the extra `dpjax[zarr]`.

    `key_map` renames `data/*` arrays to observation names (default {"img": "image"});
    every `data/*` array other than "action" becomes an observation.
    """
    path = Path(zarr_path)
    arrays, episode_ends = _open_replay_buffer(path)
    key_map = DEFAULT_KEY_MAP if key_map is None else key_map
    info = {"source": str(path.absolute()), "source_format": "diffusion_policy_zarr"}
    return write_dataset(
        _zarr_episodes(arrays, episode_ends, name, expert, key_map),
        out_dir,
        name=name,
        overwrite=overwrite,
        info=info,
        description=f"{name}, imported from {path.name}",
    )


def _open_replay_buffer(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    zarr = require_extra("zarr", "zarr")
    if not path.exists():
        raise DataError(f"{path} does not exist")
    try:
        if path.suffix == ".zip":
            store = zarr.storage.ZipStore(str(path), mode="r")
            root = zarr.open_group(store=store, mode="r")
        else:
            root = zarr.open_group(str(path), mode="r")
        data, meta = root["data"], root["meta"]
        arrays = {k: data[k] for k in data.array_keys()}
        episode_ends = np.asarray(meta["episode_ends"][:], np.int64)
    except (KeyError, FileNotFoundError, ValueError, TypeError) as e:
        raise DataError(
            f"{path} is not a Diffusion Policy replay buffer (needs data/action and "
            f"meta/episode_ends): {type(e).__name__}: {e}"
        ) from e
    if "action" not in arrays:
        raise DataError(f"{path} has no data/action")
    num_steps = arrays["action"].shape[0]  # zarr 3 arrays have no len()
    if len(episode_ends) == 0 or np.any(np.diff(episode_ends) <= 0) or episode_ends[0] <= 0:
        raise DataError(f"{path}: meta/episode_ends must be positive and strictly increasing")
    if episode_ends[-1] > num_steps or any(a.shape[0] != num_steps for a in arrays.values()):
        raise DataError(f"{path}: data/* arrays and meta/episode_ends disagree on the step count")
    return arrays, episode_ends


def _zarr_episodes(
    arrays: Mapping[str, Any],
    episode_ends: np.ndarray,
    task: str,
    expert: str,
    key_map: Mapping[str, str],
) -> Iterator[dict[str, Any]]:
    starts = np.concatenate([[0], episode_ends[:-1]])
    for index, (start, end) in enumerate(zip(starts, episode_ends, strict=True)):
        num_steps = int(end - start)
        observation = {
            key_map.get(k, k): _as_observation(key_map.get(k, k), np.asarray(a[start:end]))
            for k, a in arrays.items()
            if k != "action"
        }
        is_last = np.arange(num_steps) == num_steps - 1
        yield {
            "steps": {
                "observation": observation,
                "action": np.asarray(arrays["action"][start:end], np.float32),
                "reward": np.zeros(num_steps, np.float32),
                "discount": np.ones(num_steps, np.float32),
                "is_first": np.arange(num_steps) == 0,
                "is_last": is_last,
                # Human demonstrations are cut when the operator stops, not at a terminal state.
                "is_terminal": np.zeros(num_steps, bool),
            },
            "episode_metadata": {
                "task": task,
                "seed": index,
                "expert": expert,
                "success": True,
                "mode": -1,
            },
        }


def _as_observation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "image" and x.dtype != np.uint8:
        # Diffusion Policy stores images as float32 in 0..255.
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.astype(np.float32) if x.dtype.kind == "f" else x
