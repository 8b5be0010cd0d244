"""Training that streams its windows from disk trains exactly what in-memory training does,
resumes exactly, and is chosen by the data budget."""

import pytest
from test_run import params_equal, tiny_config

from dpjax.data import load_dataset, make_window_data, write_dataset
from dpjax.data.synthetic import three_mode_episodes
from dpjax.errors import ConfigError
from dpjax.policy import load_policy
from dpjax.training.logs import read_metrics
from dpjax.training.loop import split_episodes, train, training_bytes


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "three_modes"
    write_dataset(three_mode_episodes(40, seed=1), path, name="three_modes")
    return path


@pytest.fixture(scope="module")
def memory_run(dataset_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("memory") / "run"
    summary = train(tiny_config(dataset_dir, data_loader="memory"), run, progress=False)
    assert summary["data_loader"] == "memory"
    return run


def test_a_streamed_run_trains_the_parameters_of_the_in_memory_run(
    dataset_dir, memory_run, tmp_path
):
    run = tmp_path / "stream"
    summary = train(tiny_config(dataset_dir, data_loader="stream"), run, progress=False)
    assert summary["data_loader"] == "stream"
    _, a, _ = load_policy(memory_run)
    _, b, _ = load_policy(run)
    # The host reads the very windows the in-memory step samples: bit for bit the same.
    assert params_equal(a, b)
    # ... and so are the logged losses, validation losses included
    logged = [[{k: v for k, v in m.items() if k not in ("time", "steps_per_sec", "input_wait")} for m in read_metrics(r)]
              for r in (memory_run, run)]  # fmt: skip
    assert logged[0] == logged[1] and any("val_loss" in m for m in logged[1])
    # a streamed run logs how much of its time the step waited for data
    assert all(0 <= m["input_wait"] <= 1 for m in read_metrics(run))
    assert not any("input_wait" in m for m in read_metrics(memory_run))


def test_a_streamed_run_resumes_exactly(dataset_dir, memory_run, tmp_path):
    config = tiny_config(dataset_dir, data_loader="stream")
    train(config, tmp_path / "run", progress=False, stop_at_step=5)
    summary = train(config, tmp_path / "run", resume=True, progress=False)
    assert summary["start_step"] == 5 and summary["final_step"] == 12
    _, a, _ = load_policy(memory_run)
    _, b, _ = load_policy(tmp_path / "run")
    assert params_equal(a, b)


def test_auto_streams_only_a_dataset_over_the_memory_budget(dataset_dir, tmp_path):
    config = tiny_config(dataset_dir, num_steps=2, val_fraction=0.0)
    dataset = load_dataset(dataset_dir)
    train_ids, _ = split_episodes(len(dataset), 0.0, config.seed)
    # the estimate is what the in-memory data really takes
    data = make_window_data([dataset[int(i)] for i in train_ids], observation_keys=["state"],
                            obs_horizon=2, pred_horizon=4, action_horizon=2)  # fmt: skip
    held = data.action.nbytes + sum(v.nbytes for v in data.observation.values())
    size = training_bytes(config, dataset, train_ids)
    assert size == held
    small = tiny_config(dataset_dir, num_steps=2, val_fraction=0.0,
                        data_memory_mb=0.9 * size / 2**20)  # fmt: skip
    large = tiny_config(dataset_dir, num_steps=2, val_fraction=0.0,
                        data_memory_mb=1.1 * size / 2**20)  # fmt: skip
    assert train(small, tmp_path / "small", progress=False)["data_loader"] == "stream"
    assert train(large, tmp_path / "large", progress=False)["data_loader"] == "memory"
    with pytest.raises(ConfigError, match="data_loader must be"):
        train(tiny_config(dataset_dir, data_loader="disk"), tmp_path / "bad", progress=False)
