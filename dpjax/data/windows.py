"""Training windows as Diffusion Policy samples them, over episodes concatenated end to end.

A window is `pred_horizon` consecutive steps of one episode; its first `obs_horizon` steps
give the observations, all `pred_horizon` give the actions. Windows may start before the
first step and end after the last: those steps repeat the episode's first / last step
(Diffusion Policy's `create_sample_indices` / `sample_sequence` convention):

    pad_before = obs_horizon - 1,  pad_after = action_horizon - 1
    start s ranges over -pad_before .. T - pred_horizon + pad_after   (episode of T steps)
    window steps = clip(s + j, 0, T - 1) for j = 0 .. pred_horizon - 1

Hand-worked example: episode lengths (3, 4), obs_horizon=2, pred_horizon=4, action_horizon=2
-> 5 windows, as global step indices (episode 1 starts at step 3):

    episode 0: s=-1 -> [0, 0, 1, 2]   s=0 -> [0, 1, 2, 2]
    episode 1: s=-1 -> [3, 3, 4, 5]   s=0 -> [3, 4, 5, 6]   s=1 -> [4, 5, 6, 6]

and the observation steps are the first two of each. The index table stores one row
(start, first, last) per window, in global step indices: (-1, 0, 2), (0, 0, 2), (2, 3, 6), ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dpjax.errors import ConfigError, DataError

# {"observation": {k: (B, obs_horizon, ...)}, "action": (B, pred_horizon, A)}
# Step-level (not observation) keys a policy may condition on.
CONDITIONING_STEP_KEYS: tuple[str, ...] = ("language_embedding",)
Batch = dict[str, Any]


def check_horizons(obs_horizon: int, pred_horizon: int, action_horizon: int) -> None:
    if min(obs_horizon, pred_horizon, action_horizon) < 1:
        raise ConfigError("obs_horizon, pred_horizon and action_horizon must all be >= 1")
    if pred_horizon < obs_horizon or pred_horizon < action_horizon:
        raise ConfigError(
            f"pred_horizon ({pred_horizon}) must cover obs_horizon ({obs_horizon}) and "
            f"action_horizon ({action_horizon})"
        )


def make_window_index(
    episode_lengths: Sequence[int],
    *,
    obs_horizon: int,
    pred_horizon: int,
    action_horizon: int,
) -> np.ndarray:
    """Episode lengths (E,) -> index table (W, 3) int32 of rows (start, first, last).

    `start` is the global step index of the window's first step (may be < first), `first`
    and `last` the global indices of its episode's first and last step. See module doc.
    """
    check_horizons(obs_horizon, pred_horizon, action_horizon)
    pad_before, pad_after = obs_horizon - 1, action_horizon - 1
    rows, offset = [], 0
    for length in episode_lengths:
        starts = np.arange(-pad_before, length - pred_horizon + pad_after + 1) + offset
        ends = np.broadcast_to([offset, offset + length - 1], (len(starts), 2))
        rows.append(np.column_stack([starts, ends]))
        offset += int(length)
    index = np.concatenate(rows) if rows else np.zeros((0, 3))
    return index.astype(np.int32).reshape(-1, 3)


def window_step_indices(rows, length: int, xp=jnp):
    """Index rows (B, 3) -> global step indices (B, length), edge steps repeated.

    `xp` is `jnp` (traceable, for use under jit) or `np` (host-side loaders).
    """
    steps = rows[:, :1] + xp.arange(length)[None, :]
    return xp.clip(steps, rows[:, 1:2], rows[:, 2:3])


@struct.dataclass
class WindowData:
    """All steps of a dataset as flat arrays plus the index table of its windows.

    observation: {name: (N, ...)} (images stay uint8), action: (N, A), index: (W, 3) int32.
    The horizons are static (compile-time) fields.
    """

    observation: dict[str, jnp.ndarray]
    action: jnp.ndarray
    index: jnp.ndarray
    obs_horizon: int = struct.field(pytree_node=False)
    pred_horizon: int = struct.field(pytree_node=False)

    @property
    def num_windows(self) -> int:
        return int(self.index.shape[0])


def gather_windows(data: WindowData, rows: jnp.ndarray) -> Batch:
    """Window numbers (B,) -> batch {"observation": {k: (B, obs_horizon, ...)},
    "action": (B, pred_horizon, A)}. Pure; usable under jit."""
    steps = window_step_indices(data.index[rows], data.pred_horizon)
    obs_steps = steps[:, : data.obs_horizon]
    return {
        "observation": {k: v[obs_steps] for k, v in data.observation.items()},
        "action": data.action[steps],
    }


def draw_window_rows(key: jax.Array, batch_size: int, num_windows: int) -> jax.Array:
    """(batch_size,) int32 window numbers drawn uniformly (with replacement) in [0,
    num_windows): the windows `sample_windows` gathers for `key`, for a loader that reads
    them from disk instead."""
    return jax.random.randint(key, (batch_size,), 0, num_windows)


def sample_windows(data: WindowData, key: jax.Array, batch_size: int) -> Batch:
    """`batch_size` windows drawn uniformly (with replacement). Pure: call it inside a jitted
    train step (`batch_size` static) so sampling costs no host work per step."""
    return gather_windows(data, draw_window_rows(key, batch_size, data.index.shape[0]))


def flatten_episodes(
    episodes: Iterable[Mapping[str, Any]], observation_keys: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, list[int]]:
    """Episodes -> (observation {k: (N, ...)}, action (N, A), lengths (E,)), concatenated in
    order. `observation_keys` default: every observation key of the first episode."""
    observations: dict[str, list[np.ndarray]] = {}
    actions, lengths = [], []
    for index, episode in enumerate(episodes):
        steps = episode["steps"]
        keys = list(steps["observation"]) if observation_keys is None else observation_keys
        observation_keys = keys
        # A step-level conditioning key (RLDS keeps "language_embedding" beside, not inside,
        # the observation) is read from the step, so text can condition a policy like a state.
        source = {**{k: v for k, v in steps.items() if k in CONDITIONING_STEP_KEYS},
                  **steps["observation"]}  # fmt: skip
        missing = [k for k in keys if k not in source]
        if missing:
            raise DataError(f"episode {index} has no observation {missing}")
        for k in keys:
            observations.setdefault(k, []).append(np.asarray(source[k]))
        actions.append(np.asarray(steps["action"]))
        lengths.append(len(actions[-1]))
    if not lengths:
        raise DataError("no episodes")
    return {k: np.concatenate(v) for k, v in observations.items()}, np.concatenate(actions), lengths


def make_window_data(
    episodes: Iterable[Mapping[str, Any]],
    *,
    obs_horizon: int,
    pred_horizon: int,
    action_horizon: int,
    observation_keys: Sequence[str] | None = None,
) -> WindowData:
    """Host-side (numpy) `WindowData`; `jax.device_put` it to move it to a device."""
    observation, action, lengths = flatten_episodes(episodes, observation_keys)
    index = make_window_index(
        lengths, obs_horizon=obs_horizon, pred_horizon=pred_horizon, action_horizon=action_horizon
    )
    if len(index) == 0:
        raise DataError(f"episodes (lengths {lengths[:5]}...) are too short for any window")
    return WindowData(observation, action, index, obs_horizon, pred_horizon)
