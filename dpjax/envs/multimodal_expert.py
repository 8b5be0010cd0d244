"""The scripted expert of the "multimodal" task, and batched expert collection in pure JAX.

The expert draws a side (north / east / south with probabilities 0.45 / 0.40 / 0.15), then
plans the whole episode at reset: a route around the wall through a pre-grasp waypoint on that
side (waypoints jittered by up to WAYPOINT_JITTER for diversity within a mode), corner-cut
into a smooth curve and timed by a smooth speed profile (a short quintic ramp-up, a
cruise, a long ramp-down). Its action at step t is the plan's
point t+1 (position control). `expert_rollouts` runs hundreds of episodes as one program.

Mixed-quality data (`MultimodalConfig.quality_mix`): each episode's demonstrator is drawn from
QUALITIES with those probabilities (a key of its own, so the mode, start and waypoints of an
episode stay those of the proficient expert): "slow" follows the same route at SLOW_SPEED of
the speed, "hesitant" stops for HESITATION_STEPS at a uniformly drawn point of the first 60%
of its route's duration, "noisy" adds N(0, NOISY_STD^2) to every action (recorded as taken).
Episode metadata["quality"] names it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.envs.base import Episode, make_episode
from dpjax.envs.demonstrators import QUALITIES
from dpjax.envs.multimodal import (
    DEFAULT_CONFIG,
    EXPERT_ACCEL_STEPS,
    EXPERT_DECEL,
    EXPERT_MEAN_SPEED,
    FAST_COMPILE,
    GRASP_DISTANCE,
    HESITATION_STEPS,
    NOISY_STD,
    SIDES,
    SLOW_SPEED,
    WAYPOINT_JITTER,
    MultimodalConfig,
    MultimodalEnv,
    MultimodalState,
    episode_keys,
    mode_from_uniform,
    mode_of_offset,
    observe,
    observe_goal,
    reset,
    step,
)


def _route(start: jax.Array, mode: jax.Array, jitter: jax.Array) -> jax.Array:
    """(5, 2) cup-frame waypoints of `mode`'s route from cup-frame `start`; jitter (3, 2)."""
    a_north = jnp.array([-0.28, 0.45]) + jitter[0]
    a_south = jnp.array([-0.28, -0.45]) + jitter[0]
    b_east = jnp.array([0.38, -0.38]) + jitter[1]
    pre = 0.35 * SIDES + jitter[2] * jnp.abs(SIDES[:, ::-1])  # jitter only sideways
    grasp = GRASP_DISTANCE * SIDES
    routes = jnp.stack(
        [
            jnp.stack([start, start, a_north, pre[0], grasp[0]]),  # start twice: equal shapes
            jnp.stack([start, a_south, b_east, pre[1], grasp[1]]),
            jnp.stack([start, start, a_south, pre[2], grasp[2]]),
        ]
    )
    return routes[mode]


def _cut_corners(points: jax.Array, iterations: int = 3) -> jax.Array:
    """Chaikin corner cutting (K, 2) -> (K * 2**iterations, 2); keeps both end points."""
    for _ in range(iterations):
        a, b = points[:-1], points[1:]
        cut = jnp.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = jnp.concatenate([points[:1], cut, points[-1:]])
    return points


def expert_plan(
    key: jax.Array, state: MultimodalState, mode: jax.Array, num_steps: int
) -> jax.Array:
    """(num_steps + 1, 2) world positions: plan[t] is where the expert wants to be at step t.

    A smoothed route timed by `path_progress`, whose peak speed stays under MAX_STEP so
    position control tracks it exactly; after arrival the plan holds the grasp point. `key`
    jitters the waypoints; `mode` is given (see `sample_expert` for the expert's choice).
    """
    unit = jax.random.uniform(key, (6,))
    return _plan_from_jitter(unit, state, mode, num_steps)


def sample_expert(
    key: jax.Array, state: MultimodalState, config: MultimodalConfig = DEFAULT_CONFIG
) -> tuple[jax.Array, jax.Array]:
    """The expert's choice for an episode: (mode () int32 ~ mode_probs, plan (T+1, 2))."""
    mode, _, plan = sample_demonstrator(key, state, config)
    return mode, plan


def sample_demonstrator(
    key: jax.Array, state: MultimodalState, config: MultimodalConfig = DEFAULT_CONFIG
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mode () int32 ~ mode_probs, quality () int32 ~ quality_mix (an index of QUALITIES),
    plan (T+1, 2)): the demonstrator of an episode."""
    # One draw for mode and jitter: each random call costs a threefry copy in the program.
    unit = jax.random.uniform(key, (7,))
    mode = jnp.where(state.goal >= 0, state.goal, mode_from_uniform(unit[0], config.mode_probs))
    if not config.mixed_quality:  # the expert alone, its draws unchanged
        quality = jnp.int32(0)
        return mode, quality, _plan_from_jitter(unit[1:], state, mode, config.max_episode_steps)
    extra = jax.random.uniform(jax.random.fold_in(key, 1), (2,))
    quality = mode_from_uniform(extra[0], config.quality_mix)
    speed = jnp.where(quality == QUALITIES.index("slow"), SLOW_SPEED, 1.0)
    pause = jnp.where(quality == QUALITIES.index("hesitant"), HESITATION_STEPS, 0)
    plan = _plan_from_jitter(unit[1:], state, mode, config.max_episode_steps, speed, pause,
                             extra[1])  # fmt: skip
    return mode, quality, plan


def action_noise_of(
    key: jax.Array, quality: jax.Array, config: MultimodalConfig, action_noise: float = 0.0
) -> jax.Array:
    """(T, 2) noise added to an episode's actions: `action_noise` (collection's option) plus
    NOISY_STD for a "noisy" demonstrator."""
    std = action_noise + jnp.where(quality == QUALITIES.index("noisy"), NOISY_STD, 0.0)
    return std * jax.random.normal(key, (config.max_episode_steps, 2))


def _plan_from_jitter(
    unit: jax.Array, state: MultimodalState, mode: jax.Array, num_steps: int,
    speed: jax.Array | float = 1.0, pause_steps: jax.Array | int = 0,
    pause_at: jax.Array | float = 0.0,
) -> jax.Array:  # fmt: skip
    """`expert_plan` from (6,) uniform [0, 1) numbers for the waypoint jitter; `speed` scales
    the speed, and the plan holds still for `pause_steps` from `pause_at` (a fraction in [0,
    1) of the first 60% of the route's duration)."""
    jitter = (2.0 * unit.reshape(3, 2) - 1.0) * WAYPOINT_JITTER
    path = _cut_corners(_route(state.agent - state.cup, mode, jitter))
    lengths = jnp.linalg.norm(path[1:] - path[:-1], axis=-1) + 1e-6
    arclength = jnp.concatenate([jnp.zeros(1), jnp.cumsum(lengths)])
    total = arclength[-1]
    duration = jnp.maximum(total / (EXPERT_MEAN_SPEED * speed), 1.0)
    t = jnp.arange(num_steps + 1)
    pause_start = jnp.floor(0.6 * pause_at * duration)
    t = t - jnp.clip(t - pause_start, 0, pause_steps)  # the clock stops while it hesitates
    tau = jnp.clip(t / duration, 0.0, 1.0)
    s = total * path_progress(tau, jnp.minimum(EXPERT_ACCEL_STEPS / duration, 0.5))
    plan = jnp.stack([jnp.interp(s, arclength, path[:, i]) for i in range(2)], axis=-1)
    return plan + state.cup


def _smootherstep_integral(x: jax.Array) -> jax.Array:
    """Integral from 0 to x of the quintic ramp 6u^5 - 15u^4 + 10u^3 (x in [0, 1])."""
    return x**6 - 3.0 * x**5 + 2.5 * x**4


def path_progress(tau: jax.Array, accel: jax.Array, decel: float = EXPERT_DECEL) -> jax.Array:
    """Fraction of the path covered at normalized time tau in [0, 1].

    The speed ramps up over the first `accel` of the time and down over the last `decel`
    (quintic ramps: speed and acceleration continuous), cruising in between. A short
    ramp-up is what a demonstrator who has chosen a side does: by the end of the first
    executed chunk the motion shows the side (a global minimum-jerk profile barely moves for
    the first fifth of the episode, leaving the mode unobservable after one chunk).
    """
    up = accel * _smootherstep_integral(jnp.clip(tau / accel, 0.0, 1.0))
    cruise = jnp.clip(tau - accel, 0.0, 1.0 - accel - decel)
    left = jnp.clip((1.0 - tau) / decel, 0.0, 1.0)
    down = decel * (0.5 - _smootherstep_integral(left))
    return (up + cruise + down) / (1.0 - 0.5 * (accel + decel))


def expert_action(state: MultimodalState, plan: jax.Array) -> jax.Array:
    """(2,) target position: the plan's next point."""
    return plan[jnp.minimum(state.t + 1, plan.shape[0] - 1)]


@functools.partial(jax.jit, static_argnames=("config",), compiler_options=FAST_COMPILE)
def expert_rollouts(
    seeds: jax.Array, config: MultimodalConfig = DEFAULT_CONFIG, action_noise: float = 0.0
) -> dict[str, jax.Array]:
    """Expert episodes for integer `seeds` (N,) as one compiled program.

    Returns {"observation" (N, T, 6), "action" (N, T, 2), "reward" (N, T), "valid" (N, T) bool
    (steps taken before the episode ended), "success" (N,), "collision" (N,), "mode" (N,)
    (geometric), "chosen_mode" (N,)} with T = max_episode_steps, plus "goal" (N, T, 3) (the
    one-hot commanded side) when the task is goal-conditioned.
    """

    def episode(seed):
        reset_key, expert_key, noise_key = episode_keys(jax.random.key(seed))
        state = reset(reset_key, config)
        mode, quality, plan = sample_demonstrator(expert_key, state, config)
        noise = action_noise_of(noise_key, quality, config, action_noise)

        def body(state, noise):
            action = expert_action(state, plan) + noise
            new, _, reward, _, _ = step(state, action, config)
            return new, (observe(state), observe_goal(state), action, reward, ~state.done)

        final, (obs, goals, actions, rewards, valid) = jax.lax.scan(body, state, noise)
        mode_seen = mode_of_offset(final.closest_offset, final.closest_distance)
        return {
            "observation": obs,
            "action": actions.astype(jnp.float32),
            "reward": rewards,
            "valid": valid,
            "success": final.success,
            "collision": final.collided,
            "mode": mode_seen,
            "chosen_mode": mode,
            "quality": quality,
            **({"goal": goals} if config.goal_conditioned else {}),
        }

    return jax.vmap(episode)(seeds)


ROLLOUT_CHUNK = 256


def expert_rollouts_numpy(
    seed: int,
    num_episodes: int,
    config: MultimodalConfig = DEFAULT_CONFIG,
    action_noise: float = 0.0,
) -> dict[str, np.ndarray]:
    """`expert_rollouts` of seeds seed .. seed+num_episodes-1 as numpy, in fixed-size chunks.

    Every count reuses one compiled program (compiling costs seconds here, running a chunk
    of 256 episodes milliseconds).
    """
    chunks = []
    for start in range(seed, seed + num_episodes, ROLLOUT_CHUNK):
        seeds = jnp.arange(start, start + ROLLOUT_CHUNK, dtype=jnp.int32)
        chunks.append(jax.tree.map(np.asarray, expert_rollouts(seeds, config, action_noise)))
    return {k: np.concatenate([c[k] for c in chunks])[:num_episodes] for k in chunks[0]}


def collect_episodes(
    num_episodes: int,
    seed: int = 0,
    action_noise: float = 0.0,
    config: MultimodalConfig = DEFAULT_CONFIG,
) -> list[Episode]:
    """Expert episodes with seeds seed, seed+1, ... in base.py's `Episode` layout, batched.

    Matches `rollout_expert(task, seed + i)` step for step when action_noise is 0.
    """
    out = expert_rollouts_numpy(seed, num_episodes, config, action_noise)
    episodes = []
    for i in range(num_episodes):
        length = int(out["valid"][i].sum())
        terminated = bool(out["success"][i] or out["collision"][i])
        episodes.append(
            make_episode(
                [
                    {
                        "state": out["observation"][i, t],
                        **({"goal": out["goal"][i, t]} if config.goal_conditioned else {}),
                    }
                    for t in range(length)
                ],  # fmt: skip
                list(out["action"][i, :length]),
                list(out["reward"][i, :length]),
                terminated=terminated,
                metadata={
                    "task": "multimodal",
                    "seed": seed + i,
                    "expert": "scripted",
                    "success": bool(out["success"][i]),
                    "mode": int(out["mode"][i]),
                    **(
                        {"quality": QUALITIES[int(out["quality"][i])]}
                        if config.mixed_quality
                        else {}
                    ),
                },
            )
        )
    return episodes


@functools.partial(jax.jit, static_argnames=("config",), compiler_options=FAST_COMPILE)
def _expert_setup(seed: jax.Array, state: MultimodalState, config: MultimodalConfig):
    """(plan (T+1, 2), action noise (T, 2)) of episode `seed`, as `expert_rollouts` has them."""
    _, expert_key, noise_key = episode_keys(jax.random.key(seed))
    _, quality, plan = sample_demonstrator(expert_key, state, config)
    return plan, action_noise_of(noise_key, quality, config)


def make_expert(env: MultimodalEnv, seed: int) -> Callable[[dict], np.ndarray]:
    """The scripted expert of episode `seed`; reads the env's state (it is privileged).

    Its choice of mode shows in the env's `info["mode"]` once the agent nears the cup.
    """
    plan: list[np.ndarray] = []

    def expert(obs: dict) -> np.ndarray:
        del obs  # the plan is fixed from the episode's start state
        if not plan:
            positions, noise = _expert_setup(jnp.int32(seed), env.state, env.config)
            plan.extend([np.asarray(positions, np.float32), np.asarray(noise, np.float32)])
        t = int(env.state.t)
        return plan[0][min(t + 1, len(plan[0]) - 1)] + plan[1][min(t, len(plan[1]) - 1)]

    return expert
