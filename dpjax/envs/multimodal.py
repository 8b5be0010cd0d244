"""A pure-JAX task with three valid, mutually exclusive solutions ("pick up the cup").

Geometry (world units, workspace [-1, 1]^2; "cup frame" = offsets from the cup centre):

    agent start ~ (-0.6, 0) +- (0.1, 0.15)     cup ~ (0.3, 0) +- 0.05 (both uniform per episode)

                  N  grasp (0, +0.16)
           |
     start |   (cup)  E  grasp (+0.16, 0)       wall: x in [-0.31, -0.25], y in [-0.25, 0.25]
           |                                     cup:  disc of radius 0.08
                  S  grasp (0, -0.16)            agent: disc of radius 0.02

A wall west of the cup blocks the straight approach, so the gripper must go around it, over
the top (north) or underneath (south and east). The scripted expert picks north / east / south
with probabilities 0.45 / 0.40 / 0.15 (the seed's cup example) and follows a smooth path (a
corner-cut polyline through a pre-grasp waypoint on the chosen side, timed by a smooth speed
profile that reaches cruising speed within a few steps). The mean of the three approaches is
not an approach: averaged paths hit the wall, and the averaged grasp point lies inside the cup (tested in tests/test_envs_multimodal.py).

Observation "state" (6,) float32: [agent_x, agent_y, cup_x, cup_y, agent_vx, agent_vy], the
velocity being the last step's displacement. Action (2,) float32: the absolute target position
for the next step (position control, like PushT); the agent moves towards it by at most
`MAX_STEP` per step. An episode succeeds when the agent is within `GRASP_TOL` of a north, east
or south grasp point without having collided; it ends at success, collision or max steps.

`reset` and `step` are pure jnp functions on a `MultimodalState`, so batched policy rollouts
`jax.vmap` + `lax.scan` into one program (`run_episodes`); `MultimodalEnv` is the numpy
gymnasium-style adapter. The scripted expert and batched collection: `multimodal_expert`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dpjax.envs import demonstrators
from dpjax.envs.demonstrators import PROFICIENT, check_quality_mix

MODES = ("north", "east", "south")
MODE_PROBS = (0.45, 0.40, 0.15)
STATE_DIM, ACTION_DIM = 6, 2

AGENT_RADIUS = 0.02
CUP_RADIUS = 0.08
WALL_X = (-0.31, -0.25)  # cup frame
WALL_HALF_HEIGHT = 0.25
GRASP_DISTANCE = 0.16  # leaves 0.02 between agent and cup at the edge of the tolerance
GRASP_TOL = 0.04  # a learned policy need not be more precise than ~1.5% of the workspace
# The demonstrators of mixed-quality data (MultimodalConfig.quality_mix): the scripted
# expert; one moving at SLOW_SPEED of its speed; one that stops for HESITATION_STEPS at a
# random point of the route; one whose every action jitters by NOISY_STD (recorded as taken).
SLOW_SPEED = 0.7
HESITATION_STEPS = 10
NOISY_STD = 0.01
MAX_STEP = 0.06  # per-step motion bound; > the plan's peak speed so the expert tracks exactly
EXPERT_MEAN_SPEED = 0.028  # peak = mean / (1 - (accel + decel) / 2) <= 0.028 / 0.6 < MAX_STEP
EXPERT_ACCEL_STEPS = 4.0  # ramp-up to cruising speed, in steps
EXPERT_DECEL = 0.3  # ramp-down, as a fraction of the episode
WAYPOINT_JITTER = 0.03  # expert path diversity within one mode
MODE_RADIUS = 0.3  # a trajectory that never comes this close to the cup has no mode
# XLA's default CPU optimization level doubles compile time (7 s -> 3.5 s for a batch of expert
# rollouts here) for no measurable speed-up of these small elementwise programs.
FAST_COMPILE = {"xla_backend_optimization_level": 1}
SIDES = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]], np.float32)  # north, east, south


@dataclasses.dataclass(frozen=True)
class MultimodalConfig:
    """Static (hashable) settings; a jit static argument."""

    max_episode_steps: int = 100
    mode_probs: tuple[float, float, float] = MODE_PROBS
    start_center: tuple[float, float] = (-0.6, 0.0)
    start_range: tuple[float, float] = (0.1, 0.15)
    cup_center: tuple[float, float] = (0.3, 0.0)
    cup_range: float = 0.05
    # The episode commands a side (drawn with mode_probs at reset), observed as a one-hot
    # "goal"; only a grasp from that side succeeds and the expert takes that side.
    goal_conditioned: bool = False
    # Mixed-quality demonstrations, as human operators give them: the probabilities of the
    # demonstrator's `demonstrators.QUALITIES` per episode (proficient, slow, hesitant, noisy); see
    # dpjax.envs.multimodal_expert. The default is the proficient scripted expert alone.
    quality_mix: tuple[float, float, float, float] = PROFICIENT

    @property
    def mixed_quality(self) -> bool:
        """Whether demonstrators other than the proficient expert are drawn."""
        return self.quality_mix != PROFICIENT


DEFAULT_CONFIG = MultimodalConfig()


@struct.dataclass
class MultimodalState:
    agent: jax.Array  # (2,) f32
    velocity: jax.Array  # (2,) f32, last displacement
    cup: jax.Array  # (2,) f32
    goal: jax.Array  # () i32, the commanded side (0 N, 1 E, 2 S), -1 when any side will do
    t: jax.Array  # () i32, steps taken
    closest_offset: jax.Array  # (2,) agent - cup at the closest approach so far
    closest_distance: jax.Array  # () f32
    success: jax.Array  # () bool
    collided: jax.Array  # () bool
    done: jax.Array  # () bool


def mode_from_uniform(u: jax.Array, mode_probs=MODE_PROBS) -> jax.Array:
    """Inverse CDF: u ~ U[0, 1) -> int32 mode."""
    cdf = jnp.cumsum(jnp.asarray(mode_probs)) / sum(mode_probs)
    return jnp.sum(u >= cdf[:-1]).astype(jnp.int32)


def reset(key: jax.Array, config: MultimodalConfig = DEFAULT_CONFIG) -> MultimodalState:
    """Samples a start and a cup position uniformly around their centres (and the goal side)."""
    # One draw for everything: each random call costs a threefry copy in the compiled program.
    u = jax.random.uniform(key, (5 if config.goal_conditioned else 4,), minval=-1.0, maxval=1.0)
    goal = (
        mode_from_uniform(0.5 * (u[4] + 1.0), config.mode_probs)
        if config.goal_conditioned
        else jnp.int32(-1)
    )
    start = jnp.asarray(config.start_center) + u[:2] * jnp.asarray(config.start_range)
    cup = jnp.asarray(config.cup_center) + config.cup_range * u[2:4]
    offset = start - cup
    return MultimodalState(
        agent=start,
        velocity=jnp.zeros(2),
        cup=cup,
        goal=goal,
        t=jnp.zeros((), jnp.int32),
        closest_offset=offset,
        closest_distance=jnp.linalg.norm(offset),
        success=jnp.zeros((), bool),
        collided=jnp.zeros((), bool),
        done=jnp.zeros((), bool),
    )


def observe(state: MultimodalState) -> jax.Array:
    """(6,) f32 [agent_xy, cup_xy, velocity_xy]."""
    return jnp.concatenate([state.agent, state.cup, state.velocity]).astype(jnp.float32)


def observe_goal(state: MultimodalState) -> jax.Array:
    """(3,) f32 one-hot of the commanded side (all zeros when any side will do)."""
    return jax.nn.one_hot(state.goal, len(MODES), dtype=jnp.float32)


def observation(state: MultimodalState, config: MultimodalConfig) -> dict[str, jax.Array]:
    """The task's observation dict: {"state" (6,)} plus {"goal" (3,)} when goal-conditioned."""
    obs = {"state": observe(state)}
    if config.goal_conditioned:
        obs["goal"] = observe_goal(state)
    return obs


def collides(offset: jax.Array) -> jax.Array:
    """Whether the agent at cup-frame `offset` (..., 2) overlaps the cup or the wall."""
    in_cup = jnp.linalg.norm(offset, axis=-1) < CUP_RADIUS + AGENT_RADIUS
    x, y = offset[..., 0], offset[..., 1]
    in_wall = (
        (x > WALL_X[0] - AGENT_RADIUS)
        & (x < WALL_X[1] + AGENT_RADIUS)
        & (jnp.abs(y) < WALL_HALF_HEIGHT + AGENT_RADIUS)
    )
    return in_cup | in_wall


def grasped(offset: jax.Array, goal: jax.Array | int = -1) -> jax.Array:
    """Whether cup-frame `offset` (..., 2) is at a valid grasp pose: any of N/E/S, or only the
    side `goal` when goal >= 0."""
    targets = GRASP_DISTANCE * SIDES  # (3, 2)
    distances = jnp.linalg.norm(offset[..., None, :] - targets, axis=-1)
    allowed = (jnp.asarray(goal) < 0) | (jnp.arange(len(MODES)) == jnp.asarray(goal))
    return jnp.any((distances < GRASP_TOL) & allowed, axis=-1)


def mode_of_offset(offset: jax.Array, distance: jax.Array) -> jax.Array:
    """Side (0 N, 1 E, 2 S, -1 west or never near) of a closest-approach cup-frame offset."""
    angle = jnp.degrees(jnp.arctan2(offset[..., 1], offset[..., 0]))
    mode = jnp.where((angle >= 45) & (angle < 135), 0, jnp.where(jnp.abs(angle) < 45, 1, -1))
    mode = jnp.where((angle <= -45) & (angle > -135), 2, mode)
    return jnp.where(distance <= MODE_RADIUS, mode, -1).astype(jnp.int32)


def mode_frequencies(modes) -> dict[str, float]:
    """{"north": f, "east": f, "south": f}: the fraction of the episodes (with a mode, >= 0)
    of each mode, e.g. measured from demonstrations' `episode_metadata["mode"]`."""
    return demonstrators.mode_frequencies(modes, MODES)


def classify_mode(
    positions: jax.Array, cup: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Mode of a trajectory from its geometry: the side of the cup at its closest approach.

    positions (T, 2) agent positions, cup (2,) or (T, 2), valid (T,) bool mask of real steps.
    Returns an int32 scalar: 0 north, 1 east, 2 south, -1 if the trajectory never comes within
    `MODE_RADIUS` of the cup or its closest approach is from the (invalid) west.
    """
    offsets = positions - cup
    distances = jnp.linalg.norm(offsets, axis=-1)
    if valid is not None:
        distances = jnp.where(valid, distances, jnp.inf)
    closest = jnp.argmin(distances)
    return mode_of_offset(offsets[closest], distances[closest])


def classify_observations(states: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """`classify_mode` on observation vectors (T, 6)."""
    return classify_mode(states[:, 0:2], states[:, 2:4], valid)


def step(state: MultimodalState, action: jax.Array, config: MultimodalConfig = DEFAULT_CONFIG):
    """Moves towards `action` (2,) by at most MAX_STEP. A finished episode stays frozen.

    Returns (state, obs (6,), reward (), done (), info) with info {"success", "collision",
    "mode", "t"}; reward is 1 on the step that grasps, else 0.
    """
    target = jnp.clip(action.astype(jnp.float32), -1.0, 1.0)
    delta = target - state.agent
    norm = jnp.linalg.norm(delta)
    delta = delta * jnp.minimum(1.0, MAX_STEP / jnp.maximum(norm, 1e-9))
    # Check 4 points along the step so a corner of the wall cannot be cut through.
    fractions = jnp.linspace(0.25, 1.0, 4)[:, None]
    collided = jnp.any(collides(state.agent + fractions * delta - state.cup))
    agent = state.agent + delta
    offset = agent - state.cup
    distance = jnp.linalg.norm(offset)
    closer = distance < state.closest_distance
    success = grasped(offset, state.goal) & ~collided
    t = state.t + 1
    moved = MultimodalState(
        agent=agent,
        velocity=delta,
        cup=state.cup,
        goal=state.goal,
        t=t,
        closest_offset=jnp.where(closer, offset, state.closest_offset),
        closest_distance=jnp.where(closer, distance, state.closest_distance),
        success=success,
        collided=collided,
        done=success | collided | (t >= config.max_episode_steps),
    )
    new = jax.tree.map(lambda old, m: jnp.where(state.done, old, m), state, moved)
    reward = jnp.where(state.done, 0.0, success.astype(jnp.float32))
    info = {
        "success": new.success,
        "collision": new.collided,
        "mode": mode_of_offset(new.closest_offset, new.closest_distance),
        "t": new.t,
    }
    return new, observe(new), reward, new.done, info


def episode_keys(seed_key: jax.Array) -> jax.Array:
    """(3,) keys of one episode: reset, expert (mode and plan), action noise.

    The gym adapter and the batched path derive them alike, so their episodes agree.
    """
    return jax.random.split(seed_key, 3)


PolicyFn = Callable[[object, jax.Array, jax.Array], tuple[object, jax.Array]]


def run_episodes(
    key: jax.Array,
    num_episodes: int,
    policy_fn: PolicyFn,
    policy_carry,
    config: MultimodalConfig = DEFAULT_CONFIG,
) -> dict[str, jax.Array]:
    """Rolls out a batched policy; jit it with policy_fn/num_episodes/config static.

    policy_fn(carry, obs (N, 6), key) -> (carry, actions (N, 2)); the carry lets a chunking
    policy keep its action queue. Returns {"positions" (N, T+1, 2), "cup" (N, 2),
    "success" (N,), "collision" (N,), "mode" (N,), "length" (N,)}.
    """
    reset_key, policy_key = jax.random.split(key)
    states = jax.vmap(lambda k: reset(k, config))(jax.random.split(reset_key, num_episodes))
    batched_step = jax.vmap(lambda s, a: step(s, a, config))

    def body(carry, step_key):
        states, policy_carry = carry
        policy_carry, actions = policy_fn(policy_carry, jax.vmap(observe)(states), step_key)
        states, *_ = batched_step(states, actions)
        return (states, policy_carry), states.agent

    step_keys = jax.random.split(policy_key, config.max_episode_steps)
    (final, _), positions = jax.lax.scan(body, (states, policy_carry), step_keys)
    return {
        "positions": jnp.concatenate([states.agent[:, None], positions.swapaxes(0, 1)], 1),
        "cup": final.cup,
        "success": final.success,
        "collision": final.collided,
        "mode": jax.vmap(mode_of_offset)(final.closest_offset, final.closest_distance),
        "length": final.t,
    }


# ---------------------------------------------------------------- gymnasium-style adapter


@functools.partial(jax.jit, static_argnames=("config",), compiler_options=FAST_COMPILE)
def _reset_seed(seed: jax.Array, config: MultimodalConfig):
    state = reset(episode_keys(jax.random.key(seed))[0], config)
    return state, observation(state, config)


@functools.partial(jax.jit, static_argnames=("config",), compiler_options=FAST_COMPILE)
def _step_observed(state: MultimodalState, action: jax.Array, config: MultimodalConfig):
    """`step` with the observation dict the adapter returns, in one dispatch."""
    new, _, reward, _, info = step(state, action, config)
    return new, observation(new, config), reward, info


class MultimodalEnv:
    """numpy in/out adapter over the pure functions; satisfies `dpjax.envs.base.Env`."""

    def __init__(self, config: MultimodalConfig = DEFAULT_CONFIG, seed: int = 0):
        self.config = config
        self._next_seed = seed
        self.seed = seed
        self.state: MultimodalState | None = None

    def reset(self, *, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        self.seed = self._next_seed if seed is None else seed
        self._next_seed = self.seed + 1
        self.state, obs = _reset_seed(jnp.int32(self.seed), self.config)
        info = {"success": False, "collision": False, "mode": -1}
        return jax.tree.map(np.asarray, obs), info

    def step(self, action: np.ndarray):
        action = jnp.asarray(np.asarray(action, np.float32).reshape(ACTION_DIM))
        self.state, obs, reward, info = _step_observed(self.state, action, self.config)
        info = {k: v.item() for k, v in info.items()}
        terminated = bool(info["success"] or info["collision"])
        truncated = not terminated and info["t"] >= self.config.max_episode_steps
        return jax.tree.map(np.asarray, obs), float(reward), terminated, truncated, info

    def close(self) -> None:
        self.state = None


def config_from_options(
    max_episode_steps: int = 100,
    mode_probs: tuple[float, float, float] = MODE_PROBS,
    goal_conditioned: bool = False,
    quality_mix: tuple[float, float, float, float] = PROFICIENT,
) -> MultimodalConfig:
    """The MultimodalConfig of `make_task`'s options (as a dataset's collection info records
    them, JSON lists included)."""
    return MultimodalConfig(
        max_episode_steps=int(max_episode_steps),
        mode_probs=tuple(mode_probs),
        goal_conditioned=bool(goal_conditioned),
        quality_mix=check_quality_mix(quality_mix),
    )
