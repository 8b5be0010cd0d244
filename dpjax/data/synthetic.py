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


def three_mode_episodes(
    num_episodes: int,
    *,
    seed: int = 0,
    length: int = 8,
    radius: float = 2.0,
    action_noise: float = 0.05,
    state_dim: int = 3,
) -> list[dict[str, Any]]:
    """The seed's cup example as a policy-learning problem: every episode holds one 2-D action
    (north / east / south of the origin at `radius`, chosen with p = 0.45 / 0.40 / 0.15) for
    all its steps, whatever the (uninformative) observation. A policy that averages the modes
    predicts a point near (0.8, 0.6) * radius / 2, far from all three.
    metadata["mode"] is the chosen index."""
    from dpjax.envs.base import make_episode
    from dpjax.oracles import CUP_MODE_MEANS, CUP_MODE_WEIGHTS

    rng = np.random.default_rng(seed)
    means = np.asarray(CUP_MODE_MEANS) * radius
    episodes = []
    for e in range(num_episodes):
        mode = int(rng.choice(3, p=CUP_MODE_WEIGHTS))
        observations = [
            {"state": rng.normal(0, 0.1, state_dim).astype(np.float32)} for _ in range(length)
        ]
        actions = [means[mode] + rng.normal(0, action_noise, 2) for _ in range(length)]
        metadata = {"task": "three_mode", "seed": e, "expert": "synthetic", "success": True,
                    "mode": mode}  # fmt: skip
        episodes.append(
            make_episode(observations, actions, [0.0] * length, terminated=True, metadata=metadata)
        )
    return episodes
