"""The in-memory and streaming loaders see the same windows; streaming shards per host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.data import (
    InMemoryLoader,
    StreamingLoader,
    gather_windows,
    load_dataset,
    write_dataset,
)
from dpjax.data.synthetic import synthetic_episodes
from dpjax.errors import DataError

HORIZONS = dict(obs_horizon=2, pred_horizon=5, action_horizon=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    episodes = synthetic_episodes(7, min_length=4, max_length=9, image_size=4)
    return load_dataset(write_dataset(episodes, tmp_path_factory.mktemp("ds") / "d"))


def _window_keys(batches) -> list[bytes]:
    """One key per window: its actions and observations, byte for byte."""
    keys = []
    for batch in batches:
        batch = jax.tree.map(np.asarray, batch)
        for b in range(len(batch["action"])):
            parts = [batch["action"][b]] + [
                batch["observation"][k][b] for k in sorted(batch["observation"])
            ]
            keys.append(b"|".join(p.tobytes() for p in parts))
    return keys


def test_streaming_yields_the_in_memory_window_set(dataset):
    memory = InMemoryLoader(dataset, batch_size=8, **HORIZONS)
    every = jax.jit(gather_windows)(memory.data, jnp.arange(memory.num_windows))
    expected = sorted(_window_keys([every]))

    streaming = StreamingLoader(
        dataset, batch_size=8, num_epochs=1, drop_remainder=False, shuffle_buffer=16, **HORIZONS
    )
    batches = list(streaming)
    assert streaming.num_windows == memory.num_windows == len(expected)
    assert sorted(_window_keys(batches)) == expected
    first = batches[0]
    assert first["action"].shape == (8, 5, 2)
    assert first["observation"]["image"].shape == (8, 2, 4, 4, 3)
    assert first["observation"]["image"].dtype == np.uint8
    # Shuffled across episodes, not episode after episode.
    assert len(set(first["action"][:, 0, 0].tolist())) > 1


def test_in_memory_loader_iterates_batches(dataset):
    loader = InMemoryLoader(dataset, batch_size=4, observation_keys=["state"], seed=3, **HORIZONS)
    batches = [b for _, b in zip(range(2), loader, strict=False)]
    assert set(batches[0]["observation"]) == {"state"}
    assert batches[0]["action"].shape == (4, 5, 2)
    assert not np.array_equal(batches[0]["action"], batches[1]["action"])


def test_streaming_shards_episodes_over_hosts(dataset):
    seen = []
    for host in range(3):
        loader = StreamingLoader(
            dataset,
            batch_size=1000,
            num_epochs=1,
            drop_remainder=False,
            process_index=host,
            process_count=3,
            **HORIZONS,
        )
        (batch,) = list(loader)
        episodes = set(batch["action"][:, 0, 0].astype(int).tolist())
        assert episodes == set(range(host, 7, 3))
        seen.append(len(batch["action"]))
    memory_windows = InMemoryLoader(dataset, batch_size=1, **HORIZONS).num_windows
    assert sum(seen) == memory_windows


def test_streaming_repeats_and_stops_cleanly(dataset):
    loader = StreamingLoader(dataset, batch_size=16, shuffle_buffer=8, to_device=True, **HORIZONS)
    it = iter(loader)
    batches = [next(it) for _ in range(10)]  # more than one epoch's worth
    assert isinstance(batches[0]["action"], jax.Array)
    assert batches[0]["observation"]["image"].dtype == jnp.uint8
    it.close()  # stops the prefetch thread


def test_streaming_passes_reader_errors_on(dataset):
    loader = StreamingLoader(dataset, batch_size=2, observation_keys=["depth"], **HORIZONS)
    with pytest.raises(Exception, match="depth"):
        next(iter(loader))


def test_window_reader_reads_what_gather_windows_gathers_from_a_subset_of_episodes(dataset):
    from dpjax.data import make_window_data
    from dpjax.data.loaders import StreamedBatches, WindowReader

    ids = [5, 0, 3, 6]  # a subset, out of order: the window numbering follows this order
    memory = make_window_data([dataset[i] for i in ids], **HORIZONS)
    reader = WindowReader(dataset, ids, cache_episodes=2, **HORIZONS)
    assert reader.num_windows == memory.num_windows
    rows = np.random.default_rng(0).integers(0, reader.num_windows, 40)
    expected = jax.tree.map(np.asarray, gather_windows(memory, jnp.asarray(rows)))
    got = reader.read(rows)
    assert got["observation"]["image"].dtype == np.uint8  # kept uint8 until on device
    jax.tree.map(np.testing.assert_array_equal, got, expected)

    # Batches in the order of their rows, whatever the thread that read each.
    sequence = [rows[i : i + 4] for i in range(0, 40, 4)]
    batches = list(StreamedBatches(reader, sequence, num_threads=3, prefetch=2))
    assert len(batches) == 10
    for batch, chunk in zip(batches, sequence, strict=True):
        np.testing.assert_array_equal(batch["action"], reader.read(chunk)["action"])
    with pytest.raises(DataError, match="window rows"):
        reader.read(np.array([reader.num_windows]))
