"""Multimodal and mixed-quality demonstrators (dpjax.envs.demonstrators) on PushT and
Meta-World: the draws follow the requested probabilities, the experts still succeed, each
strategy shows as the mode the env classifies, each quality differs as named, and evaluation
reports the modes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from dpjax.envs import demonstrators, make_task, rollout_expert
from dpjax.errors import ConfigError


def within_sigmas(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"left": 0.5, "right": 0.25, "direct": 0.25}, (0.25, 0.5, 0.25)),
        (["left", "right"], (0.0, 0.5, 0.5)),
        ("direct,right", (0.5, 0.0, 0.5)),
        ({"left": 2.0, "right": 2.0}, (0.0, 0.5, 0.5)),
        (None, None),
    ],
)
def test_strategies_parse_to_probabilities_over_the_names(given, expected):
    assert demonstrators.check_strategies(given, ("direct", "left", "right")) == expected


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"up": 1.0}, "unknown strategy \\['up'\\]; valid strategies: direct, left, right"),
        ({"left": -1.0, "right": 2.0}, ">= 0"),
        ({"left": 0.0}, "positive sum"),
        (3, "mapping or a list of names"),
        ({"left": "x"}, ">= 0"),
    ],
)
def test_bad_strategies_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        demonstrators.check_strategies(bad, ("direct", "left", "right"))


def test_quality_mix_is_checked_and_normalized():
    assert demonstrators.check_quality_mix([2, 1, 1, 0]) == (0.5, 0.25, 0.25, 0.0)
    for bad in ([1, 0, 0], [1, -1, 0, 1], "fast", [0, 0, 0, 0], [None, 1, 1, 1]):
        with pytest.raises(ConfigError, match="quality_mix must be 4 probabilities"):
            demonstrators.check_quality_mix(bad)


def test_draws_follow_the_probabilities_and_are_seeded():
    n, probs = 4000, (0.2, 0.5, 0.3)
    draws = np.array(
        [demonstrators.draw(probs, s, demonstrators.STRATEGY_STREAM) for s in range(n)]
    )
    for k, p in enumerate(probs):
        assert within_sigmas(int(np.sum(draws == k)), n, p), (k, np.mean(draws == k))
    again = [demonstrators.draw(probs, s, demonstrators.STRATEGY_STREAM) for s in range(50)]
    assert again == draws[:50].tolist()
    mix = (0.4, 0.3, 0.2, 0.1)
    qualities = [demonstrators.draw_quality(mix, s) for s in range(n)]
    for name, p in zip(demonstrators.QUALITIES, mix, strict=True):
        assert within_sigmas(qualities.count(name), n, p), name
    # Another stream of the same seeds: independent of the strategy draws.
    quality_index = np.array([demonstrators.QUALITIES.index(q) for q in qualities])
    assert abs(np.corrcoef(draws, quality_index)[0, 1]) < 0.1


def counting_expert():
    calls = []

    def expert(obs):
        calls.append(obs)
        return np.array([len(calls), 0.5], np.float32)

    return expert, calls


def make_mixed(quality, **options):
    expert, calls = counting_expert()
    defaults = dict(hold=lambda last: last * 0, noise_std=0.1, hesitation_steps=5,
                    hesitate_within=20)  # fmt: skip
    return demonstrators.MixedQualityExpert(expert, quality, 3, **{**defaults, **options}), calls


def test_mixed_quality_expert_holds_jitters_and_slows_as_named():
    proficient, calls = make_mixed("proficient")
    actions = np.array([proficient({}) for _ in range(40)])
    np.testing.assert_array_equal(actions[:, 0], np.arange(1, 41))
    assert len(calls) == 40

    hesitant, calls = make_mixed("hesitant")
    actions = np.array([hesitant({}) for _ in range(40)])
    held = np.flatnonzero(np.all(actions == 0, axis=1))
    assert len(held) == 5 and np.all(np.diff(held) == 1) and held[0] < 20
    assert len(calls) == 35  # the expert is not asked while holding, and resumes after
    np.testing.assert_array_equal(actions[held[-1] + 1, 0], held[0] + 1)

    noisy, calls = make_mixed("noisy")
    actions = np.array([noisy({}) for _ in range(400)])
    noise = actions - np.stack([np.arange(1, 401), np.full(400, 0.5)], 1)
    assert 0.09 < noise.std() < 0.11 and abs(noise.mean()) < 0.02
    clipped, _ = make_mixed("noisy", clip=(0.0, 0.6))
    actions = np.array([clipped({}) for _ in range(100)])
    assert actions.max() == 0.6 and actions[:, 1].min() < 0.5

    slow, calls = make_mixed("slow", slow_every=3, slow_while=lambda last: last[0] < 10)
    actions = np.array([slow({}) for _ in range(30)])
    held = np.flatnonzero(np.all(actions == 0, axis=1))
    assert held.tolist() == [3, 6, 9, 12]  # every third step until the expert's action >= 10
    with pytest.raises(ConfigError, match="unknown demonstrator quality"):
        make_mixed("lazy")


# --- Meta-World -------------------------------------------------------------------------


def have(module: str) -> bool:
    # Not imported here: dpjax.envs.metaworld picks mujoco's headless GL backend first.
    return importlib.util.find_spec(module) is not None


needs_metaworld = pytest.mark.skipif(not have("metaworld"), reason="needs dpjax[metaworld]")
needs_pusht = pytest.mark.skipif(not have("gym_pusht"), reason="needs dpjax[pusht]")
STRATEGY_SEEDS = range(12)


@needs_metaworld
@pytest.mark.parametrize("env_name", ["drawer-open-v3", "pick-place-v3", "peg-insert-side-v3"])
def test_metaworld_strategies_succeed_and_show_as_their_modes(env_name):
    task = make_task(
        f"metaworld-{env_name}", action_noise=0.1, strategies=["direct", "left", "right"]
    )
    assert task.modes == ("direct", "left", "right")
    episodes = [rollout_expert(task, s)["episode_metadata"] for s in STRATEGY_SEEDS]
    assert {e["strategy"] for e in episodes} == {"direct", "left", "right"}
    assert sum(e["success"] for e in episodes) >= len(episodes) - 1
    shown = [task.modes[e["mode"]] if e["mode"] >= 0 else None for e in episodes]
    assert shown == [e["strategy"] for e in episodes]  # the classifier sees every strategy


@needs_metaworld
def test_metaworld_without_strategies_reports_no_mode_and_its_expert_is_unchanged():
    plain = make_task("metaworld-drawer-open-v3", action_noise=0.1)
    direct = make_task("metaworld-drawer-open-v3", action_noise=0.1, strategies={"direct": 1})
    a, b = rollout_expert(plain, 4), rollout_expert(direct, 4)
    assert a["episode_metadata"]["mode"] == -1 and "strategy" not in a["episode_metadata"]
    np.testing.assert_array_equal(a["steps"]["action"], b["steps"]["action"])
    assert b["episode_metadata"]["mode"] == 0  # "direct"


@needs_metaworld
def test_metaworld_reset_observes_the_new_scene():
    """Meta-World's own reset reports drawer-open's handle where the previous scene had it."""
    task = make_task("metaworld-drawer-open-v3")
    env = task.make_env(0)
    try:
        for seed in (10, 11):
            obs, _ = env.reset(seed=seed)
            after, *_ = env.step(np.zeros(4, np.float32))
            np.testing.assert_allclose(obs["state"][4:7], after["state"][4:7], atol=2e-3)
    finally:
        env.close()


def quality_episodes(task_name: str, quality: str, seeds, **options):
    mix = [float(q == quality) for q in demonstrators.QUALITIES]
    task = make_task(task_name, quality_mix=mix, **options)
    return [rollout_expert(task, s) for s in seeds]


@needs_metaworld
def test_metaworld_qualities_succeed_and_differ_as_named():
    seeds, name = range(6), "metaworld-pick-place-v3"
    runs = {q: quality_episodes(name, q, seeds) for q in demonstrators.QUALITIES}
    for q, episodes in runs.items():
        # A mix of the proficient expert alone is the plain task: no quality recorded.
        assert all(e["episode_metadata"].get("quality", "proficient") == q for e in episodes)
        assert sum(e["episode_metadata"]["success"] for e in episodes) >= 5, q
    length = {q: np.mean([len(e["steps"]["action"]) for e in runs[q]]) for q in runs}
    assert length["slow"] > 1.1 * length["proficient"]
    for episode in runs["hesitant"]:
        still = np.all(episode["steps"]["action"][:, :3] == 0, axis=1)
        assert np.convolve(still, np.ones(15), "valid").max() == 15  # 15 steps in a row
    jerk = {
        q: np.mean([np.mean(np.diff(e["steps"]["action"][:, :3], 2, axis=0) ** 2) for e in runs[q]])
        for q in ("proficient", "noisy")
    }
    assert jerk["noisy"] > 3 * jerk["proficient"]


# --- PushT -------------------------------------------------------------------------------


@needs_pusht
def test_pusht_strategies_succeed_and_show_as_their_modes():
    task = make_task("pusht", obs_type="keypoints", strategies={"bar": 0.5, "stem": 0.5})
    plain = make_task("pusht", obs_type="keypoints")
    episodes = [rollout_expert(task, s) for s in range(8)]
    meta = [e["episode_metadata"] for e in episodes]
    assert {m["strategy"] for m in meta} == {"bar", "stem"}
    assert all(m["success"] for m in meta)
    assert [task.modes[m["mode"]] for m in meta] == [m["strategy"] for m in meta]
    # The strategy changes what the expert does where its own first choice was the other part.
    free = [rollout_expert(plain, s) for s in range(8)]
    assert all(f["episode_metadata"]["mode"] == -1 for f in free)
    differs = [
        len(e["steps"]["action"]) != len(f["steps"]["action"])
        or not np.array_equal(e["steps"]["action"], f["steps"]["action"])
        for e, f in zip(episodes, free, strict=True)
    ]
    assert 1 <= sum(differs) < 8


@needs_pusht
def test_pusht_qualities_succeed_and_differ_as_named():
    seeds = range(3)
    runs = {q: quality_episodes("pusht", q, seeds, obs_type="keypoints")
            for q in demonstrators.QUALITIES}  # fmt: skip
    for q, episodes in runs.items():
        assert all(e["episode_metadata"].get("quality", "proficient") == q for e in episodes), q
        assert sum(e["episode_metadata"]["success"] for e in episodes) >= 2, q
    steps = {q: [np.linalg.norm(np.diff(e["steps"]["action"], axis=0), axis=1) for e in runs[q]]
             for q in runs}  # fmt: skip
    assert max(s.max() for s in steps["slow"]) <= 0.6 * 12.0 + 1e-3  # its top speed
    assert max(s.max() for s in steps["proficient"]) > 0.6 * 12.0 + 1
    for episode_steps in steps["hesitant"]:
        assert np.convolve(episode_steps == 0, np.ones(10), "valid").max() == 10
    wiggle = {q: np.mean([np.mean(np.diff(e["steps"]["action"], 2, axis=0) ** 2) for e in runs[q]])
              for q in ("proficient", "noisy")}  # fmt: skip
    assert wiggle["noisy"] > 3 * wiggle["proficient"]


# --- collection -----------------------------------------------------------


@needs_metaworld
def test_collect_records_strategies_and_qualities(tmp_path):
    from dpjax.data import load_dataset
    from dpjax.envs.collect import parse_task_options
    from dpjax.evaluate import demonstration_mode_frequencies

    out = tmp_path / "drawer"
    options = 'strategies={"left": 0.5, "right": 0.5}'
    command = [sys.executable, "-m", "dpjax.cli", "collect", "metaworld-drawer-open-v3",
               "--episodes", "6", "--out", str(out), "--task-option", options,
               "--task-option", "quality_mix=[0.5,0,0.5,0]"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    info = subprocess.run([sys.executable, "-m", "dpjax.cli", "data", "info", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "modes (mode: episodes): {" in info.stdout and "'left'" in info.stdout, info.stdout
    assert "demonstrators (quality: episodes)" in info.stdout
    dataset = load_dataset(out)
    meta = [e["episode_metadata"] for e in dataset]
    assert {m["quality"] for m in meta} <= {"proficient", "hesitant"}
    task = make_task("metaworld-drawer-open-v3", **parse_task_options([options]))
    expert = demonstration_mode_frequencies(dataset, task.modes)
    assert expert["direct"] == 0 and expert["left"] + expert["right"] == pytest.approx(1.0)
