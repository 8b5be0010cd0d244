"""The pure-JAX three-approach task: expert statistics, why averaging fails, purity, adapter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.envs import make_task, rollout_expert
from dpjax.envs import multimodal as mm
from dpjax.envs import multimodal_expert as mx
from dpjax.envs.demonstrators import QUALITIES
from dpjax.errors import ConfigError


@pytest.fixture(scope="module")
def expert_batch():
    return mx.expert_rollouts_numpy(0, 2000)  # shares its compiled program with collection


def test_expert_mode_frequencies_and_success(expert_batch):
    out = expert_batch
    frequencies = np.bincount(out["chosen_mode"], minlength=3) / len(out["chosen_mode"])
    np.testing.assert_allclose(frequencies, mm.MODE_PROBS, atol=0.03)
    assert out["success"].mean() >= 0.95
    assert not out["collision"].any()
    # The geometric classifier recovers the mode the expert chose.
    ok = out["success"]
    np.testing.assert_array_equal(out["mode"][ok], out["chosen_mode"][ok])


def test_expert_motion_is_bounded_and_smooth(expert_batch):
    positions = expert_batch["observation"][..., :2]
    valid = expert_batch["valid"]
    steps = np.diff(positions, axis=1)
    both = valid[:, 1:, None] & valid[:, :-1, None]
    assert np.linalg.norm(steps, axis=-1).max() <= mm.MAX_STEP + 1e-6
    # A smooth path changes velocity by a small fraction of the step bound.
    assert np.abs(np.diff(steps, axis=1) * both[:, 1:]).max() < 0.5 * mm.MAX_STEP


_fast_jit = functools.partial(jax.jit, compiler_options=mm.FAST_COMPILE)
_step = _fast_jit(mm.step)
_reset_batch = _fast_jit(jax.vmap(mm.reset))  # one compiled program shared by the tests below
_keys = jax.random.split(jax.random.key(0), 16)


@_fast_jit
def _averaged_outcomes(seeds, weights):
    """Per seed: do the 3 expert plans succeed alone (N, 3), and does their average (N,)?"""

    def replay(state, targets):
        def body(state, _):
            state, *_ = mm.step(state, mx.expert_action(state, targets))
            return state, None

        return jax.lax.scan(body, state, None, length=100)[0]

    def one(seed):
        reset_key, plan_key, _ = mm.episode_keys(jax.random.key(seed))
        start = mm.reset(reset_key)
        plans = jax.vmap(lambda m: mx.expert_plan(plan_key, start, m, 100))(jnp.arange(3))
        alone = jax.vmap(lambda plan: replay(start, plan).success)(plans)
        averaged = replay(start, jnp.einsum("m,mtd->td", weights, plans))
        return alone, averaged.success, averaged.collided

    return jax.vmap(one)(seeds)


@pytest.mark.parametrize("weights", [(1 / 3, 1 / 3, 1 / 3), mm.MODE_PROBS])
def test_mode_averaged_trajectory_fails(weights):
    """What behaviour cloning with a mean-squared loss learns: the average of the modes."""
    alone, averaged_success, averaged_collided = _averaged_outcomes(
        jnp.arange(16), jnp.asarray(weights, jnp.float32)
    )
    assert np.asarray(alone).all()  # each mode on its own succeeds from each start ...
    assert not np.asarray(averaged_success).any()  # ... their average does not:
    assert np.asarray(averaged_collided).all()  # it runs into the wall


def test_reset_and_step_are_pure_jittable_and_vmappable():
    states = _reset_batch(_keys)
    assert states.agent.shape == (16, 2) and states.cup.shape == (16, 2)
    again = _reset_batch(jnp.array(_keys))  # a fresh copy of the same keys
    np.testing.assert_array_equal(states.agent, again.agent)
    np.testing.assert_array_equal(states.cup, again.cup)
    assert len(np.unique(np.asarray(states.agent[:, 0]))) == 16  # randomized per key
    actions = states.agent + jnp.array([0.0, 0.03])
    batched = _fast_jit(jax.vmap(mm.step))(states, actions)
    single = _step(jax.tree.map(lambda x: x[3], states), actions[3])
    np.testing.assert_allclose(batched[1][3], single[1], atol=1e-6)
    obs = batched[1]
    assert obs.shape == (16, mm.STATE_DIM) and obs.dtype == jnp.float32


def test_step_rules():
    state = jax.tree.map(lambda x: x[1], _reset_batch(_keys))
    far = state.agent + jnp.array([0.0, 1.0])
    moved, *_ = _step(state, far)
    np.testing.assert_allclose(jnp.linalg.norm(moved.agent - state.agent), mm.MAX_STEP, rtol=1e-5)
    # Straight east runs into the wall, which ends the episode and freezes the state.
    hit = state
    for _ in range(40):
        hit, _, _, done, info = _step(hit, hit.cup)
    assert bool(info["collision"]) and bool(done) and not bool(info["success"])
    after, _, reward, _, _ = _step(hit, hit.cup + 0.5)
    np.testing.assert_array_equal(after.agent, hit.agent)
    assert float(reward) == 0.0
    # A step onto the north grasp point (placed right next to it) succeeds.
    near = state.replace(agent=state.cup + jnp.array([0.0, 0.18]))
    _, _, reward, done, info = _step(near, state.cup + jnp.array([0.0, 0.13]))
    assert bool(info["success"]) and bool(done) and float(reward) == 1.0
    assert int(info["mode"]) == 0


def _line(a, b, n=20):
    return jnp.linspace(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), n)


def test_classify_mode_on_hand_made_trajectories():
    cup = jnp.array([0.3, 0.0])
    over = jnp.concatenate([_line((-0.6, 0.0), (-0.3, 0.5)), _line((-0.3, 0.5), (0.3, 0.13))])
    under_east = jnp.concatenate([_line((-0.6, 0.0), (0.7, -0.4)), _line((0.7, -0.4), (0.43, 0.0))])
    south = jnp.concatenate([_line((-0.6, 0.0), (0.3, -0.5)), _line((0.3, -0.5), (0.32, -0.14))])
    west = _line((-0.6, 0.0), (0.12, 0.02))  # straight at the cup from the blocked side
    far = _line((-0.6, 0.0), (-0.6, 0.8))
    classify = _fast_jit(mm.classify_mode)
    assert int(classify(over, cup)) == 0
    assert int(classify(under_east, cup)) == 1
    assert int(classify(south, cup)) == 2
    assert int(classify(west, cup)) == -1
    assert int(classify(far, cup)) == -1
    # Masked-out steps do not count: only the far first half of `over` remains.
    valid = jnp.arange(over.shape[0]) < 10
    assert int(classify(over, cup, valid)) == -1
    states = jnp.concatenate([south, jnp.broadcast_to(cup, south.shape), 0 * south], axis=1)
    assert int(_fast_jit(mm.classify_observations)(states)) == 2


def test_run_episodes_with_a_batched_policy():
    """A unimodal 'straight at the cup' policy in the loop: one program, every episode fails."""

    def policy(carry, obs, key):
        del key
        return carry + 1, obs[:, 2:4]

    run = _fast_jit(mm.run_episodes, static_argnums=(1, 2))
    out = run(jax.random.key(0), 8, policy, jnp.zeros(()))
    assert out["positions"].shape == (8, 101, 2)
    assert not out["success"].any() and out["collision"].all()
    assert (out["mode"] == -1).all()


def test_gym_adapter_and_batched_collection_agree():
    task = make_task("multimodal")
    assert task.modes == ("north", "east", "south")
    assert task.observation_spec["state"].shape == (6,) and task.action_dim == 2
    env = task.make_env(0)
    assert all(callable(getattr(env, name, None)) for name in ("reset", "step", "close"))
    obs, info = env.reset(seed=3)
    obs_again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs["state"], obs_again["state"])
    assert obs["state"].dtype == np.float32 and info["mode"] == -1 and not info["success"]
    obs, reward, terminated, truncated, info = env.step(obs["state"][:2] + 0.01)
    assert obs["state"].shape == (6,) and not terminated and not truncated
    assert isinstance(reward, float) and info["success"] is False
    env.close()

    episodes = [rollout_expert(task, seed) for seed in (10, 11, 12)]
    batched = task.collect_episodes(3, seed=10)
    for slow, fast in zip(episodes, batched, strict=True):
        assert slow["episode_metadata"]["success"]
        assert slow["episode_metadata"]["mode"] in (0, 1, 2)
        assert slow["episode_metadata"] == fast["episode_metadata"]
        assert slow["steps"]["is_terminal"][-1] and slow["steps"]["reward"][-1] == 1.0
        for key in ("action", "reward", "is_first", "is_last", "is_terminal", "discount"):
            np.testing.assert_allclose(slow["steps"][key], fast["steps"][key], atol=1e-6)
        np.testing.assert_allclose(
            slow["steps"]["observation"]["state"], fast["steps"]["observation"]["state"], atol=1e-6
        )
    noisy = task.collect_episodes(3, seed=10, action_noise=0.01)
    assert not np.allclose(noisy[0]["steps"]["action"][:5], batched[0]["steps"]["action"][:5])


def test_goal_conditioned_task_commands_a_side():
    """goal_conditioned: the reset draws the side (at the expert's frequencies), the one-hot goal
    is observed, the expert takes that side, and only a grasp from that side succeeds."""
    config = mm.MultimodalConfig(goal_conditioned=True)
    out = mx.expert_rollouts_numpy(0, 600, config)
    goals = out["goal"][:, 0].argmax(-1)
    np.testing.assert_allclose(np.bincount(goals, minlength=3) / 600, mm.MODE_PROBS, atol=0.05)
    np.testing.assert_array_equal(out["chosen_mode"], goals)
    assert out["success"].all() and (out["mode"] == goals).all()
    assert (out["goal"].sum(-1)[out["valid"]] == 1).all()  # a one-hot at every valid step
    # The same start as the default task (the goal's extra uniform does not move it).
    start = mm.reset(mm.episode_keys(jax.random.key(5))[0], config)
    default = mm.reset(mm.episode_keys(jax.random.key(5))[0])
    np.testing.assert_array_equal(start.agent, default.agent)
    assert int(default.goal) == -1 and int(start.goal) in (0, 1, 2)
    # Success needs the commanded side: the east grasp point succeeds only when east is asked.
    east = mm.GRASP_DISTANCE * mm.SIDES[1]
    assert bool(mm.grasped(jnp.asarray(east), 1)) and not bool(mm.grasped(jnp.asarray(east), 0))
    assert bool(mm.grasped(jnp.asarray(east)))  # any side when no goal
    task = make_task("multimodal", goal_conditioned=True)
    assert task.observation_spec["goal"].shape == (3,)
    episode = task.collect_episodes(1, seed=7)[0]
    assert set(episode["steps"]["observation"]) == {"state", "goal"}
    obs, _ = task.make_env(7).reset(seed=7)
    np.testing.assert_array_equal(obs["goal"], episode["steps"]["observation"]["goal"][0])


def test_task_options_as_a_dataset_records_them_rebuild_the_config():
    """`dpjax eval` rebuilds the multimodal task from collection info (JSON: lists, not tuples)."""
    options = {"goal_conditioned": True, "mode_probs": [0.5, 0.3, 0.2], "max_episode_steps": 80}
    config = mm.config_from_options(**options)
    assert config == mm.MultimodalConfig(
        goal_conditioned=True, mode_probs=(0.5, 0.3, 0.2), max_episode_steps=80
    )
    hash(config)  # a jit static argument
    assert mm.config_from_options() == mm.DEFAULT_CONFIG


def test_mixed_quality_demonstrators_at_their_proportions_all_succeed():
    """quality_mix: the demonstrators come at the requested frequencies, each kind succeeds on
    seeds 0..1999, and each differs from the expert the way its name says."""
    mix = (0.4, 0.2, 0.2, 0.2)
    config = mm.config_from_options(quality_mix=mix)
    out = mx.expert_rollouts_numpy(0, 2000, config)
    quality, lengths = out["quality"], out["valid"].sum(1)
    frequencies = np.bincount(quality, minlength=4) / 2000
    np.testing.assert_allclose(frequencies, mix, atol=4 * np.sqrt(0.25 / 2000))  # 4 sigma
    # the side is still the expert's choice, at its frequencies
    np.testing.assert_allclose(np.bincount(out["chosen_mode"], minlength=3) / 2000,
                               mm.MODE_PROBS, atol=0.03)  # fmt: skip
    for i, name in enumerate(QUALITIES):
        assert out["success"][quality == i].mean() >= 0.99, name
    by = {name: quality == i for i, name in enumerate(QUALITIES)}
    proficient = lengths[by["proficient"]].mean()
    assert lengths[by["slow"]].mean() > 1.25 * proficient  # 1 / SLOW_SPEED = 1.43x the cruise
    extra = lengths[by["hesitant"]].mean() - proficient
    assert 0.8 * mm.HESITATION_STEPS < extra < 1.2 * mm.HESITATION_STEPS
    # the hesitant stand still (moves below 1e-4) for HESITATION_STEPS in a row
    moves = np.linalg.norm(np.diff(out["action"], axis=1), axis=-1)
    for e in np.flatnonzero(by["hesitant"])[:20]:
        still = np.convolve(moves[e, : lengths[e] - 1] < 1e-4, np.ones(mm.HESITATION_STEPS - 1),
                            "valid")  # fmt: skip
        assert still.max() == mm.HESITATION_STEPS - 1
    # the noisy jitter: second differences of the actions far above the smooth expert's
    jerk = np.abs(np.diff(out["action"], n=2, axis=1)).mean(axis=(1, 2))
    assert jerk[by["noisy"]].mean() > 5 * jerk[by["proficient"]].mean()

    # the default task is untouched by the option's existence; episodes name their quality
    task = make_task("multimodal", quality_mix=list(mix))  # as JSON records it
    episodes = task.collect_episodes(8, seed=0)
    assert [e["episode_metadata"]["quality"] for e in episodes] == [
        QUALITIES[q] for q in quality[:8]
    ]
    assert "quality" not in make_task("multimodal").collect_episodes(1)[0]["episode_metadata"]
    # the gym adapter's expert is the same demonstrator (noise and hesitation included)
    for seed in [int(np.flatnonzero(by[k])[0]) for k in ("noisy", "hesitant", "slow")]:
        slow = rollout_expert(task, seed)
        np.testing.assert_allclose(slow["steps"]["action"],
                                   task.collect_episodes(1, seed=seed)[0]["steps"]["action"],
                                   atol=1e-5)  # fmt: skip
    with pytest.raises(ConfigError, match="quality_mix"):
        mm.config_from_options(quality_mix=(1.0, -0.5, 0.0, 0.0))
    with pytest.raises(ConfigError, match="quality_mix"):
        mm.config_from_options(quality_mix=(1.0, 0.0))


def test_a_mixed_quality_dataset_counts_its_demonstrators(tmp_path):
    from dpjax.data import load_dataset, write_dataset

    task = make_task("multimodal", quality_mix=[0.5, 0.0, 0.5, 0.0])
    episodes = task.collect_episodes(40, seed=0)
    write_dataset(episodes, tmp_path / "mixed", name="mixed")
    counted = load_dataset(tmp_path / "mixed").stats.info["episodes"]["qualities"]
    names = [e["episode_metadata"]["quality"] for e in episodes]
    assert counted == {q: names.count(q) for q in set(names)} and set(counted) == {
        "proficient", "hesitant"
    }  # fmt: skip
