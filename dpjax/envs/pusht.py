"""PushT (gym-pusht, extra `dpjax[pusht]`): push a T-shaped block onto a fixed goal pose.

The agent is a disc of radius 15 px in a 512 x 512 px arena; an action is the absolute (x, y)
position the agent is PD-driven towards during the next 0.1 s. The package's own success
criterion is kept: the block covers more than 95% of the goal T.

Observation types (dict keys of the adapter's observations):

    "state"      {"state": (5,) f32}  agent x, y, block x, y, block angle (rad, [0, 2 pi))
    "keypoints"  {"keypoint": (16,) f32, "agent_pos": (2,) f32}  the T's 8 corners, flattened
    "pixels"     {"image": (96, 96, 3) u8, "agent_pos": (2,) f32}
"""

from __future__ import annotations

import os

import numpy as np

from dpjax.envs.base import ArraySpec, Observation
from dpjax.errors import ConfigError, require_extra

MAX_EPISODE_STEPS = 300
CONTROL_HZ = 10.0
IMAGE_SIZE = 96
# Success: the block covers more than this fraction of the goal T (gym-pusht's threshold;
# Diffusion Policy's score of an episode is clip(max coverage / SUCCESS_COVERAGE, 0, 1)).
SUCCESS_COVERAGE = 0.95
# Goal pose of the block in gym-pusht (x, y, angle); fixed by the package, not configurable.
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])

# Our obs_type -> the package's obs_type.
_PACKAGE_OBS_TYPES = {
    "state": "state",
    "keypoints": "environment_state_agent_pos",
    "pixels": "pixels_agent_pos",
}
OBSERVATION_SPECS = {
    "state": {"state": ArraySpec((5,), "float32")},
    "keypoints": {"keypoint": ArraySpec((16,), "float32"), "agent_pos": ArraySpec((2,), "float32")},
    "pixels": {
        "image": ArraySpec((IMAGE_SIZE, IMAGE_SIZE, 3), "uint8"),
        "agent_pos": ArraySpec((2,), "float32"),
    },
}


def import_gym_pusht():
    """Imports gym_pusht (registering "gym_pusht/PushT-v0") or raises MissingExtraError."""
    # pygame prints a banner on import and would look for a display; neither is wanted here.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    require_extra("pymunk", "pusht")
    require_extra("gymnasium", "pusht")
    return require_extra("gym_pusht", "pusht")


class PushTEnv:
    """Adapter from gym-pusht to `dpjax.envs.base.Env`: dict observations, float32 arrays.

    `info` of reset and step carries "success" (bool, the package's criterion) and "coverage"
    (float, fraction of the goal T covered by the block). `physics` is the package's own env
    (pymunk bodies `agent`, `block`), which scripted experts may read. With `classify_modes`,
    info["mode"] is the part of the T the agent touched first (an index of
    `pusht_expert.STRATEGIES`; -1 before any contact), else always -1.
    """

    def __init__(self, obs_type: str = "state", classify_modes: bool = False, **options):
        if obs_type not in _PACKAGE_OBS_TYPES:
            raise ConfigError(
                f"unknown PushT obs_type {obs_type!r}; valid: {', '.join(_PACKAGE_OBS_TYPES)}"
            )
        import_gym_pusht()
        import gymnasium

        self.obs_type = obs_type
        self.classify_modes = classify_modes
        self._mode = -1
        self._env = gymnasium.make(
            "gym_pusht/PushT-v0",
            obs_type=_PACKAGE_OBS_TYPES[obs_type],
            max_episode_steps=MAX_EPISODE_STEPS,
            **options,
        )

    def render(self) -> np.ndarray:
        """(680, 680, 3) uint8 picture of the scene (the package's renderer)."""
        return np.asarray(self._env.render(), np.uint8)

    @property
    def physics(self):
        """The unwrapped gym-pusht env (pymunk space, bodies, `_get_coverage`)."""
        return self._env.unwrapped

    def reset(self, *, seed: int | None = None) -> tuple[Observation, dict]:
        obs, info = self._env.reset(seed=seed)
        info = dict(info)
        info["coverage"] = float(self.physics._get_coverage())
        info["success"] = bool(info.get("is_success", False))
        self._mode = -1
        info["mode"] = self._classify()
        return self._observation(obs), info

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64).reshape(2)
        obs, reward, terminated, truncated, info = self._env.step(action)
        info = dict(info)
        info["success"] = bool(info["is_success"])
        info["coverage"] = float(info["coverage"])
        info["mode"] = self._classify()
        return self._observation(obs), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._env.close()

    def block_keypoints(self) -> np.ndarray:
        """The T's 8 corners in the world frame, bar then stem: (8, 2)."""
        # The package's ordered list: pymunk's `block.shapes` is a set, in no fixed order.
        block, shapes = self.physics.block, self.physics._block_shapes
        return np.asarray(
            [block.local_to_world(v) for shape in shapes for v in shape.get_vertices()]
        )

    def _classify(self) -> int:
        if self.classify_modes and self._mode < 0:
            from dpjax.envs.pusht_expert import contact_mode

            agent = np.asarray(self.physics.agent.position)
            self._mode = contact_mode(agent, self.block_keypoints())
        return self._mode

    def _observation(self, obs) -> Observation:
        if self.obs_type == "state":
            return {"state": np.asarray(obs, np.float32)}
        agent_pos = np.asarray(obs["agent_pos"], np.float32)
        if self.obs_type == "keypoints":
            return {
                "keypoint": np.asarray(obs["environment_state"], np.float32),
                "agent_pos": agent_pos,
            }
        return {"image": np.asarray(obs["pixels"], np.uint8), "agent_pos": agent_pos}


def set_block_pose(env: PushTEnv, pose: np.ndarray) -> None:
    """Places the block at `pose` (x, y, angle) as gym-pusht's goal pose is defined.

    The angle is set before the position: pymunk rotates about the centre of gravity, so the
    other order (the package's `reset_to_state`) shifts the block away from the given x, y.
    """
    block = env.physics.block
    block.angle = float(pose[2])
    block.position = (float(pose[0]), float(pose[1]))
    block.velocity = (0.0, 0.0)
    block.angular_velocity = 0.0
