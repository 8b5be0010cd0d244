"""experiments/benchmark_study.py: cells run once and are stored as they finish, a rerun
continues, the budget stops it, the verdicts follow the measured cells; one real tiny run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_study():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(
        "experiments_benchmark_study", EXPERIMENTS / "benchmark_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# Success of the fake policies: BC and diffusion tie on single-strategy demonstrations and
# part on the others, as the seed says they should.
FAKE_SUCCESS = {("single", "bc"): 0.9, ("single", "diffusion"): 0.92,
                ("multimodal", "bc"): 0.3, ("multimodal", "diffusion"): 0.9,
                ("mixed", "bc"): 0.5, ("mixed", "diffusion"): 0.55}  # fmt: skip


def fake_run_cell(ran):
    def run_cell(task, variant, demos, kind, seed, size, args, log):
        ran.append((task.key, variant, demos, kind, seed))
        rate = FAKE_SUCCESS[(variant, kind)]
        modes = {"mode_frequencies": {"direct": 1.0, "left": 0.0, "right": 0.0},
                 "expert_mode_frequencies": {"direct": 0.34, "left": 0.33, "right": 0.33}}  # fmt: skip
        evaluation = {"episodes": 50, "success_rate": rate, "success_ci95": [rate - 0.1, rate],
                      **(modes if variant == "multimodal" else {})}  # fmt: skip
        return {"task": task.key, "variant": variant, "demos": demos, "kind": kind,
                "seed": seed, "collection": {"demos": demos}, "train_seconds": 60.0,
                "eval_seconds": 6.0, "evaluations": {ev.label: evaluation for ev in task.evals()},
                "machine": "Test CPU, 2 cores"}  # fmt: skip

    return run_cell


def test_cells_run_once_a_rerun_continues_and_the_verdicts_follow_them(tmp_path, monkeypatch):
    study = load_study()
    ran = []
    monkeypatch.setattr(study, "run_cell", fake_run_cell(ran))
    monkeypatch.setattr(study.common, "have_matplotlib", lambda: False)  # the real run plots
    monkeypatch.setitem(study.SIZES, "tiny", study.dataclasses.replace(
        study.SIZES["tiny"], seeds=(0, 1), tasks=("drawer-open",)))  # fmt: skip
    args = ["--size", "tiny", "--work-dir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path)]  # fmt: skip

    # A budget of 0 minutes starts nothing, but writes the (empty) page.
    assert study.main([*args, "--budget-minutes", "0"]) == 0
    assert ran == []
    assert (
        "**Progress: 0 of 24 cells finished**" in (tmp_path / "benchmark_study_tiny.md").read_text()
    )

    study.main([*args, "--variants", "multimodal"])
    assert len(ran) == 8 and {r[1] for r in ran} == {"multimodal"}
    assert [r[4] for r in ran] == [0] * 4 + [1] * 4  # seed by seed
    cells = json.loads((tmp_path / "benchmark_study_tiny_cells.json").read_text())
    assert len(cells) == 8
    # Shards split the rest between them (here one after the other).
    study.main([*args, "--variants", "single", "--shard", "0/2"])
    study.main([*args, "--variants", "single", "--shard", "1/2"])
    assert len(ran) == 16 and len(set(ran)) == 16
    with pytest.raises(SystemExit):
        study.main([*args, "--shard", "2/2"])

    study.main(args)  # continues: only the cells not yet run
    assert len(ran) == 24 and len(set(ran)) == 24
    page = (tmp_path / "benchmark_study_tiny.md").read_text()
    assert "**Progress: 24 of 24 cells finished**" in page
    verdicts = {line.split(":")[0]: line for line in page.splitlines() if line.startswith("- **")}
    by_variant = {v: next(line for k, line in verdicts.items() if f"({v} demonstrations" in k)
                  for v in ("single", "multimodal", "mixed")}  # fmt: skip
    assert "(single demonstrations, 16 each): refuted" in by_variant["single"]
    assert "(multimodal demonstrations, 16 each): confirmed" in by_variant["multimodal"]
    assert "intervals overlap" in by_variant["mixed"]
    assert (
        "because demonstrations are multimodal (16 demonstrations; by more than 10 points counts): confirmed"
        in page
    )
    assert (
        "because human motion varies (8 demonstrations; by more than 10 points counts): refuted"
        in page
    )
    assert "(multimodal demonstrations, 8 each): confirmed" in page
    assert "| drawer-open (multimodal) | 16, 8 | 30% (22%-40%) | 90% (83%-94%) |" in page
    assert "1.00/0.00/0.00 / 1.00/0.00/0.00 (expert 0.34/0.33/0.33)" in page

    ran.clear()
    study.main([*args, "--report"])  # the page alone
    assert ran == []
    data = json.loads((tmp_path / "benchmark_study_tiny.json").read_text())
    assert data["cells_done"] == data["cells_total"] == 24
    assert data["compute_hours"] == pytest.approx(24 * 66 / 3600)

    # A process that runs part of the study (--tasks, --shard) still writes the whole study's
    # page, with the command that continues it.
    monkeypatch.setitem(study.SIZES, "tiny", study.dataclasses.replace(
        study.SIZES["tiny"], tasks=("drawer-open", "cup")))  # fmt: skip
    study.main([*args, "--tasks", "drawer-open", "--shard", "0/2"])
    assert ran == []  # drawer-open is done
    page = (tmp_path / "benchmark_study_tiny.md").read_text()
    assert "**Progress: 24 of 48 cells finished**" in page
    assert "`python experiments/benchmark_study.py --size tiny`" in page


def test_a_real_tiny_run_trains_evaluates_and_resumes(tmp_path, monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "KINDS", ("diffusion",))  # two cells: the 16 and 8 demos
    args = ["--size", "tiny", "--variants", "multimodal", "--work-dir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path)]  # fmt: skip
    assert study.main(args) == 0
    cells = json.loads((tmp_path / "benchmark_study_tiny_cells.json").read_text())
    assert len(cells) == 2 and (tmp_path / "benchmark_study_tiny.png").stat().st_size > 10_000
    for cell in cells.values():
        evaluation = cell["evaluations"]["cup"]
        assert evaluation["episodes"] == 8 and 0 <= evaluation["success_rate"] <= 1
        assert set(evaluation["mode_frequencies"]) == {"north", "east", "south"}
        assert cell["train_steps"] == 150 and cell["collection"]["demos"] == cell["demos"]
    from dpjax.data import load_dataset

    data = tmp_path / "work" / "data"
    collected = load_dataset(data / "cup_multimodal")  # 24 attempts: a margin over 16
    for n in (16, 8):  # the first n of the collected episodes
        subset = load_dataset(data / f"cup_multimodal_{n}")
        assert len(subset) == n
        seeds = [e["episode_metadata"]["seed"] for e in subset]
        assert seeds == [collected[i]["episode_metadata"]["seed"] for i in range(n)]
    # A rerun finds every cell done: nothing trains (the run directories are gone).
    before = (tmp_path / "benchmark_study_tiny_cells.json").stat().st_mtime_ns
    assert study.main(args) == 0
    assert (tmp_path / "benchmark_study_tiny_cells.json").stat().st_mtime_ns == before
    assert not (
        tmp_path / "work" / "runs" / "cup" / "multimodal" / "16" / "diffusion_seed0"
    ).exists()
