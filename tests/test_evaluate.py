"""Evaluation metrics on hand-made trajectories, and rollouts through the real loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import evaluate
from dpjax.envs import multimodal as mm
from dpjax.envs.tasks import multimodal_task


def test_wilson_interval_known_values():
    lo, hi = evaluate.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = evaluate.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)
    assert evaluate.wilson_interval(20, 20)[1] == 1.0
    # The interval holds its own estimate at every count (100/100 rounded to 1 - 1e-16 once).
    for trials in range(1, 301):
        for successes in (0, 1, trials // 2, trials - 1, trials):
            lo, hi = evaluate.wilson_interval(successes, trials)
            assert 0.0 <= lo <= successes / trials <= hi <= 1.0, (successes, trials)


def test_jerk_of_known_trajectories():
    t = np.arange(10, dtype=np.float64)
    linear = np.stack([t, 2 * t], -1)[None]  # constant velocity: zero jerk
    cubic = np.stack([t**3, np.zeros_like(t)], -1)[None]  # third difference of t^3 is 6
    lengths = np.array([10])
    assert evaluate.mean_squared_jerk(linear, lengths) == pytest.approx(0.0)
    assert evaluate.mean_squared_jerk(cubic, lengths) == pytest.approx(36.0)
    # Only the executed prefix counts: a spike after `length` is ignored.
    spiky = cubic.copy()
    spiky[0, 8:] = 1e6
    assert evaluate.mean_squared_jerk(spiky, np.array([8])) == pytest.approx(36.0)


def test_chunk_boundary_jumps():
    # Steps of 0.1 inside chunks of 4 and a jump of 1.0 at each chunk start.
    actions, x = [], 0.0
    for t in range(12):
        x += 1.0 if (t % 4 == 0 and t > 0) else (0.1 if t > 0 else 0.0)
        actions.append([x, 0.0])
    boundary, inside = evaluate.chunk_boundary_jumps(np.asarray([actions]), np.array([12]), 4)
    assert boundary == pytest.approx(1.0) and inside == pytest.approx(0.1)


def test_mode_assignment_of_hand_made_trajectories():
    cup = jnp.zeros(2)
    north = jnp.stack([jnp.linspace(-0.6, 0.0, 20), jnp.linspace(0.0, 0.13, 20)], -1)
    south = north * jnp.array([1.0, -1.0])
    east = jnp.stack([jnp.linspace(0.6, 0.13, 20), jnp.zeros(20)], -1)
    far = jnp.stack([jnp.linspace(-0.9, -0.6, 20), jnp.zeros(20)], -1)
    modes = [int(mm.classify_mode(p, cup)) for p in (north, east, south, far)]
    assert modes == [0, 1, 2, -1]


def replay_table(episodes, steps: int = 100):
    """(N, steps, A) each episode's actions, its last action repeated past its end."""
    return jnp.asarray(np.stack([
        np.concatenate([e["steps"]["action"], np.repeat(e["steps"]["action"][-1:], steps, 0)])
        [:steps]
        for e in episodes
    ]))  # fmt: skip


def test_rollout_loop_reproduces_expert_success():
    """Open-loop replay of the expert's actions through the closed-loop machinery: success and
    modes must equal what the expert measured when collecting (same seeds, same physics)."""
    task = multimodal_task()
    episodes = task.collect_episodes(16, 0)
    table = replay_table(episodes)

    class Replay:
        from dpjax.config import PolicyConfig

        config = PolicyConfig(kind="bc", obs_horizon=1, pred_horizon=100, action_horizon=100)
        plan_length = 100

        def plan_fn(self, **options):
            return lambda params, observation, key, guide: table

    rollouts = evaluate.rollout_multimodal(Replay(), None, num_episodes=16, seed=0)
    expert_success = np.array([e["episode_metadata"]["success"] for e in episodes])
    expert_modes = np.array([e["episode_metadata"]["mode"] for e in episodes])
    np.testing.assert_array_equal(rollouts["success"], expert_success)
    np.testing.assert_array_equal(rollouts["mode"], expert_modes)
    metrics = evaluate.summarize_multimodal(rollouts, action_horizon=100)
    assert metrics["success_rate"] == pytest.approx(expert_success.mean())
    assert metrics["collision_rate"] == 0.0


def test_goal_conditioned_rollouts_score_the_commanded_side():
    """Replaying goal-conditioned expert actions through the closed loop: the policy receives
    the goal observation, every commanded side is reached, goal_side_rate is 1. (That a grasp
    from another side fails is tested on the environment itself.)"""
    config = mm.MultimodalConfig(goal_conditioned=True)
    task = multimodal_task(goal_conditioned=True)
    episodes = task.collect_episodes(24, 0)
    table = replay_table(episodes)
    seen = []

    class Replay:
        from dpjax.config import PolicyConfig

        config = PolicyConfig(kind="bc", obs_horizon=1, pred_horizon=100, action_horizon=100,
                              low_dim_keys=("state", "goal"))  # fmt: skip
        plan_length = 100

        def plan_fn(self, **options):
            def act(params, observation, key, guide):
                seen.append(sorted(observation))
                return table

            return act

    rollouts = evaluate.rollout_multimodal(Replay(), None, num_episodes=24, seed=0,
                                           env_config=config)  # fmt: skip
    assert seen and seen[0] == ["goal", "state"]
    goals = np.array([e["steps"]["observation"]["goal"][0].argmax() for e in episodes])
    np.testing.assert_array_equal(rollouts["goal"], goals)
    assert rollouts["success"].all()
    metrics = evaluate.summarize_multimodal(rollouts, action_horizon=100)
    assert metrics["goal_side_rate"] == 1.0
    # A policy that reads the goal cannot run on the task without one.
    with pytest.raises(Exception, match="goal"):
        evaluate.rollout_multimodal(Replay(), None, num_episodes=2, seed=0)


def test_gym_summary_of_hand_made_rollouts():
    """Coverage is averaged per episode (max over the episode, and its last value); jerk and
    chunk jumps use each episode's own length; absent coverage (Meta-World) is left out."""
    line = np.stack([np.arange(6.0), np.zeros(6)], axis=1)  # constant velocity: zero jerk
    cubic = np.stack([np.arange(4.0) ** 3, np.zeros(4)], axis=1)  # third difference 6
    rollouts = {
        "success": [True, False],
        "length": [6, 4],
        "actions": [line, cubic],
        "max_coverage": [0.97, 0.40],
        "final_coverage": [0.96, 0.10],
    }
    metrics = evaluate.summarize_gym(rollouts, action_horizon=2)
    assert metrics["success_rate"] == 0.5 and metrics["episodes"] == 2
    assert metrics["max_coverage"] == pytest.approx((0.97 + 0.40) / 2)
    assert metrics["final_coverage"] == pytest.approx((0.96 + 0.10) / 2)
    assert metrics["mean_squared_jerk"] == pytest.approx((0.0 + 36.0) / 2)
    assert metrics["mean_episode_length"] == 5.0
    no_coverage = {**rollouts, "max_coverage": [float("nan")] * 2,
                   "final_coverage": [float("nan")] * 2}  # fmt: skip
    assert "max_coverage" not in evaluate.summarize_gym(no_coverage, action_horizon=2)


def test_pusht_mean_max_reward_of_hand_made_coverage_traces():
    """Diffusion Policy's metric: per episode clip(max coverage / 0.95, 0, 1), then the mean.
    The max (not the last) coverage counts, a success scores exactly 1, and the per-episode
    values are kept for re-aggregation."""
    traces = [
        [0.10, 0.50, 0.97],  # success: max above 0.95 -> 1.0
        [0.20, 0.76, 0.30],  # pushed in, then out again: max 0.76 -> 0.8
        [0.0, 0.0, 0.0],  # never touched -> 0.0
        [0.38, 0.57, 0.475],  # 0.57 / 0.95 = 0.6
    ]
    rollouts = {
        "seed": [100_000, 100_001, 100_002, 100_003],
        "success": [max(t) > 0.95 for t in traces],
        "length": [3, 3, 3, 3],
        "actions": [np.zeros((3, 2))] * 4,
        "max_coverage": [max(t) for t in traces],
        "final_coverage": [t[-1] for t in traces],
    }
    metrics = evaluate.summarize_gym(rollouts, action_horizon=2)
    per_episode = metrics["per_episode"]
    np.testing.assert_allclose(per_episode["max_reward"], [1.0, 0.8, 0.0, 0.6], atol=1e-12)
    assert metrics["mean_max_reward"] == pytest.approx((1.0 + 0.8 + 0.0 + 0.6) / 4)
    assert metrics["success_rate"] == 0.25
    assert per_episode["seed"] == rollouts["seed"]
    assert per_episode["success"] == [True, False, False, False]
    # The last coverage would give another number: the metric must use the max.
    assert metrics["mean_max_reward"] != pytest.approx(
        np.mean(evaluate.max_reward(rollouts["final_coverage"]))
    )
    no_coverage = {**rollouts, "max_coverage": [float("nan")] * 4}
    assert "mean_max_reward" not in evaluate.summarize_gym(no_coverage, action_horizon=2)
