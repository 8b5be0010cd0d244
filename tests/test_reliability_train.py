"""Training survives kill -9, stops on divergence without saving bad parameters, and is
reproducible bit for bit. The scenarios themselves are benchmarks/reliability.py's, which
prints them as a summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dpjax import config as config_lib
from dpjax.cli import main as cli_main
from dpjax.training.loop import TrainingDivergedError, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reliability import (  # noqa: E402
    check_checkpoints_complete,
    compilation_cache,
    determinism_check,
    interruption_scenario,
    make_dataset,
    restore_state,
    write_config,
)

# --------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    with compilation_cache(tmp_path_factory.mktemp("jax_cache")):
        yield make_dataset(tmp_path_factory.mktemp("data") / "three_modes")


def test_same_seed_is_bitwise_identical_and_other_seed_differs(dataset_dir, tmp_path):
    result = determinism_check(tmp_path, dataset_dir)
    assert result["same_seed_identical"], result
    assert result["different_seed_differs"], result


def test_kill_9_and_resume_reach_the_uninterrupted_parameters(dataset_dir, tmp_path):
    result = interruption_scenario(tmp_path, dataset_dir, num_kills=3)
    assert result["survived"] == 3, result
    assert max(result["resumed_from"]) > 0, result  # some resume really continued a run
    assert result["identical"], result


def test_resume_with_config_but_no_checkpoint_starts_from_step_zero(dataset_dir, tmp_path):
    config_file = write_config(tmp_path / "config.py", dataset_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = config_lib.load_config_file(str(config_file))
    config_dict = {**config_lib.to_dict(config), "checkpoint_every": 30}
    (run_dir / "config.json").write_text(json.dumps(config_dict))
    assert cli_main(["train", "--resume", str(run_dir)]) == 0
    assert int(restore_state(run_dir).step) == 60
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert logged == list(range(1, 61))


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


def test_nan_loss_stops_the_run_and_keeps_finite_checkpoints(dataset_dir, tmp_path, capsys):
    config_file = write_config(tmp_path / "config.py", dataset_dir)
    run_dir = tmp_path / "run"
    code = cli_main(
        ["train", str(config_file), "--out", str(run_dir), "--set", "optim.learning_rate=1e30",
         "--set", "checkpoint_every=1", "--set", "max_to_keep=5"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("dpjax train: error: training diverged at"), err
    assert "nan" in lines[0] and "last good checkpoint" in lines[0]
    steps = check_checkpoints_complete(run_dir)
    assert steps and steps[-1] < 5
    assert f"(step {steps[-1]})" in lines[0]

    config = config_lib.load_config_file(str(config_file))
    diverging = config_lib.apply_overrides(config, ["optim.learning_rate=1e30"])
    with pytest.raises(TrainingDivergedError, match="training diverged at step"):
        train(diverging, tmp_path / "api", progress=False)


def test_overflowing_update_is_never_checkpointed(dataset_dir, tmp_path, capsys):
    """Step 5's loss and gradients are finite, but its update overflows the parameters; the
    run must stop before saving step 5, keeping step 4."""
    config_file = write_config(tmp_path / "config.py", dataset_dir)
    config = config_lib.load_config_file(str(config_file))
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False, stop_at_step=4)
    code = cli_main(
        ["train", "--resume", str(run_dir), "--set", "optim.weight_decay=1e39",
         "--set", "checkpoint_every=1"]
    )  # fmt: skip
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1, lines
    assert "diverged at step 5" in lines[0] and "parameters" in lines[0], lines[0]
    assert check_checkpoints_complete(run_dir)[-1] == 4
