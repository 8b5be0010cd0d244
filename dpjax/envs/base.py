"""The task interface every environment family implements, and the episode layout.

An `Episode` is the in-memory form of one RLDS episode (numpy arrays, leading axis = time T):

    {
      "steps": {
        "observation": {name: array (T, ...)},  # "state" (T, D) f32, "image" (T,H,W,3) u8
        "action": (T, A) float32,
        "reward": (T,) float32,
        "discount": (T,) float32,
        "is_first": (T,) bool, "is_last": (T,) bool, "is_terminal": (T,) bool,
        # optional: "language_embedding": (T, E) float32
      },
      "episode_metadata": {"task": str, "seed": int, "expert": str, "success": bool,
                           "mode": int (-1 where the task has no modes),
                           # optional: "language_instruction": str, "strategy": str and
                           # "quality": str (dpjax.envs.demonstrators)}
    }

Step t holds the observation seen at t and the action taken after seeing it (RLDS convention).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from dpjax.data.features import ArraySpec

Observation = dict[str, np.ndarray]
Episode = dict[str, Any]


class Env(Protocol):
    """gymnasium-style environment; `info` of `step` carries a bool `"success"`."""

    def reset(self, *, seed: int | None = None) -> tuple[Observation, dict]: ...

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, bool, dict]: ...

    def close(self) -> None: ...


Expert = Callable[[Observation], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Task:
    """A task family member: how to build its env and its scripted expert.

    make_env(seed) -> Env; make_expert(env, seed) -> Expert (may keep internal state; one
    expert per episode). `modes` names the discrete solution modes where the task has them;
    an expert reports the mode it chose in `info["mode"]`.
    """

    name: str
    observation_spec: Mapping[str, ArraySpec]
    action_dim: int
    max_episode_steps: int
    make_env: Callable[[int], Env]
    make_expert: Callable[[Env, int], Expert]
    modes: tuple[str, ...] = ()
    expert_name: str = "scripted"
    # Steps per second the task is meant to be controlled at (for latency budgets).
    control_hz: float = 10.0
    # Optional fast batched path: collect_episodes(num_episodes, seed, action_noise=0.0) ->
    # list[Episode], the same episodes as rollout_expert(task, seed + i) would give.
    collect_episodes: Callable[..., list[Episode]] | None = None


def rollout_expert(
    task: Task, seed: int, action_noise: float = 0.0, execution_noise: float = 0.0
) -> Episode:
    """Runs the scripted expert for one episode and returns it in the `Episode` layout.

    `action_noise` adds N(0, action_noise^2) to the executed action and the recorded one, for
    demo diversity. `execution_noise` adds N(0, execution_noise^2) to the executed action only:
    the recorded label stays the expert's own action, so the demonstrations visit states off
    the expert's path and say how it gets back (DART, Laskey et al. 2017). The episode ends at
    success, termination or `max_episode_steps`.
    """
    env = task.make_env(seed)
    rng = np.random.default_rng(seed)
    try:
        obs, info = env.reset(seed=seed)
        expert = task.make_expert(env, seed)
        observations: list[Observation] = []
        actions, rewards = [], []
        success, terminated, mode = False, False, int(info.get("mode", -1))
        for _ in range(task.max_episode_steps):
            action = np.asarray(expert(obs), dtype=np.float32)
            if action_noise > 0:
                action = action + rng.normal(0.0, action_noise, action.shape).astype(np.float32)
            executed = action
            if execution_noise > 0:
                noise = rng.normal(0.0, execution_noise, action.shape).astype(np.float32)
                executed = action + noise
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(executed)
            rewards.append(float(reward))
            mode = int(info.get("mode", mode))
            success = success or bool(info.get("success", False))
            if success or terminated or truncated:
                break
    finally:
        env.close()
    # The demonstrator's strategy and quality, where the expert names them (`demonstrators`).
    named = {k: str(getattr(expert, k)) for k in ("strategy", "quality") if hasattr(expert, k)}
    return make_episode(
        observations,
        actions,
        rewards,
        terminated=terminated,
        metadata={
            "task": task.name,
            "seed": seed,
            "expert": task.expert_name,
            "success": success,
            "mode": mode,
            **named,
        },
    )


def make_episode(
    observations: list[Observation],
    actions: list[np.ndarray],
    rewards: list[float],
    *,
    terminated: bool,
    metadata: dict,
) -> Episode:
    """Stacks per-step lists into the `Episode` layout."""
    num_steps = len(actions)
    is_first = np.zeros(num_steps, bool)
    is_first[0] = True
    is_last = np.zeros(num_steps, bool)
    is_last[-1] = True
    return {
        "steps": {
            "observation": {k: np.stack([o[k] for o in observations]) for k in observations[0]},
            "action": np.stack(actions).astype(np.float32),
            "reward": np.asarray(rewards, np.float32),
            "discount": np.ones(num_steps, np.float32),
            "is_first": is_first,
            "is_last": is_last,
            "is_terminal": is_last & bool(terminated),
        },
        "episode_metadata": dict(metadata),
    }


def iter_expert_episodes(
    task: Task,
    num_episodes: int,
    seed: int = 0,
    action_noise: float = 0.0,
    execution_noise: float = 0.0,
) -> Iterator[Episode]:
    """Episodes with seeds seed, seed+1, ...; callers filter on metadata['success']."""
    for i in range(num_episodes):
        yield rollout_expert(task, seed + i, action_noise, execution_noise)
