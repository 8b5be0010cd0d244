"""Meta-World v3 tasks ("metaworld-<env-name>") with the scripted experts Meta-World ships.

Needs the extra `dpjax[metaworld]` (packages metaworld, mujoco). Any v3 env with a scripted
policy works, e.g. pick-place-v3, push-v3, peg-insert-side-v3, drawer-open-v3.

Observations: "state" (39,) float32, Meta-World's goal-observable vector (hand xyz, gripper
opening, two object poses, the same 18 values of the previous step, goal xyz). Optional
"image" (S, S, 3) uint8 from a MuJoCo camera, with "agent_pos" (4,) float32 (hand xyz and
gripper opening: the robot's proprioception, for policies that must not read the objects'
poses from "state"), when `image_size=S` is given: opt-in because
software rendering is slow on a CPU-only machine (~2-5 frames/s at 96x96 with EGL on mesa,
against ~200-600 state-only steps/s, resets included, in benchmarks/expert_success.py).
Rendering uses MUJOCO_GL, set to "egl" unless it is already set when metaworld is first
imported (set MUJOCO_GL=osmesa yourself to use OSMesa).

Actions: (4,) float32 in [-1, 1]: end-effector xyz displacement (scaled by Meta-World) and
gripper effort; the adapter clips to [-1, 1]. Success is Meta-World's `info["success"]`.
Meta-World never terminates an episode; it is truncated at `max_episode_steps` (default 500,
Meta-World's own path length), and the collector stops at the first success.

Each seed draws its own object and goal positions (the env's `np_random` is reseeded on
`reset(seed=...)`), so demos differ by scene. (This uses Meta-World's goal-observable env
classes directly rather than `gymnasium.make("Meta-World/MT1", env_name=...)`, whose MT1
benchmark cycles through 50 goal vectors fixed when it is built.) `action_noise` adds
N(0, action_noise^2) to the expert's actions for more diversity (use it or `rollout_expert`'s
action_noise, not both). Tasks have no discrete modes: `info["mode"]` is -1.

`position_split` (for "grasp a novel object"-style evaluations) restricts the object's initial
position by a fixed rule: a position is *held out* when its x and y are both above the middle
of the task's object sampling box (axes the box does not vary are ignored), i.e. the far-right
quarter of the box; for pick-place that is x > 0.0 and y > 0.65. "train" keeps only positions
outside that quarter, "heldout" only positions inside it, None keeps all. Resets draw again
(deterministically, from the same seeded stream) until the rule holds.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable

import numpy as np

from dpjax.envs import demonstrators
from dpjax.envs.base import ArraySpec, Task
from dpjax.errors import ConfigError, DataError, require_extra, unknown_name

STATE_DIM, ACTION_DIM = 39, 4
STRATEGIES = ("direct", "left", "right")
VIA_MARGIN = 0.12  # m beyond the start-object corridor in x: the direct path stays clear
VIA_RADIUS = 0.05  # m (xy) around a via-point: entering it shows the mode
# The approach has arrived when the hand is this close to the object's start in xy (m) and
# this far below its own start height (m): every task's object lies lower than the hand starts.
APPROACH_RADIUS, APPROACH_DROP = 0.06, 0.04
VIA_REACHED = 0.02  # m: the expert hands over to the scripted policy this close to its via
VIA_GAIN = 10.0  # the P gain of Meta-World's own scripted `move`
# The slow demonstrator holds still every third step (2/3 of the pace) until it grasps (grip
# effort above SLOW_UNTIL_GRIP): Meta-World's gripper closes at its own speed, and a slower
# descent with a normal closing lands the fingers on top of the object.
SLOW_EVERY, SLOW_UNTIL_GRIP = 3, 0.3
HESITATION_STEPS, HESITATE_WITHIN = 15, 30  # Meta-World episodes: ~50-200 steps
NOISY_STD = 0.2  # on top of `action_noise`; actions are in [-1, 1] (1: ~1 cm a step)
CONTROL_HZ = 80.0  # Meta-World: timestep 0.0025 s x frame_skip 5
POSITION_SPLITS = ("train", "heldout")
_MAX_SPLIT_DRAWS = 1000


# mujoco fixes its GL backend when first imported, and headless machines have no default
# (glfw) one; importing this module before metaworld/mujoco makes EGL the default.
os.environ.setdefault("MUJOCO_GL", "egl")


def _load():
    """(env classes by name, scripted policy classes by name); raises MissingExtraError."""
    require_extra("metaworld", "metaworld")
    require_extra("mujoco", "metaworld")
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    from metaworld.policies import ENV_POLICY_MAP

    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


def env_names() -> list[str]:
    """Meta-World v3 env names that have a scripted expert."""
    env_classes, policies = _load()
    suffix = "-goal-observable"
    return sorted(n[: -len(suffix)] for n in env_classes if n[: -len(suffix)] in policies)


@dataclasses.dataclass(frozen=True)
class MetaWorldConfig:
    env_name: str
    max_episode_steps: int = 500
    image_size: int | None = None  # None: state only
    camera: str = "corner2"
    position_split: str | None = None  # None | "train" | "heldout"
    action_noise: float = 0.0
    strategies: tuple[float, ...] | None = None  # probabilities over STRATEGIES
    quality_mix: tuple[float, float, float, float] = demonstrators.PROFICIENT


def is_heldout_position(xy: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    """The held-out rule: above the middle of the sampling box on every axis it varies."""
    varied = high - low > 1e-9
    return bool(np.all((xy > (low + high) / 2)[varied]))


# Building a Meta-World env compiles its MuJoCo model (~0.3-0.5 s); reusing closed ones makes
# per-episode `make_env` cheap. A reset with a seed fully restores the simulation, so a reused
# env behaves exactly like a fresh one.
_idle_envs: dict[str, list] = {}


def _acquire_raw_env(env_name: str):
    pool = _idle_envs.setdefault(env_name, [])
    if pool:
        return pool.pop()
    env_classes, _ = _load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = env_classes[env_name + "-goal-observable"](seed=0)
    # Draw a new scene from the seeded stream on every reset instead of a frozen one.
    env.seeded_rand_vec = True
    env._freeze_rand_vec = False
    return env


class MetaWorldEnv:
    """gymnasium-style adapter (numpy in/out) satisfying `dpjax.envs.base.Env`."""

    def __init__(self, config: MetaWorldConfig, seed: int = 0):
        self.config = config
        self._env = _acquire_raw_env(config.env_name)
        self._env.max_path_length = config.max_episode_steps
        self._renderer = None
        self._next_seed = seed
        self._t = 0
        self.object_position: np.ndarray | None = None  # (3,) initial object position
        self.via_points: np.ndarray | None = None  # (2, 3): the left and right via-points
        self._mode = -1

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(state, np.float32)}
        if self.config.image_size is not None:
            obs["image"] = self.render()
            obs["agent_pos"] = obs["state"][:4].copy()  # what a robot knows of itself
        return obs

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 frame of `config.camera` (slow in software; see module doc)."""
        if self._renderer is None:
            import mujoco

            size = self.config.image_size or 96
            self._renderer = mujoco.Renderer(self._env.model, size, size)
        self._renderer.update_scene(self._env.data, camera=self.config.camera)
        frame = self._renderer.render()
        if self.config.camera.startswith("corner"):
            # Meta-World's corner cameras are mounted upside down: turn by 180 degrees (a
            # rotation, not a flip: a camera pose cannot mirror the scene).
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def _in_split(self) -> bool:
        split = self.config.position_split
        if split is None:
            return True
        space = self._env._random_reset_space
        heldout = is_heldout_position(self.object_position[:2], space.low[:2], space.high[:2])
        return heldout == (split == "heldout")

    def reset(self, *, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        seed = self._next_seed if seed is None else seed
        self._next_seed = seed + 1
        self._env.seed(seed)
        for _ in range(_MAX_SPLIT_DRAWS):
            state, _ = self._env.reset()
            self.object_position = np.array(self._env.obj_init_pos, np.float64)
            if self._in_split():
                break
        else:
            raise DataError(f"no {self.config.position_split!r} object position in reach")
        state = self._observe_reset()
        self._t = 0
        self.via_points = via_points(state[:3], state[4:7])
        self._starts = (np.array(state[:3], np.float64), np.array(state[4:7], np.float64))
        self._mode = -1
        return self._observe(state), {"success": False, "mode": self._classify(state)}

    def _observe_reset(self) -> np.ndarray:
        """The state (39,) after a reset, with the scene's current positions.

        Meta-World's reset observes before MuJoCo recomputes the positions of sites and
        bodies for the new joint values: on drawer-open and button-press the observed object
        is where the previous episode's scene had it (up to ~0.2 m off) until the first step.
        """
        import mujoco

        env = self._env
        mujoco.mj_forward(env.model, env.data)
        current = env._get_curr_obs_combined_no_goal()
        env._prev_obs = current.copy()
        return np.hstack([current, current, env._get_pos_goal()])

    def _classify(self, state: np.ndarray, success: bool = False) -> int:
        """The mode the hand's path shows so far (an index of STRATEGIES; -1: none yet)."""
        if self.config.strategies is None or self._mode >= 0:
            return self._mode
        hand = np.asarray(state[:3], np.float64)
        near_via = np.linalg.norm(self.via_points[:, :2] - hand[:2], axis=-1) <= VIA_RADIUS
        start_hand, start_object = self._starts
        arrived = (
            np.linalg.norm(hand[:2] - start_object[:2]) <= APPROACH_RADIUS
            and hand[2] < start_hand[2] - APPROACH_DROP
        )
        if near_via.any():
            self._mode = STRATEGIES.index(("left", "right")[int(np.argmax(near_via))])
        elif arrived or success:
            self._mode = STRATEGIES.index("direct")
        return self._mode

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, np.float32).reshape(ACTION_DIM), -1.0, 1.0)
        state, reward, terminated, truncated, info = self._env.step(action)
        self._t += 1
        info = {k: float(v) for k, v in info.items() if np.ndim(v) == 0}
        info["success"] = bool(info.get("success", 0.0))
        info["mode"] = self._classify(state, info["success"])
        truncated = bool(truncated) or self._t >= self.config.max_episode_steps
        return self._observe(state), float(reward), bool(terminated), truncated, info

    def close(self) -> None:
        if self._env is not None:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None
            _idle_envs.setdefault(self.config.env_name, []).append(self._env)
            self._env = None


def via_points(hand: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """(2, 3) the left and right via-points of an episode from the hand's and the object's
    start positions (3,) each (see the module doc)."""
    low, high = min(hand[0], obj[0]) - VIA_MARGIN, max(hand[0], obj[0]) + VIA_MARGIN
    y, z = (hand[1] + obj[1]) / 2, hand[2]
    return np.array([[low, y, z], [high, y, z]], np.float64)


def _scripted_action(policy, state: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
        warnings.simplefilter("ignore")
        return np.clip(policy.get_action(state.astype(np.float64)), -1.0, 1.0)


def make_expert(env: MetaWorldEnv, seed: int) -> Callable[[dict], np.ndarray]:
    """Meta-World's scripted policy for the env, plus seeded N(0, action_noise^2) noise; with
    `strategies`, the episode's approach first; with `quality_mix`, its demonstrator's ways.
    The returned expert names them in its `strategy` / `quality` attributes (where asked for),
    which the collector records as episode metadata."""
    _, policies = _load()
    config = env.config
    policy = policies[config.env_name]()
    rng = np.random.default_rng(seed)
    noise = config.action_noise
    strategy = demonstrators.draw_strategy(config.strategies, STRATEGIES, seed)
    quality = demonstrators.draw_quality(config.quality_mix, seed)
    via = None if strategy in (None, "direct") else env.via_points[STRATEGIES.index(strategy) - 1]

    def expert(obs: dict) -> np.ndarray:
        nonlocal via
        state = obs["state"]
        if via is not None and np.linalg.norm(via - state[:3]) <= VIA_REACHED:
            via = None  # the scripted policy takes over from here
        if via is not None:
            move = np.clip(VIA_GAIN * (via - state[:3]), -1.0, 1.0)
            action = np.append(move, -1.0)  # gripper open on the way
        else:
            action = _scripted_action(policy, state)
        if noise > 0:
            action = np.clip(action + rng.normal(0.0, noise, ACTION_DIM), -1.0, 1.0)
        return action.astype(np.float32)

    if config.quality_mix != demonstrators.PROFICIENT:
        expert = demonstrators.MixedQualityExpert(
            expert, quality, seed,
            hold=lambda last: np.concatenate([np.zeros(3, np.float32), last[3:]]),
            noise_std=NOISY_STD, hesitation_steps=HESITATION_STEPS,
            hesitate_within=HESITATE_WITHIN, slow_every=SLOW_EVERY,
            slow_while=lambda last: last[3] <= SLOW_UNTIL_GRIP, clip=(-1.0, 1.0),
        )  # fmt: skip
        expert.quality = quality
    if strategy is not None:
        expert.strategy = strategy
    return expert


def make_task(
    env_name: str,
    *,
    max_episode_steps: int = 500,
    image_size: int | None = None,
    camera: str = "corner2",
    position_split: str | None = None,
    action_noise: float = 0.0,
    strategies: dict[str, float] | list[str] | None = None,
    quality_mix: tuple[float, float, float, float] = demonstrators.PROFICIENT,
) -> Task:
    """The task "metaworld-<env_name>", e.g. env_name="pick-place-v3". `strategies`: the
    multimodal expert's approaches, {name: probability} or names (equally likely) of
    STRATEGIES; `quality_mix`: mixed-quality demonstrators (`demonstrators.QUALITIES`)."""
    valid = env_names()  # raises MissingExtraError first when the extra is missing
    if env_name not in valid:
        raise unknown_name("metaworld env", env_name, valid)
    if position_split not in (None, *POSITION_SPLITS):
        raise ConfigError(
            f"position_split must be None, 'train' or 'heldout', not {position_split!r}"
        )
    if image_size is not None and image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    config = MetaWorldConfig(
        env_name=env_name,
        max_episode_steps=max_episode_steps,
        image_size=image_size,
        camera=camera,
        position_split=position_split,
        action_noise=action_noise,
        strategies=demonstrators.check_strategies(strategies, STRATEGIES),
        quality_mix=demonstrators.check_quality_mix(quality_mix),
    )
    spec = {"state": ArraySpec((STATE_DIM,), "float32")}
    if image_size is not None:
        spec["image"] = ArraySpec((image_size, image_size, 3), "uint8")
        spec["agent_pos"] = ArraySpec((4,), "float32")
    return Task(
        name=f"metaworld-{env_name}",
        observation_spec=spec,
        action_dim=ACTION_DIM,
        max_episode_steps=max_episode_steps,
        make_env=lambda seed: MetaWorldEnv(config, seed),
        make_expert=make_expert,
        expert_name="metaworld-scripted",
        control_hz=CONTROL_HZ,
        modes=STRATEGIES if config.strategies is not None else (),
    )
