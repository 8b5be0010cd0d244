"""Metrics of closed-loop rollouts: success with a Wilson interval, mode frequencies against
the expert's, smoothness (jerk, chunk-boundary jumps), chunk latency, PushT's max reward."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound at 0% and 100%)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z**2 / trials
    center = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    # In exact arithmetic the bounds reach 0 and 1 at 0% and 100%; rounding can leave
    # 1 - 1e-16 there, outside the estimate itself.
    return (min(p, max(0.0, center - half)), max(p, min(1.0, center + half)))


def mean_squared_jerk(actions: np.ndarray, lengths: np.ndarray) -> float:
    """Mean over episodes and valid steps of |third difference of actions|^2.

    actions (N, T, A), lengths (N,) executed steps per episode.
    """
    values = []
    for a, n in zip(actions, lengths, strict=True):
        if n >= 4:
            jerk = np.diff(a[:n], n=3, axis=0)
            values.append(float(np.mean(np.sum(jerk**2, axis=-1))))
    return float(np.mean(values)) if values else float("nan")


def chunk_boundary_jumps(
    actions: np.ndarray, lengths: np.ndarray, action_horizon: int, first_switch: int | None = None
):
    """(mean |a_t - a_{t-1}| where t starts a new chunk, mean |a_t - a_{t-1}| inside chunks).
    New chunks take over at first_switch, first_switch + action_horizon, ... (default
    first_switch = action_horizon; with an inference delay d, action_horizon + d)."""
    first = action_horizon if first_switch is None else first_switch
    boundary, inside = [], []
    for a, n in zip(actions, lengths, strict=True):
        steps = np.linalg.norm(np.diff(a[:n], axis=0), axis=-1)  # step t -> t+1 at index t
        for t in range(1, n):
            switch = t >= first and (t - first) % action_horizon == 0
            (boundary if switch else inside).append(steps[t - 1])
    mean = lambda x: float(np.mean(x)) if x else float("nan")
    return mean(boundary), mean(inside)


def measure_chunk_latency(
    policy, params, repeats: int = 20, batch_size: int = 1, guided: bool = False, **options
) -> dict[str, float]:
    """Median and p95 wall time of one observation -> action chunk call (batch_size
    observations at once; the default 1 is a robot's control loop). `guided`: the planner
    with real-time chunking's inpainting guidance (a vector-Jacobian product per step)."""
    observation = policy.example_observation(batch_size)
    key = jax.random.key(0)
    if guided:
        plan = policy.plan_fn(**options)
        guide = (
            jnp.zeros((batch_size, policy.plan_length, policy.config.action_dim)),
            jnp.ones((policy.plan_length,)),
        )
        fn = lambda params, observation, key: plan(params, observation, key, guide)
    else:
        fn = policy.inference_fn(**options)
    jax.block_until_ready(fn(params, observation, key))  # compile
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, observation, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "chunk_latency_ms": median * 1e3,
        "chunk_latency_p95_ms": float(np.percentile(times, 95)) * 1e3,
        "max_control_hz": policy.config.action_horizon / median,
    }


def summarize_multimodal(
    rollouts: dict[str, np.ndarray],
    action_horizon: int,
    expert_mode_frequencies=None,
    first_switch: int | None = None,
) -> dict[str, Any]:
    """Success, collisions, modes, smoothness of multimodal rollouts. `expert_mode_frequencies`
    ({mode: fraction}) is what the policy's modes are compared with: measure it from the
    demonstrations (`mode_frequencies` of their episode modes); default: the task's
    configured probabilities. "mode_frequency_error" is the largest |policy - expert|.
    "per_episode" keeps each episode's success, mode (-1: none), collision and length."""
    from dpjax.envs.multimodal import MODE_PROBS, MODES

    n = len(rollouts["success"])
    successes = int(np.sum(rollouts["success"]))
    modes = np.asarray(rollouts["mode"])
    expert = dict(expert_mode_frequencies or zip(MODES, MODE_PROBS, strict=True))
    boundary, inside = chunk_boundary_jumps(
        rollouts["actions"], rollouts["length"], action_horizon, first_switch
    )
    goals = np.asarray(rollouts.get("goal", np.full(n, -1)))
    commanded = goals >= 0
    goal_side = (
        {"goal_side_rate": float(np.mean(modes[commanded] == goals[commanded]))}
        if commanded.any()
        else {}
    )
    return {
        **goal_side,
        "episodes": n,
        "success_rate": successes / n,
        "success_ci95": wilson_interval(successes, n),
        "collision_rate": float(np.mean(rollouts["collision"])),
        **mode_metrics(modes, rollouts["success"], MODES, expert),
        "mean_squared_jerk": mean_squared_jerk(rollouts["actions"], rollouts["length"]),
        "chunk_jump": boundary,
        "within_chunk_step": inside,
        "mean_episode_length": float(np.mean(rollouts["length"])),
        "per_episode": {
            "success": [bool(s) for s in rollouts["success"]],
            "mode": [int(m) for m in modes],
            "collision": [bool(c) for c in rollouts["collision"]],
            "length": [int(x) for x in rollouts["length"]],
            **({"goal": [int(g) for g in goals]} if commanded.any() else {}),
        },
    }


def mode_metrics(modes, success, names, expert=None) -> dict[str, Any]:
    """Mode frequencies of episodes with integer `modes` (N,) (indices of `names`, -1: none)
    and bool `success` (N,): over all episodes, over the successful ones, the fraction with no
    mode, and where `expert` ({name: fraction}) is given, it and "mode_frequency_error", the
    largest |policy - expert|."""
    from dpjax.envs.demonstrators import mode_frequencies

    modes = np.asarray(modes, np.int64)
    policy = mode_frequencies(modes, names)
    out = {
        "mode_frequencies": policy,
        "success_mode_frequencies": mode_frequencies(modes[np.asarray(success, bool)], names),
        "no_mode_fraction": float(np.mean(modes < 0)),
    }
    if expert:
        out["expert_mode_frequencies"] = dict(expert)
        out["mode_frequency_error"] = max(abs(policy[m] - expert.get(m, 0.0)) for m in names)
    return out


def demonstration_mode_frequencies(episodes, names=None) -> dict[str, float]:
    """The expert's mode frequencies measured on demonstrations (episodes of a multimodal
    dataset, each with `episode_metadata["mode"]`, an index of `names`; default: the cup's
    modes): what a policy's modes should match."""
    from dpjax.envs.demonstrators import mode_frequencies
    from dpjax.envs.multimodal import MODES

    modes = [int(e["episode_metadata"].get("mode", -1)) for e in episodes]
    return mode_frequencies(modes, MODES if names is None else names)


def max_reward(max_coverage, success_coverage: float = 0.95) -> np.ndarray:
    """Diffusion Policy's PushT score of episodes: clip(max coverage / 0.95, 0, 1) each.

    `mean_max_reward` is its mean over episodes (the paper's metric; gym-pusht's own reward
    is the same function of coverage). A NaN coverage (no step taken) scores 0.
    """
    coverage = np.nan_to_num(np.asarray(max_coverage, np.float64), nan=0.0)
    return np.clip(coverage / success_coverage, 0.0, 1.0)


def summarize_gym(
    rollouts: dict[str, Any],
    action_horizon: int,
    first_switch: int | None = None,
    modes: tuple[str, ...] = (),
    expert_mode_frequencies=None,
) -> dict[str, Any]:
    """Success (95% CI), smoothness, lengths and, where the env reports coverage (PushT),
    mean max / final coverage and `mean_max_reward`; where the task has `modes` (names), the
    episodes' mode frequencies (`mode_metrics`, against `expert_mode_frequencies` where given).
    "per_episode" keeps each episode's seed, success, length (and coverage and max reward, and
    mode), so results can be re-aggregated."""
    n = len(rollouts["success"])
    successes = int(np.sum(rollouts["success"]))
    horizon = max(len(a) for a in rollouts["actions"])
    dim = rollouts["actions"][0].shape[-1]
    padded = np.zeros((n, horizon, dim))
    for i, a in enumerate(rollouts["actions"]):
        padded[i, : len(a)] = a
    lengths = np.asarray(rollouts["length"])
    boundary, inside = chunk_boundary_jumps(padded, lengths, action_horizon, first_switch)
    metrics = {
        "episodes": n,
        "success_rate": successes / n,
        "success_ci95": wilson_interval(successes, n),
        "mean_squared_jerk": mean_squared_jerk(padded, lengths),
        "chunk_jump": boundary,
        "within_chunk_step": inside,
        "mean_episode_length": float(np.mean(lengths)),
    }
    per_episode = {
        "seed": [int(s) for s in rollouts.get("seed", range(n))],
        "success": [bool(s) for s in rollouts["success"]],
        "length": [int(x) for x in lengths],
    }
    if not all(math.isnan(v) for v in rollouts["max_coverage"]):
        from dpjax.envs.pusht import SUCCESS_COVERAGE

        rewards = max_reward(rollouts["max_coverage"], SUCCESS_COVERAGE)
        metrics["mean_max_reward"] = float(np.mean(rewards))
        metrics["max_coverage"] = float(np.nanmean(rollouts["max_coverage"]))
        metrics["final_coverage"] = float(np.nanmean(rollouts["final_coverage"]))
        per_episode["max_coverage"] = [float(c) for c in rollouts["max_coverage"]]
        per_episode["max_reward"] = [float(r) for r in rewards]
    if modes:
        episode_modes = rollouts.get("mode", [-1] * n)
        metrics.update(
            mode_metrics(episode_modes, rollouts["success"], modes, expert_mode_frequencies)
        )
        per_episode["mode"] = [int(m) for m in episode_modes]
    metrics["per_episode"] = per_episode
    return metrics
