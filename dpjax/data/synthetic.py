"""Small synthetic episodes for tests, examples and I/O benchmarks.

Step t of episode e has action[:2] == state[:2] == (e, t), so any window can be checked
against the steps it claims to come from.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def synthetic_episodes(
    num_episodes: int,
    *,
    seed: int = 0,
    min_length: int = 5,
    max_length: int = 12,
    state_dim: int = 3,
    action_dim: int = 2,
    image_size: int | None = None,
    language: bool = False,
) -> list[dict[str, Any]]:
    """`num_episodes` episodes in the `dpjax.envs.base.Episode` layout, lengths drawn from
    [min_length, max_length]; observation "state" (T, state_dim) float32, optionally
    "image" (T, image_size, image_size, 3) uint8, "language_embedding" (T, 4) and a
    "language_instruction"."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(num_episodes):
        num_steps = int(rng.integers(min_length, max_length + 1))
        ids = np.stack([np.full(num_steps, e), np.arange(num_steps)], axis=1).astype(np.float32)
        state = rng.normal(size=(num_steps, state_dim)).astype(np.float32)
        action = rng.uniform(-3, 3, size=(num_steps, action_dim)).astype(np.float32)
        state[:, :2], action[:, :2] = ids[:, : min(2, state_dim)], ids[:, : min(2, action_dim)]
        observation = {"state": state}
        if image_size:
            shape = (num_steps, image_size, image_size, 3)
            observation["image"] = rng.integers(0, 256, shape, dtype=np.uint8)
        steps = {
            "observation": observation,
            "action": action,
            "reward": (np.arange(num_steps) == num_steps - 1).astype(np.float32),
            "discount": np.ones(num_steps, np.float32),
            "is_first": np.arange(num_steps) == 0,
            "is_last": np.arange(num_steps) == num_steps - 1,
            "is_terminal": np.arange(num_steps) == num_steps - 1,
        }
        metadata = {"task": "synthetic", "seed": e, "expert": "random", "success": True, "mode": -1}
        if language:
            steps["language_embedding"] = np.tile(np.float32([e, 1, 2, 3]), (num_steps, 1))
            metadata["language_instruction"] = f"push block {e} to the goal"
        episodes.append({"steps": steps, "episode_metadata": metadata})
    return episodes
