"""The simulator evaluation loop (`evaluate.rollout_gym`) against the scripted experts.

Driven by a task's scripted expert, the loop that evaluates learned policies (batched envs in
lockstep, receding horizon, success bookkeeping) must reproduce what the expert measured in
its own rollouts (`rollout_expert`) on the same seeds: the same success per episode, the
same lengths, the same actions. A policy that ignores its observations must fail there.
"""

import dataclasses

import numpy as np
import pytest

from dpjax import evaluate
from dpjax.config import PolicyConfig
from dpjax.envs import make_task, rollout_expert


class ExpertController:
    """A task's scripted expert as a batched controller for `rollout_gym(..., act_fn=...)`.

    Each episode gets its own expert, made as `rollout_expert` makes it
    (`task.make_expert(env, seed)`, after the reset) when its env is first seen. The expert is
    closed loop, so it replans every step: obs_horizon = action_horizon = 1.
    """

    def __init__(self, task, observation_keys=("state",)):
        self.task = task
        self.config = PolicyConfig(
            kind="bc",
            obs_horizon=1,
            pred_horizon=1,
            action_horizon=1,
            low_dim_keys=tuple(observation_keys),
            action_dim=task.action_dim,
        )
        self._experts: dict[int, tuple] = {}  # seed -> (env, expert)

    def __call__(self, observations, key, *, envs, seeds):
        actions = []
        for i, (env, seed) in enumerate(zip(envs, seeds, strict=True)):
            env_and_expert = self._experts.get(seed)
            if env_and_expert is None or env_and_expert[0] is not env:
                env_and_expert = self._experts[seed] = (env, self.task.make_expert(env, seed))
            latest = {k: v[i, -1] for k, v in observations.items()}
            actions.append(np.asarray(env_and_expert[1](latest), np.float32))
        return np.stack(actions)[:, None]  # (B, 1, A)


class ConstantPolicy:
    """Ignores its observations: the same action chunk every time (through `plan_fn`, the
    path learned policies take)."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)
        self.config = PolicyConfig(
            kind="bc", action_dim=len(self.action), obs_horizon=2, pred_horizon=16, action_horizon=8
        )

    plan_length = 15  # pred_horizon - obs_horizon + 1

    def plan_fn(self, **options):
        def chunk(params, observation, key, guide):
            batch = next(iter(observation.values())).shape[0]
            return np.broadcast_to(self.action, (batch, self.plan_length, len(self.action)))

        return chunk


def expert_rollouts(task, seeds):
    episodes = [rollout_expert(task, s) for s in seeds]
    return {
        "success": [bool(e["episode_metadata"]["success"]) for e in episodes],
        "length": [len(e["steps"]["action"]) for e in episodes],
        "actions": [e["steps"]["action"] for e in episodes],
    }


def check_loop_reproduces_expert(task, seeds, num_envs):
    expected = expert_rollouts(task, seeds)
    controller = ExpertController(task)
    rollouts = evaluate.rollout_gym(
        task,
        controller,
        None,
        num_episodes=len(seeds),
        seed=seeds[0],
        num_envs=num_envs,
        act_fn=controller,
    )
    assert rollouts["success"] == expected["success"]
    assert rollouts["length"] == expected["length"]
    for got, want in zip(rollouts["actions"], expected["actions"], strict=True):
        np.testing.assert_array_equal(got, want)
    metrics = evaluate.summarize_gym(rollouts, action_horizon=1)
    assert metrics["episodes"] == len(seeds)
    assert metrics["success_rate"] == pytest.approx(np.mean(expected["success"]))
    return metrics


def test_pusht_expert_through_the_loop_reproduces_its_success():
    pytest.importorskip("gym_pusht")
    task = make_task("pusht")
    # 5 episodes in envs of 3: one full batch, one partial, episodes ending at different steps.
    metrics = check_loop_reproduces_expert(task, list(range(5)), num_envs=3)
    assert metrics["success_rate"] == 1.0  # the expert's measured rate on these seeds
    assert metrics["max_coverage"] > 0.95


def test_metaworld_noisy_expert_through_the_loop_reproduces_its_success():
    pytest.importorskip("metaworld")
    from dpjax.envs import metaworld  # noqa: F401  (picks the headless GL backend first)

    # Seeded action noise: the loop must hand each episode its own seed. At noise 0.5 the
    # expert fails some seeds (1 and 7 of 0..7), so the comparison sees both outcomes.
    task = make_task("metaworld-pick-place-v3", action_noise=0.5, max_episode_steps=150)
    metrics = check_loop_reproduces_expert(task, list(range(8)), num_envs=3)
    assert 0.0 < metrics["success_rate"] < 1.0


@pytest.mark.parametrize(
    "task_name, options, action",
    [
        ("pusht", {}, [60.0, 60.0]),
        ("metaworld-pick-place-v3", {"max_episode_steps": 150}, [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_a_policy_that_ignores_its_observations_fails(task_name, options, action):
    pytest.importorskip("gym_pusht" if task_name == "pusht" else "metaworld")
    task = make_task(task_name, **options)
    seeds = list(range(4))
    assert all(expert_rollouts(task, seeds)["success"])
    rollouts = evaluate.rollout_gym(
        task, ConstantPolicy(action), None, num_episodes=4, seed=0, num_envs=4
    )
    metrics = evaluate.summarize_gym(rollouts, action_horizon=8)
    assert metrics["success_rate"] == 0.0
    assert rollouts["length"] == [task.max_episode_steps] * 4
    np.testing.assert_array_equal(
        rollouts["actions"][0], np.tile(action, (task.max_episode_steps, 1))
    )


def test_frames_of_the_first_episode_make_a_strip(tmp_path):
    pytest.importorskip("gym_pusht")
    pytest.importorskip("matplotlib")
    task = make_task("pusht")
    rollouts = evaluate.rollout_gym(
        task, ConstantPolicy([60.0, 60.0]), None, num_episodes=2, seed=0, num_envs=2, frames=5
    )
    steps = [step for step, _ in rollouts["frames"]]
    assert steps == [0, 60, 120, 180, 240, 300]  # every 300 // 5 steps, last one included
    assert all(image.shape == (680, 680, 3) and image.dtype == np.uint8
               for _, image in rollouts["frames"])  # fmt: skip
    assert rollouts["frames"][0][1].std() > 0  # a picture, not a blank
    path = evaluate.plot_frames(rollouts["frames"], tmp_path / "strip.png", "pusht")
    assert path.stat().st_size > 5_000


def test_an_env_that_cannot_render_gives_its_numbers_and_no_frames(monkeypatch):
    """A headless machine without a GL backend: the frames are dropped with a warning, the
    rollouts are not."""
    pytest.importorskip("gym_pusht")
    task = make_task("pusht")
    calls = []

    def make_env(seed):
        env = task.make_env(seed)

        def broken_render():
            calls.append(seed)
            if len(calls) > 1:
                raise RuntimeError("gladLoadGL error")
            return np.zeros((8, 8, 3), np.uint8)

        env.render = broken_render
        return env

    headless = dataclasses.replace(task, make_env=make_env, max_episode_steps=40)
    with pytest.warns(RuntimeWarning, match="no frames: RuntimeError: gladLoadGL error"):
        rollouts = evaluate.rollout_gym(
            headless, ConstantPolicy([60.0, 60.0]), None, num_episodes=2, seed=0, num_envs=2,
            frames=4,
        )  # fmt: skip
    assert rollouts["frames"] == [] and len(calls) == 2  # one frame, one failure, then none
    assert rollouts["length"] == [40, 40] and len(rollouts["max_coverage"]) == 2


def test_rollouts_report_the_modes_of_a_multimodal_task():
    pytest.importorskip("metaworld")
    task = make_task(
        "metaworld-drawer-open-v3", action_noise=0.1, strategies=["direct", "left", "right"]
    )
    controller = ExpertController(task)
    rollouts = evaluate.rollout_gym(
        task, controller, None, num_episodes=6, seed=0, num_envs=3, act_fn=controller
    )
    expert = {"direct": 0.5, "left": 0.5, "right": 0.0}
    metrics = evaluate.summarize_gym(rollouts, 1, modes=task.modes, expert_mode_frequencies=expert)
    chosen = [controller._experts[s][1].strategy for s in range(6)]
    assert metrics["success_rate"] == 1.0 and len(set(chosen)) > 1
    assert metrics["per_episode"]["mode"] == [task.modes.index(c) for c in chosen]
    frequencies = {m: chosen.count(m) / 6 for m in task.modes}
    assert metrics["mode_frequencies"] == frequencies
    assert metrics["mode_frequency_error"] == pytest.approx(
        max(abs(frequencies[m] - expert[m]) for m in task.modes)
    )
    assert metrics["no_mode_fraction"] == 0.0
    # A task without modes reports none.
    plain = evaluate.summarize_gym(rollouts, 1)
    assert "mode_frequencies" not in plain and "mode" not in plain["per_episode"]
