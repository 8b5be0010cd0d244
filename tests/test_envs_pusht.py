"""PushT adapter, its physics copy and the scripted expert (needs `dpjax[pusht]`)."""

import sys

import numpy as np
import pytest

from dpjax.envs import make_task, rollout_expert
from dpjax.envs.pusht import GOAL_POSE, PushTEnv, set_block_pose
from dpjax.errors import ConfigError, MissingExtraError

EXPECTED = {
    "state": {"state": ((5,), np.float32)},
    "keypoints": {"keypoint": ((16,), np.float32), "agent_pos": ((2,), np.float32)},
    "pixels": {"image": ((96, 96, 3), np.uint8), "agent_pos": ((2,), np.float32)},
}


@pytest.fixture(autouse=True)
def _needs_gym_pusht(request):
    if "missing" not in request.node.name:
        pytest.importorskip("gym_pusht")


def _check(obs, obs_type):
    assert set(obs) == set(EXPECTED[obs_type])
    for key, (shape, dtype) in EXPECTED[obs_type].items():
        assert obs[key].shape == shape, key
        assert obs[key].dtype == dtype, key
        assert np.all(np.isfinite(obs[key].astype(np.float32)))


@pytest.mark.parametrize("obs_type", sorted(EXPECTED))
def test_reset_and_step_shapes_dtypes_and_spec(obs_type):
    task = make_task("pusht", obs_type=obs_type)
    assert (task.action_dim, task.max_episode_steps, task.control_hz) == (2, 300, 10.0)
    assert {k: (s.shape, np.dtype(s.dtype)) for k, s in task.observation_spec.items()} == {
        k: (shape, np.dtype(dtype)) for k, (shape, dtype) in EXPECTED[obs_type].items()
    }
    env = task.make_env(0)
    obs, info = env.reset(seed=0)
    _check(obs, obs_type)
    assert info["success"] is False and 0.0 <= info["coverage"] <= 1.0
    obs, reward, terminated, truncated, info = env.step(np.array([256.0, 256.0], np.float32))
    _check(obs, obs_type)
    assert isinstance(reward, float) and isinstance(info["success"], bool)
    assert not terminated and not truncated
    env.close()


def test_observations_agree_across_types():
    state = PushTEnv("state").reset(seed=3)[0]["state"]
    keypoints = PushTEnv("keypoints").reset(seed=3)[0]
    np.testing.assert_allclose(keypoints["agent_pos"], state[:2])
    # The first 4 corners are the bar's; its centre is 15 px along the block's y axis from the
    # block's origin (the middle of the bar's top edge).
    bar_centre = keypoints["keypoint"].reshape(8, 2)[:4].mean(0)
    angle = state[4]
    expected = state[2:4] + 15.0 * np.array([-np.sin(angle), np.cos(angle)])
    np.testing.assert_allclose(bar_centre, expected, atol=1e-3)


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_same_seed_same_observations(obs_type):
    def first_steps(seed):
        env = PushTEnv(obs_type)
        obs = [env.reset(seed=seed)[0]]
        for target in ([100.0, 100.0], [300.0, 200.0]):
            obs.append(env.step(np.array(target))[0])
        return obs

    a, b, other = first_steps(7), first_steps(7), first_steps(8)
    for oa, ob in zip(a, b, strict=True):
        for key in oa:
            np.testing.assert_array_equal(oa[key], ob[key])
    assert any(not np.array_equal(a[0][k], other[0][k]) for k in a[0])


def test_success_when_block_is_at_goal_pose():
    env = PushTEnv("state")
    _, info = env.reset(seed=0)
    assert info["coverage"] < 0.95
    far_corner = np.array([40.0, 40.0])
    env.physics.agent.position = tuple(far_corner)
    set_block_pose(env, GOAL_POSE)
    _, reward, terminated, _, info = env.step(far_corner)
    assert info["success"] and terminated and reward == 1.0
    assert info["coverage"] > 0.99
    # A 10 px shift is visibly off the goal and must not count.
    set_block_pose(env, GOAL_POSE + np.array([10.0, 0.0, 0.0]))
    _, _, _, _, info = env.step(far_corner)
    assert not info["success"] and info["coverage"] < 0.95


def test_physics_copy_predicts_the_env():
    from dpjax.envs.pusht_expert import PhysicsCopy

    env = PushTEnv("state")
    obs, _ = env.reset(seed=5)
    copy = PhysicsCopy(env.physics)
    copy.load(env.physics)
    block = obs["state"][2:4].astype(np.float64)
    # Drive straight through the block so that contact dynamics are part of the comparison.
    targets = [obs["state"][:2] + (block - obs["state"][:2]) * i / 20 for i in range(1, 31)]
    for target in targets:
        env.step(target)
        copy.step(target)
    real = env.physics
    assert np.linalg.norm(np.subtract(real.block.position, obs["state"][2:4])) > 1.0  # it moved
    np.testing.assert_allclose(tuple(copy.block.position), tuple(real.block.position), atol=1e-6)
    np.testing.assert_allclose(copy.block.angle, real.block.angle, atol=1e-8)


@pytest.mark.parametrize("seed", [3, 10])
def test_expert_succeeds_at_human_speed(seed):
    task = make_task("pusht")
    episode = rollout_expert(task, seed)
    assert episode["episode_metadata"]["success"]
    steps = episode["steps"]
    assert len(steps["action"]) < task.max_episode_steps
    targets = np.concatenate([steps["observation"]["state"][:1, :2], steps["action"]])
    assert np.linalg.norm(np.diff(targets, axis=0), axis=-1).max() <= 12.0 + 1e-3


def test_unknown_obs_type_is_a_config_error():
    with pytest.raises(ConfigError, match="obs_type"):
        make_task("pusht", obs_type="depth")


def test_missing_package_names_the_extra(monkeypatch):
    # A None entry makes `import gym_pusht` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "gym_pusht", None)
    with pytest.raises(MissingExtraError, match=r"dpjax\[pusht\]"):
        make_task("pusht")
    with pytest.raises(MissingExtraError, match=r"dpjax\[pusht\]"):
        PushTEnv("state")
