"""Window index vs a hand-worked example, jitted sampling, and the normalizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.data import (
    DatasetStats,
    Normalizer,
    gather_windows,
    make_window_data,
    make_window_index,
    sample_windows,
    window_step_indices,
)
from dpjax.data.stats import ArrayStats, StatsAccumulator
from dpjax.data.synthetic import synthetic_episodes
from dpjax.errors import ConfigError, DataError

HORIZONS = dict(obs_horizon=2, pred_horizon=4, action_horizon=2)


def test_window_index_matches_hand_worked_example():
    # Episode lengths 3 and 4; pad_before = 1, pad_after = 1 (see dpjax/data/windows.py).
    index = make_window_index([3, 4], **HORIZONS)
    assert index.tolist() == [[-1, 0, 2], [0, 0, 2], [2, 3, 6], [3, 3, 6], [4, 3, 6]]
    steps = window_step_indices(index, 4, xp=np)
    assert steps.tolist() == [
        [0, 0, 1, 2],
        [0, 1, 2, 2],
        [3, 3, 4, 5],
        [3, 4, 5, 6],
        [4, 5, 6, 6],
    ]
    np.testing.assert_array_equal(window_step_indices(jnp.asarray(index), 4), steps)


def test_window_index_diffusion_policy_defaults():
    # Diffusion Policy's PushT setting: To=2, Tp=16, Ta=8 -> starts -1 .. T-9.
    index = make_window_index([20], obs_horizon=2, pred_horizon=16, action_horizon=8)
    assert index[:, 0].tolist() == list(range(-1, 12))
    assert make_window_index([2], obs_horizon=2, pred_horizon=16, action_horizon=8).shape == (0, 3)
    with pytest.raises(ConfigError):
        make_window_index([5], obs_horizon=3, pred_horizon=2, action_horizon=1)


def test_gathered_windows_hold_the_right_steps():
    data = make_window_data(synthetic_episodes(2, min_length=3, max_length=4), **HORIZONS)
    batch = jax.tree.map(np.asarray, gather_windows(data, np.arange(data.num_windows)))
    # action[..., :2] = (episode, step): step ids repeat at the edges, never cross episodes.
    first_window = np.asarray(batch["action"][0, :, 1])
    assert first_window.tolist() == [0, 0, 1, 2]
    np.testing.assert_array_equal(
        batch["observation"]["state"][..., :2], batch["action"][:, :2, :2]
    )
    episode_ids = np.asarray(batch["action"][..., 0])
    assert np.all(episode_ids == episode_ids[:, :1])


def test_sample_windows_under_jit_gives_existing_windows():
    episodes = synthetic_episodes(5, image_size=4)
    data = jax.device_put(make_window_data(episodes, **HORIZONS))
    every = jax.jit(gather_windows)(data, jnp.arange(data.num_windows))
    known = {a.tobytes() for a in np.asarray(every["action"])}

    @jax.jit
    def step(data, key):
        batch = sample_windows(data, key, 64)
        return batch, jnp.mean(batch["action"])

    batch, _ = step(data, jax.random.key(0))
    assert batch["action"].shape == (64, 4, 2)
    assert batch["observation"]["state"].shape == (64, 2, 3)
    assert batch["observation"]["image"].shape == (64, 2, 4, 4, 3)
    assert batch["observation"]["image"].dtype == jnp.uint8
    assert all(a.tobytes() in known for a in np.asarray(batch["action"]))
    np.testing.assert_array_equal(
        batch["observation"]["state"][..., :2], batch["action"][:, :2, :2]
    )
    other, _ = step(data, jax.random.key(1))
    assert not np.array_equal(batch["action"], other["action"])


def test_too_short_episodes_are_an_error():
    with pytest.raises(DataError, match="too short"):
        make_window_data(
            synthetic_episodes(2, min_length=1, max_length=1),
            pred_horizon=16,
            obs_horizon=2,
            action_horizon=1,
        )


def _stats_of(episodes) -> DatasetStats:
    from dpjax.data.features import check_episode, step_spec

    spec = step_spec(episodes[0])
    accumulator = StatsAccumulator(spec)
    for i, e in enumerate(episodes):
        accumulator.add(check_episode(e, i, spec))
    return accumulator.finish()


def test_normalizer_range_and_round_trip():
    episodes = synthetic_episodes(4)
    for e in episodes:  # a dimension that never changes must not divide by zero
        e["steps"]["observation"]["state"][:, 2] = 7.0
    normalizer = Normalizer.from_stats(_stats_of(episodes))
    actions = np.concatenate([e["steps"]["action"] for e in episodes])
    states = np.concatenate([e["steps"]["observation"]["state"] for e in episodes])
    y = normalizer.normalize("action", actions)
    assert float(y.min()) == pytest.approx(-1) and float(y.max()) == pytest.approx(1)
    np.testing.assert_allclose(normalizer.unnormalize("action", y), actions, atol=1e-5)
    s = normalizer.normalize_observation({"state": states, "image": jnp.zeros(3, jnp.uint8)})
    assert np.all(np.isfinite(s["state"])) and np.all(np.abs(s["state"]) <= 1 + 1e-6)
    np.testing.assert_array_equal(s["state"][:, 2], 0.0)
    assert s["image"].dtype == jnp.uint8
    np.testing.assert_allclose(
        normalizer.unnormalize("observation/state", s["state"]), states, atol=1e-5
    )


def test_normalizer_is_a_jittable_serializable_pytree():
    stats = DatasetStats(
        arrays={"action": ArrayStats(*(np.array([x, 10.0]) for x in (-2.0, 2.0, 0.0, 1.0)))},
        episode_lengths=(3,),
        spec={"action": ((2,), "float32")},
    )
    normalizer = Normalizer.from_stats(stats)
    chunk = jnp.array([[[-2.0, 10.0], [2.0, 10.0]]])  # (B=1, H=2, A=2)
    out = jax.jit(lambda n, a: n.normalize("action", a))(normalizer, chunk)
    np.testing.assert_allclose(out, [[[-1.0, 0.0], [1.0, 0.0]]])
    restored = Normalizer.from_dict(normalizer.to_dict())
    np.testing.assert_array_equal(restored.unnormalize("action", out), chunk)
    with pytest.raises(DataError):
        Normalizer.from_dict({"action": {"center": [0.0]}})
    with pytest.raises(DataError, match="no statistics"):
        Normalizer.from_stats(stats, keys=["observation/state"])
