"""Meta-World tasks: names, errors, shapes, scripted experts, object-position split.

Success rates over 100 seeds and collection speed: benchmarks/expert_success.py.
"""

import sys

import numpy as np
import pytest

from dpjax.envs import make_task, rollout_expert
from dpjax.envs import metaworld as mw  # before metaworld: it picks the headless GL backend
from dpjax.errors import ConfigError, MissingExtraError, UnknownNameError

pytest.importorskip("metaworld")

FOUR_TASKS = ("pick-place-v3", "push-v3", "peg-insert-side-v3", "drawer-open-v3")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    with pytest.raises(MissingExtraError, match=r"dpjax\[metaworld\]"):
        make_task("metaworld-pick-place-v3")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="pick-place-v3") as info:
        make_task("metaworld-pick-a-cup-v3")
    assert "peg-insert-side-v3" in str(info.value)
    assert set(FOUR_TASKS) <= set(mw.env_names())
    with pytest.raises(ConfigError):
        make_task("metaworld-push-v3", position_split="left")


def test_reset_step_shapes_and_determinism():
    task = make_task("metaworld-push-v3", max_episode_steps=3)
    assert task.name == "metaworld-push-v3" and task.action_dim == 4
    assert task.observation_spec["state"].shape == (39,) and "image" not in task.observation_spec
    env = task.make_env(0)
    obs, info = env.reset(seed=5)
    assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
    assert info["success"] is False
    truncated = False
    for _ in range(3):
        assert not truncated
        obs, reward, terminated, truncated, info = env.step(np.array([2.0, 0, 0, 0]))  # clipped
        assert obs["state"].shape == (39,) and isinstance(reward, float)
        assert isinstance(info["success"], bool) and not terminated
    assert truncated  # at max_episode_steps
    env.close()
    # Same seed, same scene, whether the env is fresh or reused from the pool.
    other = task.make_env(1)
    again, _ = other.reset(seed=5)
    different, _ = other.reset(seed=6)
    other.close()
    first = make_task("metaworld-push-v3").make_env(0)
    fresh, _ = first.reset(seed=5)
    first.close()
    np.testing.assert_array_equal(again["state"], fresh["state"])
    assert not np.array_equal(again["state"], different["state"])  # goal/object randomized


@pytest.mark.parametrize("env_name", FOUR_TASKS)
def test_scripted_expert_succeeds(env_name):
    task = make_task(f"metaworld-{env_name}")
    for seed in (0, 1):
        episode = rollout_expert(task, seed)
        meta = episode["episode_metadata"]
        assert meta["success"], (env_name, seed)
        assert meta["task"] == task.name and meta["mode"] == -1
        steps = episode["steps"]
        assert steps["observation"]["state"].shape == (len(steps["action"]), 39)
        assert steps["action"].shape[1] == 4 and np.abs(steps["action"]).max() <= 1.0


def test_action_noise_changes_actions_and_is_seeded():
    clean = rollout_expert(make_task("metaworld-drawer-open-v3"), 0)
    noisy_task = make_task("metaworld-drawer-open-v3", action_noise=0.1)
    noisy = rollout_expert(noisy_task, 0)
    again = rollout_expert(noisy_task, 0)
    n = min(len(clean["steps"]["action"]), len(noisy["steps"]["action"]))
    assert not np.allclose(clean["steps"]["action"][:n], noisy["steps"]["action"][:n])
    np.testing.assert_array_equal(noisy["steps"]["action"], again["steps"]["action"])


def test_position_split_is_a_fixed_rule():
    low, high = np.array([-0.1, 0.6]), np.array([0.1, 0.7])
    assert mw.is_heldout_position(np.array([0.05, 0.68]), low, high)
    assert not mw.is_heldout_position(np.array([0.05, 0.62]), low, high)
    assert not mw.is_heldout_position(np.array([-0.05, 0.68]), low, high)
    # A box that does not vary y (drawer-open) splits on x alone.
    assert mw.is_heldout_position(
        np.array([0.05, 0.9]), np.array([-0.1, 0.9]), np.array([0.1, 0.9])
    )
    for split in ("train", "heldout"):
        env = make_task("metaworld-pick-place-v3", position_split=split).make_env(0)
        for seed in range(8):
            env.reset(seed=seed)
            x, y = env.object_position[:2]
            assert ((x > 0.0) and (y > 0.65)) == (split == "heldout"), (split, seed, x, y)
        env.close()


def test_image_observations_are_opt_in():
    task = make_task("metaworld-reach-v3", image_size=32, max_episode_steps=2)
    assert task.observation_spec["image"].shape == (32, 32, 3)
    env = task.make_env(0)
    try:
        obs, _ = env.reset(seed=0)
    except Exception as e:  # no EGL/OSMesa on this machine
        env.close()
        pytest.skip(f"MuJoCo rendering unavailable: {e}")
    obs, *_ = env.step(np.zeros(4))
    env.close()
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 0  # a scene, not a blank frame
    # Proprioception beside the image: the hand and gripper, not the objects.
    assert task.observation_spec["agent_pos"].shape == (4,)
    np.testing.assert_array_equal(obs["agent_pos"], obs["state"][:4])
