"""Batch loaders: iterating yields batches

    {"observation": {name: (B, obs_horizon, ...)}, "action": (B, pred_horizon, A)}

`InMemoryLoader` (the default for datasets that fit) puts every step on the device once and
samples with the pure `sample_windows`, which a train step can call inside `jit` instead of
iterating. For datasets that do not fit, `WindowReader` reads chosen windows from the TFDS
data source on the host (random access, recently read episodes cached) and
`StreamedBatches` reads a sequence of batches through grain's threads, a few ahead of the
consumer: `dpjax train` streams this way, each process reading only its own rows of each
global batch. `StreamingLoader` instead walks episodes in a shuffled order through a
shuffle buffer (each host its own share of episodes), for epoch-style consumers.
Image observations stay uint8 until they are on the device.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dpjax.data.dataset import EpisodeDataset
from dpjax.data.windows import (
    Batch,
    WindowData,
    check_horizons,
    flatten_episodes,
    make_window_data,
    make_window_index,
    sample_windows,
    window_step_indices,
)
from dpjax.errors import ConfigError, DataError


class InMemoryLoader:
    """Whole dataset on one device (or any `jax.sharding.Sharding`) as a `WindowData`.

    Use `loader.data` with `sample_windows(data, key, batch_size)` inside a jitted train
    step; iterating the loader does the same from the host, one jitted call per batch.
    """

    def __init__(
        self,
        episodes: EpisodeDataset | Iterable[Mapping[str, Any]],
        *,
        batch_size: int,
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
        observation_keys: Sequence[str] | None = None,
        seed: int = 0,
        device: Any = None,
    ):
        host_data = make_window_data(
            episodes,
            obs_horizon=obs_horizon,
            pred_horizon=pred_horizon,
            action_horizon=action_horizon,
            observation_keys=observation_keys,
        )
        self.batch_size = batch_size
        self.seed = seed
        self.data: WindowData = jax.device_put(host_data, device)
        self._sample = jax.jit(sample_windows, static_argnums=2)

    @property
    def num_windows(self) -> int:
        return self.data.num_windows

    def sample(self, key: jax.Array) -> Batch:
        return self._sample(self.data, key, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        key = jax.random.key(self.seed)
        while True:
            key, subkey = jax.random.split(key)
            yield self.sample(subkey)


class WindowReader:
    """Random access to the windows of `episode_ids` of an array_record `EpisodeDataset`.

    Window numbers are those of `make_window_data` over the same episodes in the same order
    (`make_window_index`), so `read(rows)` returns what `gather_windows(data, rows)` gives
    for the in-memory data, as host numpy arrays. The `cache_episodes` most recently read
    episodes stay decoded in host memory; the rest of the dataset stays on disk. Thread-safe.
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        episode_ids: Sequence[int],
        *,
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
        observation_keys: Sequence[str] | None = None,
        cache_episodes: int = 64,
    ):
        self.dataset = dataset
        self.episode_ids = np.asarray(episode_ids, dtype=np.int64)
        if len(self.episode_ids) == 0:
            raise DataError("WindowReader: no episodes")
        lengths = dataset.episode_lengths()
        episode_lengths = [int(lengths[i]) for i in self.episode_ids]
        self.index = make_window_index(
            episode_lengths,
            obs_horizon=obs_horizon,
            pred_horizon=pred_horizon,
            action_horizon=action_horizon,
        )
        if len(self.index) == 0:
            raise DataError(
                f"episodes (lengths {episode_lengths[:5]}...) are too short for any window"
            )
        self.obs_horizon, self.pred_horizon = obs_horizon, pred_horizon
        # global step number of each episode's first step, as in the concatenated in-memory data
        self.offsets = np.concatenate([[0], np.cumsum(episode_lengths)]).astype(np.int64)
        self.observation_keys = observation_keys
        self._episode = functools.lru_cache(maxsize=max(1, cache_episodes))(self._read_episode)

    @property
    def num_windows(self) -> int:
        return len(self.index)

    def _read_episode(self, position: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        episode_id = int(self.episode_ids[position])
        try:
            observation, action, _ = flatten_episodes(
                [self.dataset[episode_id]], self.observation_keys
            )
        except DataError as e:
            raise DataError(f"episode {episode_id}: {e}") from e
        return observation, action

    def read(self, rows: np.ndarray) -> Batch:
        """Window numbers (B,) -> numpy batch {"observation": {k: (B, obs_horizon, ...)},
        "action": (B, pred_horizon, A)}, in the order of `rows`."""
        rows = np.asarray(rows)
        if rows.ndim != 1 or (len(rows) and not 0 <= rows.min() <= rows.max() < len(self.index)):
            raise DataError(f"window rows must be (B,) in [0, {len(self.index)}), got {rows}")
        table = self.index[rows]
        steps = window_step_indices(table, self.pred_horizon, xp=np)
        positions = np.searchsorted(self.offsets, table[:, 1], side="right") - 1
        local = steps - self.offsets[positions][:, None]
        windows = []
        for position, window in zip(positions, local, strict=True):
            observation, action = self._episode(int(position))
            obs_steps = window[: self.obs_horizon]
            windows.append(
                {"observation": {k: v[obs_steps] for k, v in observation.items()},
                 "action": action[window]}
            )  # fmt: skip
        return jax.tree.map(lambda *xs: np.stack(xs), *windows)


class StreamedBatches:
    """`reader.read(rows[i])` for i = 0, 1, ..., len(rows) - 1, in that order, read by
    `num_threads` threads (default: one per two cores, at most 4) through grain
    (`grain.MapDataset` over `rows`) with up to
    `prefetch` batches ready before the consumer asks for them.

    `rows`: any sequence (len, random access) of (B,) window-number arrays, e.g. the rows a
    train step would draw at each of the coming steps.
    """

    def __init__(
        self, reader: WindowReader, rows: Sequence[np.ndarray], *,
        num_threads: int | None = None, prefetch: int = 8,
    ):  # fmt: skip
        if num_threads is None:  # one per two cores, at most 4: on 2 cores one thread was
            # faster than four (181 vs 138 batches/s, benchmarks/results/loader_cpu.md)
            num_threads = max(1, min(4, (os.cpu_count() or 2) // 2))
        if num_threads < 1 or prefetch < 1:
            raise ConfigError("num_threads and prefetch must be >= 1")
        self.reader, self.rows = reader, rows
        self.num_threads, self.prefetch = num_threads, prefetch

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Batch]:
        import grain

        batches = grain.MapDataset.source(self.rows).map(self.reader.read)
        options = grain.ReadOptions(
            num_threads=self.num_threads, prefetch_buffer_size=self.prefetch
        )
        return iter(batches.to_iter_dataset(options))


class StreamingLoader:
    """Windows read episode by episode from an array_record `EpisodeDataset`.

    Each epoch visits this host's episodes (index % process_count == process_index) in a
    seeded random order and mixes their windows through a shuffle buffer of
    `shuffle_buffer` windows; a background thread keeps `prefetch` batches ready.
    `num_epochs=None` repeats forever. Batches are numpy unless `to_device=True`.
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        *,
        batch_size: int,
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
        observation_keys: Sequence[str] | None = None,
        seed: int = 0,
        shuffle_buffer: int = 4096,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        prefetch: int = 4,
        process_index: int | None = None,
        process_count: int | None = None,
        to_device: bool = False,
    ):
        check_horizons(obs_horizon, pred_horizon, action_horizon)
        if batch_size < 1 or shuffle_buffer < 1 or prefetch < 1:
            raise ConfigError("batch_size, shuffle_buffer and prefetch must be >= 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.horizons = dict(
            obs_horizon=obs_horizon, pred_horizon=pred_horizon, action_horizon=action_horizon
        )
        self.observation_keys = observation_keys
        self.seed, self.shuffle_buffer, self.prefetch = seed, shuffle_buffer, prefetch
        self.num_epochs, self.drop_remainder, self.to_device = num_epochs, drop_remainder, to_device
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        self.process_index = process_index
        self.episode_ids = np.arange(process_index, len(dataset), process_count)
        if len(self.episode_ids) == 0:
            raise DataError(f"host {process_index} of {process_count} gets no episodes")

    @property
    def num_windows(self) -> int:
        """Windows per epoch on this host."""
        lengths = self.dataset.episode_lengths()
        return len(make_window_index([lengths[i] for i in self.episode_ids], **self.horizons))

    def episode_windows(self, episode_id: int) -> dict[str, Any]:
        """All windows of one episode: {"observation": {k: (W, obs_horizon, ...)},
        "action": (W, pred_horizon, A)}, in start order."""
        steps = self.dataset[int(episode_id)]["steps"]
        keys = (
            list(steps["observation"]) if self.observation_keys is None else self.observation_keys
        )
        index = make_window_index([len(steps["action"])], **self.horizons)
        window_steps = window_step_indices(index, self.horizons["pred_horizon"], xp=np)
        obs_steps = window_steps[:, : self.horizons["obs_horizon"]]
        try:
            observation = {k: np.asarray(steps["observation"][k])[obs_steps] for k in keys}
        except KeyError as e:
            raise DataError(f"episode {episode_id} has no observation {e}") from e
        return {"observation": observation, "action": np.asarray(steps["action"])[window_steps]}

    def _windows(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.process_index])
        buffer: list[dict[str, Any]] = []
        epoch = 0
        while self.num_epochs is None or epoch < self.num_epochs:
            for episode_id in rng.permutation(self.episode_ids):
                windows = self.episode_windows(episode_id)
                for i in range(len(windows["action"])):
                    buffer.append(jax.tree.map(lambda x, i=i: x[i], windows))
                    if len(buffer) >= self.shuffle_buffer:
                        yield _pop_random(buffer, rng)
            epoch += 1
        while buffer:
            yield _pop_random(buffer, rng)

    def _batches(self) -> Iterator[Batch]:
        pending: list[dict[str, Any]] = []
        for window in self._windows():
            pending.append(window)
            if len(pending) == self.batch_size:
                yield jax.tree.map(lambda *xs: np.stack(xs), *pending)
                pending = []
        if pending and not self.drop_remainder:
            yield jax.tree.map(lambda *xs: np.stack(xs), *pending)

    def __iter__(self) -> Iterator[Batch]:
        for batch in _prefetch(self._batches(), self.prefetch):
            yield jax.device_put(batch) if self.to_device else batch


def _pop_random(buffer: list, rng: np.random.Generator) -> Any:
    # Swap-remove: O(1) and the buffer order does not matter.
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


_DONE = object()


def _prefetch(iterator: Iterator[Any], size: int) -> Iterator[Any]:
    """Runs `iterator` in a daemon thread, `size` items ahead; re-raises its errors here."""
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((_DONE, e))

    thread = threading.Thread(target=produce, daemon=True, name="dpjax-prefetch")
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        # A daemon thread killed inside array_record's C++ reader at interpreter exit aborts
        # the process, so wait for it to notice `stop` (at most one episode's decode).
        thread.join(timeout=30)
