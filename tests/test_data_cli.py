"""`dpjax collect` and `dpjax data info` on a tiny fake task defined here."""

import dataclasses

import numpy as np
import pytest

from dpjax import cli
from dpjax.data import load_dataset
from dpjax.envs import make_task
from dpjax.envs.base import ArraySpec, Task, rollout_expert
from dpjax.envs.collect import parse_option_value, parse_task_options, resolve_task
from dpjax.errors import ConfigError

GOAL = 1.0


class LineEnv:
    """A point on a line that must reach `goal`; seeds = 2 mod 3 get a broken actuator."""

    def __init__(self, seed: int, goal: float = GOAL):
        self.broken = seed % 3 == 2
        self.goal = goal
        self.x = 0.0

    def _obs(self):
        image = np.full((4, 4, 3), int(self.x * 100) % 256, np.uint8)
        return {"state": np.float32([self.x, self.goal]), "image": image}

    def reset(self, *, seed=None):
        self.x = 0.0
        return self._obs(), {}

    def step(self, action):
        self.x += float(action[0]) * (-1.0 if self.broken else 1.0)
        success = abs(self.x - self.goal) < 0.05
        return self._obs(), float(success), False, False, {"success": success}

    def close(self):
        pass


def make_fake_task(goal: float = GOAL, max_episode_steps: int = 8) -> Task:
    return Task(
        name="fake-line",
        observation_spec={
            "state": ArraySpec((2,), "float32"),
            "image": ArraySpec((4, 4, 3), "uint8"),
        },
        action_dim=1,
        max_episode_steps=max_episode_steps,
        make_env=lambda seed: LineEnv(seed, goal),
        make_expert=lambda env, seed: (
            lambda obs: np.clip([obs["state"][1] - obs["state"][0]], -0.3, 0.3)
        ),
    )


@pytest.fixture
def only_data_commands(monkeypatch):
    # Other commands are written elsewhere; this test must not depend on them importing.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("dpjax.commands.collect", "dpjax.commands.data"))


def test_collect_then_info(tmp_path, capsys, only_data_commands):
    out = tmp_path / "demos"
    task = f"{__name__}:make_fake_task"
    assert cli.main(["collect", task, "--episodes", "6", "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "kept 4/6 episodes (expert success rate 66.7%)" in printed and "steps/s" in printed

    dataset = load_dataset(out)
    assert len(dataset) == 4
    assert [dataset[i]["episode_metadata"]["seed"] for i in range(4)] == [0, 1, 3, 4]
    assert all(dataset[i]["episode_metadata"]["success"] for i in range(4))
    assert dataset.stats.info["collection"]["episodes_attempted"] == 6

    assert cli.main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "episodes: 4" in info
    assert "observation/image: (4, 4, 3) uint8" in info and "action: (1,) float32" in info
    assert "success rate 66.7%" in info and "std:" in info
    assert "successful episodes: 4/4" in info

    # An existing dataset is kept unless --overwrite.
    assert cli.main(["collect", task, "--episodes", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["collect", task, "--episodes", "2", "--out", str(out), "--overwrite"]) == 0
    assert len(load_dataset(out)) == 2


def test_collect_uses_a_batched_collector(tmp_path, capsys, only_data_commands, monkeypatch):
    if "collect_episodes" not in {f.name for f in dataclasses.fields(Task)}:
        pytest.skip("Task has no collect_episodes field yet")
    calls = []

    def collect_episodes(num_episodes, seed, action_noise=0.0):
        calls.append((num_episodes, seed))
        return [
            rollout_expert(make_fake_task(), seed + i, action_noise) for i in range(num_episodes)
        ]

    batched = dataclasses.replace(make_fake_task(), collect_episodes=collect_episodes)
    monkeypatch.setattr("dpjax.envs.collect.resolve_task", lambda name, options: batched)
    args = ["collect", "fake", "--episodes", "3", "--out", str(tmp_path / "d"), "--seed", "5"]
    assert cli.main(args) == 0
    assert calls == [(3, 5)]
    assert "kept 2/3" in capsys.readouterr().out


def test_execution_noise_perturbs_the_states_and_records_the_experts_own_action(
    tmp_path, capsys, only_data_commands, monkeypatch
):
    """DART: the executed action is noisy, the recorded one is what the expert said."""
    expert = make_fake_task().make_expert(None, 0)
    # A far goal: ~20 steps an episode, enough to measure the noise's spread.
    task = dataclasses.replace(make_fake_task(goal=6.0, max_episode_steps=40))
    monkeypatch.setattr("dpjax.envs.collect.resolve_task", lambda name, options: task)
    out = tmp_path / "dart"
    args = ["collect", "fake", "--episodes", "2", "--out", str(out), "--execution-noise", "0.05"]
    assert cli.main(args) == 0
    capsys.readouterr()
    dataset = load_dataset(out)
    assert dataset.stats.info["collection"]["execution_noise"] == 0.05
    for i in range(len(dataset)):
        steps = dataset[i]["steps"]
        states, actions = steps["observation"]["state"], steps["action"]
        labels = np.stack([expert({"state": s}) for s in states])
        np.testing.assert_allclose(actions, labels, atol=1e-6)  # the clean label
        moved = states[1:, 0] - states[:-1, 0]
        # The states followed the noisy actions: not the recorded ones.
        executed_noise = moved - actions[:-1, 0]
        assert 0.02 < executed_noise.std() < 0.1

    # --action-noise instead records what it executes: labels differ from the expert's.
    episode = rollout_expert(task, 0, action_noise=0.05)
    states, actions = episode["steps"]["observation"]["state"], episode["steps"]["action"]
    np.testing.assert_allclose(states[1:, 0] - states[:-1, 0], actions[:-1, 0], atol=1e-5)
    labels = np.stack([expert({"state": s}) for s in states])
    assert np.abs(actions - labels).max() > 0.01

    bad = ["collect", "fake", "--episodes", "1", "--out", str(tmp_path / "x")]
    assert cli.main([*bad, "--execution-noise", "-1"]) == 2
    assert "--execution-noise must be >= 0" in capsys.readouterr().err
    assert cli.main([*bad, "--action-noise", "nan"]) == 2
    assert "--action-noise must be >= 0" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys, only_data_commands):
    (tmp_path / "empty").mkdir()
    assert cli.main(["data", "info", str(tmp_path / "empty")]) == 2
    assert "not a dpjax or RLDS" in capsys.readouterr().err
    assert cli.main(["collect", "no.such.module:task", "--episodes", "1", "--out", "x"]) == 2
    assert "cannot load task" in capsys.readouterr().err
    # Every episode failing is an error, and leaves nothing behind.
    out = tmp_path / "none"
    task = f"{__name__}:make_fake_task"
    assert cli.main(["collect", task, "--episodes", "1", "--seed", "2", "--out", str(out)]) == 2
    assert "no episodes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_task_option_values_are_typed():
    assert parse_task_options(["a=3", "b=0.25", "c=True", "d=false", "e=none", "f=train"]) == {
        "a": 3,
        "b": 0.25,
        "c": True,
        "d": False,
        "e": None,
        "f": "train",
    }
    assert isinstance(parse_option_value("3"), int) and isinstance(parse_option_value("3."), float)
    assert parse_option_value("[0.5, 0.3, 0.2]") == [0.5, 0.3, 0.2]
    assert parse_option_value('{"max_step_px": 10}') == {"max_step_px": 10}
    assert parse_option_value(".5") == 0.5 and parse_option_value('"3"') == "3"
    assert parse_option_value("pick-place") == "pick-place"
    assert parse_task_options(["position-split=a=b"]) == {"position_split": "a=b"}
    for bad in (["novalue"], ["=1"], ["a b=1"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError, match="task-option"):
            parse_task_options(bad)


def test_collect_passes_task_options(tmp_path, capsys, only_data_commands):
    out = tmp_path / "demos"
    task = f"{__name__}:make_fake_task"
    options = ["--task-option", "goal=0.6", "--task-option", "max_episode_steps=3"]
    assert cli.main(["collect", task, "--episodes", "3", "--out", str(out), *options]) == 0
    dataset = load_dataset(out)
    assert len(dataset) == 2  # seed 2 is broken
    for episode in dataset:
        assert len(episode["steps"]["action"]) <= 3
        np.testing.assert_array_equal(
            episode["steps"]["observation"]["state"][:, 1], np.float32(0.6)
        )
    collection = dataset.stats.info["collection"]
    assert collection["task_options"] == {"goal": 0.6, "max_episode_steps": 3}
    capsys.readouterr()
    assert cli.main(["data", "info", str(out)]) == 0
    assert "task options: goal=0.6, max_episode_steps=3" in capsys.readouterr().out

    bad = ["collect", task, "--episodes", "1", "--out", str(tmp_path / "x")]
    assert cli.main([*bad, "--task-option", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "unknown option colour" in err and "valid: goal, max_episode_steps" in err
    assert cli.main([*bad, "--task-option", "goal"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_registered_tasks_name_their_valid_options():
    with pytest.raises(ConfigError, match="unknown option colour.*valid: max_episode_steps"):
        make_task("multimodal", colour="red")
    assert make_task("multimodal", max_episode_steps=50).max_episode_steps == 50


def test_pusht_task_options():
    pytest.importorskip("gym_pusht")
    task = resolve_task("pusht", parse_task_options(["obs_type=pixels", "damping=0.5"]))
    assert "image" in task.observation_spec
    with pytest.raises(ConfigError, match="unknown option colour.*valid: obs_type.*damping"):
        resolve_task("pusht", {"colour": "red"})
    with pytest.raises(ConfigError, match="expert_options; valid: max_step_px"):
        resolve_task("pusht", {"expert_options": {"colour": "red"}})


def test_metaworld_task_options(tmp_path, only_data_commands):
    pytest.importorskip("metaworld")
    name = "metaworld-drawer-open-v3"
    with pytest.raises(ConfigError, match="unknown option split.*valid:.*position_split"):
        resolve_task(name, {"split": "train"})
    out = tmp_path / "drawer"
    args = ["collect", name, "--episodes", "1", "--out", str(out)]
    assert cli.main([*args, "--task-option", "position_split=heldout"]) == 0
    collection = load_dataset(out).stats.info["collection"]
    assert collection["task_options"] == {"position_split": "heldout"}
    assert resolve_task(name, {"position_split": "heldout"}).make_env(0).config.position_split
