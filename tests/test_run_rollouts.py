"""Closed-loop rollouts during training (`rollout_every`) and choosing a checkpoint by them
(`dpjax eval --best-rollout`), on the pure-JAX cup task."""

import json
import shutil

import jax
import numpy as np
import pytest

from dpjax import evaluate
from dpjax.cli import main as cli_main
from dpjax.config import apply_overrides
from dpjax.configs.multimodal_diffusion import recipe
from dpjax.errors import ConfigError
from dpjax.evaluate import best_rollout_step, rollouts
from dpjax.policy import load_policy
from dpjax.training.logs import read_metrics
from dpjax.training.loop import train


def test_rollouts_during_training_are_logged_and_choose_the_checkpoint(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli_main(["collect", "multimodal", "--episodes", "20", "--out", str(data)]) == 0
    config = apply_overrides(
        recipe(data, "diffusion", "mlp", 30, 0),
        ["rollout_every=12", "rollout_episodes=8", "checkpoint_every=10", "eval_every=10",
         "log_every=5", "max_to_keep=5"],
    )  # fmt: skip
    compiled_before = rollouts._multimodal_program.cache_info()
    train(config, run, progress=False)
    compiled = rollouts._multimodal_program.cache_info()
    # Three rollouts of one policy at one setting: one compiled program, reused twice.
    assert compiled.misses - compiled_before.misses == 1
    assert compiled.hits - compiled_before.hits == 2
    records = read_metrics(run)
    scored = {r["step"]: r for r in records if "rollout_score" in r}
    assert sorted(scored) == [12, 24, 30]  # every rollout_every steps, and the last
    assert all(0.0 <= r["rollout_score"] <= 1.0 for r in scored.values())
    # A rollout step is also a checkpoint, so the step it picks can be evaluated.
    best = best_rollout_step(run)
    assert best == max(scored, key=lambda s: (scored[s]["rollout_score"], s))
    # The logged number is the evaluation of that checkpoint on the rollout seeds.
    policy, params, _ = load_policy(run, step=30)
    metrics, _ = evaluate.evaluate_on_task(
        policy, params, "multimodal", num_episodes=8, seed=config.rollout_seed, latency=False
    )
    assert metrics["success_rate"] == pytest.approx(scored[30]["rollout_success"])

    capsys.readouterr()
    assert cli_main(["eval", str(run), "--best-rollout", "--episodes", "4"]) == 0
    (result,) = (run / "eval").glob("eval_*.json")
    assert f"(step {best})" in json.loads(result.read_text())["checkpoint"]

    # A run trained without rollouts has nothing to choose by: a clear error, not a guess.
    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    lines = (plain / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if "rollout_score" not in line]
    (plain / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    with pytest.raises(ConfigError, match="rollout_every"):
        best_rollout_step(plain)

    # The rollouts (and the checkpoints they force) leave training alone: the same run
    # without them ends at the same parameters, bit for bit.
    quiet = apply_overrides(config, ["rollout_every=0"])
    train(quiet, tmp_path / "quiet", progress=False)
    _, quiet_params, _ = load_policy(tmp_path / "quiet")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(quiet_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
