"""experiments/recipes.py: the resumable recipe sweep (cells recorded once, skipped on rerun,
written after each cell) and its results table."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_recipes():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("experiments_recipes", EXPERIMENTS / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_cell(variant, seed, success, score=None):
    evals = {"ddim 10": {"success_rate": success, "mean_max_reward": score,
                         "mode_frequencies": {"north": 0.5, "east": 0.4, "south": 0.1},
                         "expert_mode_frequencies": {"north": 0.45, "east": 0.4, "south": 0.15},
                         "mode_frequency_error": 0.05}}  # fmt: skip
    return {"variant": variant, "seed": seed, "train_seconds": 120.0, "val_loss": 0.01,
            "eval": evals, "machine": {"cpu": "Test CPU"}}  # fmt: skip


def test_cells_are_run_once_and_written_after_each(tmp_path, monkeypatch, capsys):
    recipes = load_recipes()
    ran = []

    def run_cell(task, variant, seed, dataset, work, log):
        ran.append((variant, seed))
        return fake_cell(variant, seed, success=0.5 + 0.1 * seed)

    monkeypatch.setattr(recipes, "run_cell", run_cell)
    monkeypatch.setattr(recipes, "prepare_dataset", lambda *a: tmp_path / "data")
    argv = ["--task", "cup", "--variants", "ah15", "--seeds", "0", "1", "--results",
            str(tmp_path), "--work", str(tmp_path / "work")]  # fmt: skip
    assert recipes.main(argv) == 0
    assert ran == [("ah15", 0), ("ah15", 1)]
    saved = json.loads((tmp_path / "cup.json").read_text())["cells"]
    assert [(c["variant"], c["seed"]) for c in saved] == ran
    # A rerun skips recorded cells and trains only the new ones; --redo retrains.
    assert recipes.main([*argv[:3], "ah15", "ah12", *argv[4:]]) == 0
    assert ran[2:] == [("ah12", 0), ("ah12", 1)]
    assert recipes.main([*argv, "--redo"]) == 0
    assert ran[4:] == [("ah15", 0), ("ah15", 1)]
    assert len(json.loads((tmp_path / "cup.json").read_text())["cells"]) == 4
    page = (tmp_path / "cup.md").read_text()
    # Mean over seeds 0 and 1 (50% and 60%), with the range.
    assert (
        "| ah15 | execute 15 of 16 | ddim 10 | 0,1 | 2.0 (2.0-2.0) | 0.0100 (0.0100-0.0100)" in page
    )
    assert "55% (50%-60%)" in page and "0.450 / 0.400 / 0.150" in page
    assert "Machines: Test CPU" in page

    # Cells recorded elsewhere (another process or machine) merge in; known ones are kept.
    other = tmp_path / "other"
    other.mkdir()
    imported = [fake_cell("ah4", 0, success=0.2), fake_cell("ah15", 0, success=0.99)]
    (other / "cup.json").write_text(json.dumps({"cells": imported}))
    assert recipes.main([*argv[:2], "--results", str(tmp_path), "--import-cells",
                         str(other / "cup.json")]) == 0  # fmt: skip
    merged = json.loads((tmp_path / "cup.json").read_text())["cells"]
    assert len(merged) == 5 and merged[-1]["variant"] == "ah4"
    assert [c["eval"]["ddim 10"]["success_rate"] for c in merged if c["variant"] == "ah15"] == [
        0.5,
        0.6,
    ]


def test_unknown_variant_is_a_usage_error(tmp_path, capsys):
    recipes = load_recipes()
    with pytest.raises(SystemExit) as exit_info:
        recipes.main(["--task", "pusht", "--variants", "nope", "--results", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown variants ['nope']" in capsys.readouterr().err


def test_the_demo_variant_is_the_shipped_demo_recipe(tmp_path):
    """p24_wide must be exactly what `dpjax demo` trains, so that its recorded cells
    measure the demo's recipe (and catch the two drifting apart)."""
    from dpjax.commands.demo import SIZES
    from dpjax.config import apply_overrides
    from dpjax.configs.multimodal_diffusion import recipe

    recipes = load_recipes()
    _, overrides = recipes.VARIANTS["cup"]["p24_wide"]
    variant = apply_overrides(recipes.base_config("cup", tmp_path, 0), overrides)
    diffusion_steps, bc_steps = SIZES["full"][1]
    assert variant == recipe(tmp_path, "diffusion", "mlp", diffusion_steps, 0)
    # And the demo's BC baseline is the BC setting the sweep chose (bc_lr1e-3).
    _, overrides = recipes.VARIANTS["cup"]["bc_lr1e-3"]
    bc = apply_overrides(recipes.base_config("cup", tmp_path, 0), overrides)
    assert bc == recipe(tmp_path, "bc", "mlp", bc_steps, 0)


# Fields that do not change the trained parameters: when to log, validate, checkpoint and
# roll out (each with its own keys), and the default sampler (inference only).
NOT_TRAINING = ("log_every", "eval_every", "checkpoint_every", "max_to_keep", "rollout_every",
                "rollout_episodes", "rollout_seed")  # fmt: skip


def training_fields(config) -> dict:
    import dataclasses

    from dpjax.config import to_dict

    policy = dataclasses.replace(config.policy, sampler="ddim", num_inference_steps=10)
    fields = to_dict(dataclasses.replace(config, policy=policy))
    return {k: v for k, v in fields.items() if k not in NOT_TRAINING}


def test_the_measured_pusht_variants_train_what_they_say(tmp_path):
    """unet32_noise05's cells are the shipped PushT recipe's training; mlp_150k rebuilds the
    MLP recipe shipped before it."""
    from dpjax.config import MLPConfig, apply_overrides

    recipes = load_recipes()
    base = recipes.base_config("pusht", tmp_path, 0)  # the shipped pusht_keypoints CONFIG
    _, overrides = recipes.VARIANTS["pusht"]["unet32_noise05"]
    measured = apply_overrides(base, overrides)
    assert training_fields(measured) == training_fields(base)
    assert measured.policy.sampler == "ddpm" and measured.rollout_every == 0  # as recorded

    _, overrides = recipes.VARIANTS["pusht"]["mlp_150k"]
    mlp = apply_overrides(base, overrides)
    assert (mlp.policy.denoiser, mlp.num_steps) == (MLPConfig(hidden_dims=(512, 512, 256)), 150_000)
    assert (mlp.policy.prediction_type, mlp.policy.obs_noise_std, mlp.batch_size) == (
        "sample",
        0.05,
        256,
    )
    # The 30k-step MLP variants stay MLPs whatever the shipped denoiser.
    for name in ("mlp_x0", "noise05", "obs4_noise05", "dart10_noise05", "ah4_60k"):
        _, overrides = recipes.VARIANTS["pusht"][name]
        assert apply_overrides(base, overrides).policy.denoiser.name == "mlp", name


def test_an_interrupted_cell_resumes_its_run_instead_of_retraining(tmp_path, monkeypatch):
    """A cell whose run dir holds checkpoints of the same config continues from them (a long
    PushT cell can span sittings); another config in that dir is trained afresh."""
    from dpjax.cli import main as cli_main
    from dpjax.training.logs import read_metrics
    from dpjax.training.loop import train

    recipes = load_recipes()
    data = tmp_path / "data"
    assert cli_main(["collect", "multimodal", "--episodes", "12", "--out", str(data)]) == 0
    tiny = ["num_steps=8", "log_every=2", "eval_every=4", "checkpoint_every=4",
            "rollout_every=4", "rollout_episodes=4", "policy.num_inference_steps=2",
            "policy.denoiser.hidden_dims=(32,32)"]  # fmt: skip
    monkeypatch.setitem(recipes.VARIANTS["cup"], "tiny", ("a tiny run", tuple(tiny)))
    real_evaluate_cell = recipes.evaluate_cell
    monkeypatch.setattr(recipes, "evaluate_cell", lambda *a, **k: {})
    from dpjax.config import apply_overrides

    config = apply_overrides(recipes.base_config("cup", data, 0), tiny)
    run_dir = tmp_path / "work" / "cup" / "tiny" / "seed0"
    assert recipes.resumable(run_dir, config) is None  # nothing there yet
    run_dir.mkdir(parents=True)
    (run_dir / recipes.CELL_MARKER).write_text("tiny seed 0\n")  # as run_cell starts a cell
    train(config, run_dir, progress=False, stop_at_step=4)  # interrupted at step 4
    assert recipes.resumable(run_dir, config) == 4
    assert recipes.resumable(run_dir, apply_overrides(config, ["seed=1"])) is None

    cell = recipes.run_cell("cup", "tiny", 0, data, tmp_path / "work", log=lambda *_: None)
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == [2, 4, 6, 8]  # continued from 4: steps 2 and 4 were not logged twice
    assert cell["train_steps"] == 8 and cell["note"].startswith("resumed at step 4")
    # Both sittings' time in training steps, as logged.
    logged = sum((r["step"] - p) / r["steps_per_sec"]
                 for r, p in zip(read_metrics(run_dir), [0, *steps[:-1]], strict=True))  # fmt: skip
    assert cell["train_seconds"] == pytest.approx(logged, abs=0.1) and logged > 0
    assert cell["final_loss"] == read_metrics(run_dir)[-1]["loss"]
    # The learning curve: the rollouts of both sittings, each with its validation loss.
    assert [p["step"] for p in cell["curve"]] == [4, 8]
    assert all(0.0 <= p["rollout_score"] <= 1.0 and p["val_loss"] > 0 for p in cell["curve"])

    # A run that `dpjax train` made with the same config (no cell marker) is evaluated, not
    # retrained, and the cell says so.
    (run_dir / recipes.CELL_MARKER).unlink()
    again = recipes.run_cell("cup", "tiny", 0, data, tmp_path / "work", log=lambda *_: None)
    assert [r["step"] for r in read_metrics(run_dir)] == steps
    assert "dpjax train" in again["note"] and again["train_seconds"] == cell["train_seconds"]
    page = recipes.markdown("cup", [again])
    assert "tiny seed 0: trained by `dpjax train`" in page
    # Evaluating on the checkpoint the in-training rollouts chose, and saying which it was.
    from dpjax.evaluate import best_rollout_step

    monkeypatch.setitem(recipes.EVALUATIONS, "cup", (("ddim", 2, None, "best-rollout"),))
    monkeypatch.setitem(recipes.EVAL_EPISODES, "cup", 4)
    evals = real_evaluate_cell("cup", run_dir, "diffusion")
    (label,) = evals
    assert label == "ddim 2 best-rollout"
    assert f"(step {best_rollout_step(run_dir)})" in evals[label]["checkpoint"]
    pytest.importorskip("matplotlib")
    recipes.save("cup", [again], tmp_path / "results")
    assert (tmp_path / "results" / "cup_curves.png").stat().st_size > 5_000
    assert "![learning curves](cup_curves.png)" in (tmp_path / "results" / "cup.md").read_text()

    # experiments/checkpoint_curve.py on the same run: every kept checkpoint on the test
    # seeds, beside the in-training rollout score logged at that step.
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("checkpoint_curve",
                                                  EXPERIMENTS / "checkpoint_curve.py")  # fmt: skip
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    argv = [str(run_dir), "--steps", "2", "--episodes", "4", "--name", "tiny_checkpoints",
            "--results", str(tmp_path / "results")]  # fmt: skip
    assert curve.main(argv) == 0
    saved = json.loads((tmp_path / "results" / "tiny_checkpoints.json").read_text())
    points = saved["curves"][str(run_dir)]
    assert [p["step"] for p in points] == [4, 8]
    assert [p["rollout_score"] for p in points] == [p["rollout_score"] for p in cell["curve"]]
    assert all(0.0 <= p["score"] <= 1.0 for p in points)
    page = (tmp_path / "results" / "tiny_checkpoints.md").read_text()
    assert f"| {run_dir} | 8" in page and "(best)" in page
    assert curve.main(["/nonexistent/run", "--results", str(tmp_path / "results")]) == 2
    # --add with a run already on the page replaces it (no duplicate); other options than
    # the page's are refused before any evaluation.
    assert curve.main([*argv[:1], *argv[1:], "--add"]) == 0
    assert list(json.loads((tmp_path / "results" / "tiny_checkpoints.json").read_text())
                ["curves"]) == [str(run_dir)]  # fmt: skip
    other = [str(run_dir), "--steps", "3", "--episodes", "4", "--name", "tiny_checkpoints",
             "--results", str(tmp_path / "results"), "--add"]  # fmt: skip
    assert curve.main(other) == 2
