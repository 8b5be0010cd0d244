"""Meta-World v3 tasks ("metaworld-<env-name>") with the scripted experts Meta-World ships.

Needs the extra `dpjax[metaworld]` (packages metaworld, mujoco). Any v3 env with a scripted
policy works, e.g. pick-place-v3, push-v3, peg-insert-side-v3, drawer-open-v3.

Observations: "state" (39,) float32, Meta-World's goal-observable vector (hand xyz, gripper
opening, two object poses, the same 18 values of the previous step, goal xyz). Optional
"image" (S, S, 3) uint8 from a MuJoCo camera when `image_size=S` is given: opt-in because
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

from dpjax.envs.base import ArraySpec, Task
from dpjax.errors import ConfigError, DataError, require_extra, unknown_name

STATE_DIM, ACTION_DIM = 39, 4
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

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(state, np.float32)}
        if self.config.image_size is not None:
            obs["image"] = self.render()
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
        self._t = 0
        return self._observe(state), {"success": False, "mode": -1}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, np.float32).reshape(ACTION_DIM), -1.0, 1.0)
        state, reward, terminated, truncated, info = self._env.step(action)
        self._t += 1
        info = {k: float(v) for k, v in info.items() if np.ndim(v) == 0}
        info["success"] = bool(info.get("success", 0.0))
        info["mode"] = -1
        truncated = bool(truncated) or self._t >= self.config.max_episode_steps
        return self._observe(state), float(reward), bool(terminated), truncated, info

    def close(self) -> None:
        if self._env is not None:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None
            _idle_envs.setdefault(self.config.env_name, []).append(self._env)
            self._env = None


def make_expert(env: MetaWorldEnv, seed: int) -> Callable[[dict], np.ndarray]:
    """Meta-World's scripted policy for the env, plus seeded N(0, action_noise^2) noise."""
    _, policies = _load()
    policy = policies[env.config.env_name]()
    rng = np.random.default_rng(seed)
    noise = env.config.action_noise

    def expert(obs: dict) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
            warnings.simplefilter("ignore")
            action = policy.get_action(obs["state"].astype(np.float64))
        action = np.clip(action, -1.0, 1.0)
        if noise > 0:
            action = np.clip(action + rng.normal(0.0, noise, ACTION_DIM), -1.0, 1.0)
        return action.astype(np.float32)

    return expert


def make_task(
    env_name: str,
    *,
    max_episode_steps: int = 500,
    image_size: int | None = None,
    camera: str = "corner2",
    position_split: str | None = None,
    action_noise: float = 0.0,
) -> Task:
    """The task "metaworld-<env_name>", e.g. env_name="pick-place-v3"."""
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
    )
    spec = {"state": ArraySpec((STATE_DIM,), "float32")}
    if image_size is not None:
        spec["image"] = ArraySpec((image_size, image_size, 3), "uint8")
    return Task(
        name=f"metaworld-{env_name}",
        observation_spec=spec,
        action_dim=ACTION_DIM,
        max_episode_steps=max_episode_steps,
        make_env=lambda seed: MetaWorldEnv(config, seed),
        make_expert=make_expert,
        expert_name="metaworld-scripted",
        control_hz=CONTROL_HZ,
    )
