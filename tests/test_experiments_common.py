"""The study scripts' shared results page: title, intro, provenance, table, footer, JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_common():
    spec = importlib.util.spec_from_file_location("experiments_common", EXPERIMENTS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_study_writes_the_page_and_json(tmp_path, capsys):
    common = load_common()
    kwargs = dict(script=EXPERIMENTS / "study.py", argv=["--quick"], wall_seconds=61.0,
                  budget_cuts=["1 seed"], intro="Intro.\n\n- Policy: p", body="| a |\n|---|",
                  data={"rows": [1, 2]}, results_dir=tmp_path)  # fmt: skip
    paths = common.publish_study("study", quick=True, footer="Seed's table.", **kwargs)
    assert [p.name for p in paths] == ["study_quick.md", "study_quick.json"]
    page = paths[0].read_text()
    assert page.startswith(
        "# study (quick)\n\nIntro.\n\n- Policy: p\n\nCommand (from the repo root"
    )
    assert "`python experiments/study.py --quick`" in page and "- Budget cuts: 1 seed" in page
    assert page.endswith("\n| a |\n|---|\n\nSeed's table.\n")
    record = json.loads(paths[1].read_text())
    assert record["size"] == "quick" and record["rows"] == [1, 2] and record["wall_seconds"] == 61.0
    assert list(record)[-1] == "rows"  # provenance first, then the study's data
    assert "| a |" in capsys.readouterr().out  # the table is printed too

    full = common.publish_study("study", quick=False, **kwargs)  # no footer
    assert full[0].name == "study.md"
    assert full[0].read_text().startswith("# study (full)\n\n")
    assert full[0].read_text().endswith("\n| a |\n|---|\n")


def test_cell_caches_sharing_a_file_keep_each_others_cells(tmp_path):
    common = load_common()
    path = tmp_path / "cells.json"
    first, second = common.CellCache(path), common.CellCache(path)
    assert first.get("a", lambda: {"x": 1}) == {"x": 1}
    assert second.get("b", lambda: {"x": 2}) == {"x": 2}  # its own view did not have "a"
    assert json.loads(path.read_text()) == {"a": {"x": 1}, "b": {"x": 2}}
    first.refresh()
    assert first.cells == {"a": {"x": 1}, "b": {"x": 2}}
    # A stored cell is not computed again, by either.
    assert common.CellCache(path).get("a", lambda: pytest.fail("recomputed")) == {"x": 1}


def test_a_cleared_cell_cache_computes_every_cell_again(tmp_path):
    """`clear` (steps_vs_latency's --remeasure-latency) forgets the file's cells too: storing
    the first recomputed cell must not bring the stale others back."""
    common = load_common()
    path = tmp_path / "latency.json"
    cache = common.CellCache(path)
    for key in "abc":
        cache.get(key, lambda: "stale")
    cache.clear()
    assert [cache.get(key, lambda key=key: f"new {key}") for key in "abc"] == ["new a", "new b",
                                                                               "new c"]  # fmt: skip
    assert json.loads(path.read_text()) == {"a": "new a", "b": "new b", "c": "new c"}
