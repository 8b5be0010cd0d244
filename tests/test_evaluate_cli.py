"""`dpjax eval RUN_DIR` on the success path, for each task family: the task rebuilt from the
dataset's collection record (its options included), JSON with per-episode values, Markdown,
and a picture. (PushT's is tests/test_experiments_configs.py, through its shipped recipes.)"""

import json

import pytest

from dpjax import cli
from dpjax.config import apply_overrides
from dpjax.configs import multimodal_diffusion
from dpjax.envs.collect import collect, collect_demos
from dpjax.envs.tasks import make_task
from dpjax.training.loop import train

TINY = ["num_steps=4", "batch_size=8", "log_every=2", "eval_every=4", "checkpoint_every=4",
        "policy.denoiser.hidden_dims=(32,32)", "policy.bc_head.hidden_dims=(32,32)",
        "policy.low_dim_features=8", "val_fraction=0.5"]  # fmt: skip


def tiny_run(dataset, run_dir, *overrides):
    config = apply_overrides(multimodal_diffusion.recipe(dataset), [*TINY, *overrides])
    train(config, run_dir, progress=False)
    return run_dir


def read_eval(run_dir) -> tuple[dict, list[str]]:
    out = run_dir / "eval"
    (result,) = out.glob("eval_*.json")
    return json.loads(result.read_text()), sorted(p.suffix for p in out.iterdir())


def test_goal_conditioned_multimodal_run_evaluates_on_its_own_task(tmp_path, capsys):
    data = collect_demos(tmp_path / "data", 6, 0, progress=False, goal_conditioned=True)
    # The collection record keeps the option, so eval rebuilds the task with goals.
    stats = json.loads((data / "dpjax_stats.json").read_text())
    assert stats["info"]["collection"]["task_options"] == {"goal_conditioned": True}
    run = tiny_run(data, tmp_path / "run", "policy.low_dim_keys=('state','goal')")
    assert cli.main(["eval", str(run), "--episodes", "4", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "mode_frequencies" in printed and "wrote" in printed
    metrics, suffixes = read_eval(run)
    assert metrics["task"] == "multimodal" and metrics["num_inference_steps"] == 2
    assert len(metrics["per_episode"]["success"]) == 4
    assert set(metrics["mode_frequencies"]) == {"north", "east", "south"}
    assert suffixes == [".json", ".md", ".png"]

    # The same collection is reused; other options or noise are collected anew.
    capsys.readouterr()
    collect_demos(data, 6, 0, progress=False, goal_conditioned=True)
    assert "reusing the 6 demonstrations" in capsys.readouterr().out
    collect_demos(data, 6, 0, progress=False)
    stats = json.loads((data / "dpjax_stats.json").read_text())
    assert stats["info"]["collection"]["task_options"] == {}
    collect_demos(data, 6, 0, progress=False, execution_noise=0.01)
    assert "reusing" not in capsys.readouterr().out
    stats = json.loads((data / "dpjax_stats.json").read_text())
    assert stats["info"]["collection"]["execution_noise"] == 0.01


def test_metaworld_run_evaluates(tmp_path, capsys):
    # dpjax's adapter first: it picks a headless GL backend before mujoco loads.
    pytest.importorskip("dpjax.envs.metaworld")
    pytest.importorskip("metaworld")
    name = "metaworld-reach-v3"
    options = {"max_episode_steps": 100}
    data, _ = collect(make_task(name, **options), tmp_path / "data", episodes=2,
                      task_options=options, progress=False)  # fmt: skip
    run = tiny_run(data, tmp_path / "run", "policy.action_dim=4", "policy.pred_horizon=16",
                   "policy.action_horizon=8")  # fmt: skip
    assert cli.main(["eval", str(run), "--episodes", "2", "--steps", "2"]) == 0
    capsys.readouterr()
    metrics, suffixes = read_eval(run)
    assert metrics["task"] == name
    assert len(metrics["per_episode"]["success"]) == 2
    # The strip of frames where this machine renders (EGL); the numbers either way.
    assert suffixes in ([".json", ".md", ".png"], [".json", ".md"])


def test_execution_modes_through_eval_and_the_studies(tmp_path, capsys):
    """`dpjax eval --execution rtc --delay 3` on a run executing 8 of 23 planned actions, and
    the chunk-blending and method-comparison studies at a tiny size (their tables, cache)."""
    import sys
    from pathlib import Path

    data = collect_demos(tmp_path / "data", 6, 0, progress=False)
    run = tiny_run(data, tmp_path / "run", "policy.action_horizon=8")
    args = ["eval", str(run), "--episodes", "4", "--steps", "2", "--execution", "rtc"]
    assert cli.main([*args, "--delay", "3"]) == 0
    result, _ = read_eval(run)
    assert (result["execution"], result["delay"], result["max_guidance"]) == ("rtc", 3, 5.0)
    assert (run / "eval" / "eval_ddim_2_rtc_d3.json").exists()
    assert cli.main([*args, "--delay", "16"]) == 2  # 16 + 8 > 23
    assert "delays up to 15 fit" in capsys.readouterr().err

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import chunk_blending
    import steps_vs_latency

    results = tmp_path / "results"
    common = ["--episodes", "4", "--work", str(tmp_path / "work"), "--results", str(results)]
    assert chunk_blending.main(["--runs", f"{run}@5", *common]) == 0
    page = (results / "chunk_blending.md").read_text()
    assert page.count("| multimodal | 8 | 5 |") == 3  # the 3 modes at delay 5
    cells = json.loads((tmp_path / "work" / "cells.json").read_text())
    assert len(cells) == 3
    bc = tiny_run(data, tmp_path / "bc", "policy.kind=bc", "policy.bc_head.num_hypotheses=2")
    argv = ["--runs", str(run), str(bc), "--steps", "2", "--work", str(tmp_path / "w2"),
            "--results", str(results), "--eval-episodes", "4", "--name", "methods"]  # fmt: skip
    assert steps_vs_latency.main(argv) == 0
    page = (results / "methods.md").read_text()
    assert page.count("| multimodal |") == 4  # 3 samplers x 1 step count, and the BC run
    assert page.count("| multimodal | bc (2 hypotheses) |") == 1
