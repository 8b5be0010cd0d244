"""Converts other demonstration formats into dpjax datasets.

Diffusion Policy's zarr replay buffers (`pusht_cchi_v7_replay.zarr` and alike):

    data/action (N, A)  data/state (N, D)  data/img (N, H, W, 3)  data/keypoint (N, K, 2) ...
    meta/episode_ends (E,) int: exclusive end step of each episode

become episodes with observations named after the arrays ("img" is renamed "image" and
stored as uint8).

LeRobot datasets on disk (`import_lerobot`; `dpjax data import-lerobot PATH --out DIR`), format
v3.0 (episodes packed into data/chunk-*/file-*.parquet and videos/KEY/chunk-*/file-*.mp4, with
meta/episodes/*.parquet saying where each episode's rows and frames are) and v2.x (one parquet
and one mp4 per episode). meta/info.json's features say what each column is: "video" features
are decoded from the mp4s (PyAV) at each row's timestamp, "image" features from their PNG/JPEG
bytes, numeric ones read as they are. "observation.state" becomes the observation "state",
"observation.images.top" the observation "top" ("observation." and "images." dropped), "action"
the action; timestamps, indices and "next.*" columns are not observations ("next.reward"
becomes the reward, "next.success" the episode's success).

RLDS / TFDS datasets need no import: `load_dataset` reads them in place.
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


# LeRobot's bookkeeping columns: present in every dataset, never an observation.
LEROBOT_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def lerobot_observation_name(feature: str) -> str:
    """ "observation.state" -> "state", "observation.images.top" -> "top"."""
    name = feature.removeprefix("observation.")
    return name.removeprefix("images.") if name.startswith("images.") else name


def import_lerobot(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a LeRobot dataset directory (v2.x or v3.0) to `out_dir` as a dpjax dataset;
    returns its path. Needs the extra `dpjax[lerobot-data]` (pyarrow, PyAV, Pillow)."""
    root = Path(path)
    info = _lerobot_info(root)
    name = name or root.name
    features = info["features"]
    if "action" not in features:
        raise DataError(f"{root}: meta/info.json has no 'action' feature")
    rows = _lerobot_rows(root, info)
    record = {"source": str(root.absolute()), "source_format": f"lerobot_{info['codebase_version']}",
              "fps": info.get("fps")}  # fmt: skip
    return write_dataset(
        _lerobot_episodes(root, info, rows, name),
        out_dir,
        name=name,
        overwrite=overwrite,
        info=record,
        description=f"{name}, imported from LeRobot format {info['codebase_version']}",
    )


def _lerobot_info(root: Path) -> dict[str, Any]:
    import json

    path = root / "meta" / "info.json"
    if not path.exists():
        raise DataError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    try:
        info = json.loads(path.read_text())
        version = str(info["codebase_version"])
        info["features"] = dict(info["features"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a LeRobot info.json ({type(e).__name__}: {e})") from e
    if not version.startswith(("v2", "v3")):
        raise DataError(f"{path}: LeRobot format {version} is not supported (v2.x, v3.0)")
    return info


def _read_parquet(files: list[Path], what: str):
    pq = require_extra("pyarrow.parquet", "lerobot-data")
    pa = require_extra("pyarrow", "lerobot-data")
    if not files:
        raise DataError(f"no {what} parquet files")
    try:
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read the {what} parquet files: {e}") from e


def _column(table, name: str, shape: list[int], dtype: str) -> np.ndarray:
    """A numeric feature column -> (N, *shape) array (lists of any nesting flattened)."""
    pa = require_extra("pyarrow", "lerobot-data")
    column = table.column(name).combine_chunks()
    while any(test(column.type) for test in (pa.types.is_list, pa.types.is_large_list,
                                             pa.types.is_fixed_size_list)):  # fmt: skip
        column = column.flatten()
    values = column.to_numpy(zero_copy_only=False)
    try:
        return np.asarray(values, dtype).reshape(table.num_rows, *shape)
    except (ValueError, TypeError) as e:
        raise DataError(f"feature {name!r}: {values.size} values do not make {table.num_rows} "
                        f"rows of shape {tuple(shape)} {dtype}") from e  # fmt: skip


def _lerobot_rows(root: Path, info: dict[str, Any]):
    files = sorted((root / "data").glob("*/*.parquet"))
    table = _read_parquet(files, f"{root}/data")
    missing = [c for c in ("episode_index", "frame_index") if c not in table.column_names]
    missing += [k for k, f in info["features"].items()
                if f.get("dtype") != "video" and k not in table.column_names]  # fmt: skip
    if missing:
        raise DataError(f"{root}/data: the parquet files lack the columns {missing}")
    return table


def _lerobot_video_locations(root: Path, info: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """v3.0: episode -> its meta/episodes row (video chunk/file indices and offsets)."""
    if not info["codebase_version"].startswith("v3"):
        return {}
    table = _read_parquet(sorted((root / "meta" / "episodes").glob("*/*.parquet")),
                          f"{root}/meta/episodes")  # fmt: skip
    keep = [c for c in table.column_names if c == "episode_index" or c.startswith("videos/")]
    columns = table.select(keep).to_pydict()
    return {int(e): {k: columns[k][i] for k in keep}
            for i, e in enumerate(columns["episode_index"])}  # fmt: skip


class _VideoFrames:
    """Decoded frames of one mp4 (cached: v3 files hold many episodes), looked up by time."""

    def __init__(self):
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def frames(self, path: Path, times: np.ndarray, fps: float) -> np.ndarray:
        if path not in self._cache:
            av = require_extra("av", "lerobot-data")
            if not path.exists():
                raise DataError(f"video {path} is missing")
            if len(self._cache) > 2:
                self._cache.clear()
            try:
                with av.open(str(path)) as container:
                    stream = container.streams.video[0]
                    decoded = [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24"))
                               for f in container.decode(stream)]  # fmt: skip
            except av.FFmpegError as e:
                raise DataError(f"cannot decode {path}: {e}") from e
            if not decoded:
                raise DataError(f"video {path} has no frames")
            self._cache[path] = (np.asarray([t for t, _ in decoded]),
                                 np.stack([f for _, f in decoded]))  # fmt: skip
        stamps, frames = self._cache[path]
        nearest = np.abs(stamps[None, :] - times[:, None]).argmin(axis=1)
        off = np.abs(stamps[nearest] - times)
        if np.any(off > 0.5 / fps):
            worst = float(times[off.argmax()])
            raise DataError(f"{path} has no frame within half a frame of t={worst:.4f} s")
        return frames[nearest]


def _decode_image(data: Any, key: str) -> np.ndarray:
    import io

    pil = require_extra("PIL.Image", "lerobot-data")
    raw = data.get("bytes") if isinstance(data, dict) else data
    if not raw:
        raise DataError(f"image feature {key!r} holds no bytes (images stored by path only?)")
    return np.asarray(pil.open(io.BytesIO(raw)).convert("RGB"), np.uint8)


def _lerobot_episodes(root: Path, info: dict[str, Any], table, name: str) -> Iterator[dict]:
    features = info["features"]
    fps = float(info.get("fps") or 0) or 30.0
    episode_column = table.column("episode_index").to_numpy()
    order = np.lexsort((table.column("frame_index").to_numpy(), episode_column))
    table, episode_column = table.take(order), episode_column[order]
    locations = _lerobot_video_locations(root, info)
    videos = _VideoFrames()
    chunks_size = int(info.get("chunks_size", 1000))
    episodes, starts, counts = np.unique(episode_column, return_index=True, return_counts=True)
    for episode, start_row, n in zip(episodes, starts, counts, strict=True):
        rows = table.slice(int(start_row), int(n))
        n = int(n)
        timestamps = (rows.column("timestamp").to_numpy().astype(np.float64)
                      if "timestamp" in rows.column_names else np.arange(n) / fps)  # fmt: skip
        observation, extra = {}, {}
        for key, feature in features.items():
            dtype, shape = feature.get("dtype"), list(feature.get("shape", []))
            if key in LEROBOT_INDEX_COLUMNS or key == "action":
                continue
            if dtype == "video":
                if locations:
                    where = locations.get(int(episode))
                    if where is None or f"videos/{key}/file_index" not in where:
                        raise DataError(f"meta/episodes has no video location of {key!r} for "
                                        f"episode {episode}")  # fmt: skip
                    video = root / info["video_path"].format(
                        video_key=key, chunk_index=int(where[f"videos/{key}/chunk_index"]),
                        file_index=int(where[f"videos/{key}/file_index"]))  # fmt: skip
                    start = float(where[f"videos/{key}/from_timestamp"])
                else:
                    video = root / info["video_path"].format(
                        video_key=key, episode_chunk=int(episode) // chunks_size,
                        episode_index=int(episode))  # fmt: skip
                    start = 0.0
                observation[lerobot_observation_name(key)] = videos.frames(
                    video, start + timestamps, fps
                )
            elif dtype == "image":
                observation[lerobot_observation_name(key)] = np.stack(
                    [_decode_image(v, key) for v in rows.column(key).to_pylist()]
                )
            elif dtype in ("string", "str") or key not in rows.column_names:
                continue
            elif key.startswith("next."):
                extra[key] = _column(rows, key, shape if shape != [1] else [], dtype)
            else:
                value = _column(rows, key, shape if shape != [1] else [1], dtype)
                observation[lerobot_observation_name(key)] = (
                    value.astype(np.float32) if value.dtype.kind in "fb" else value
                )
        action_feature = features["action"]
        action = _column(rows, "action", list(action_feature.get("shape", [])), "float32")
        reward = extra.get("next.reward", np.zeros(n, np.float32)).astype(np.float32).reshape(n)
        success = bool(np.any(extra["next.success"])) if "next.success" in extra else True
        yield {
            "steps": {
                "observation": observation,
                "action": action,
                "reward": reward,
                "discount": np.ones(n, np.float32),
                "is_first": np.arange(n) == 0,
                "is_last": np.arange(n) == n - 1,
                "is_terminal": np.zeros(n, bool),
            },
            "episode_metadata": {
                "task": name,
                "seed": int(episode),
                "expert": "lerobot",
                "success": success,
                "mode": -1,
            },  # fmt: skip
        }
