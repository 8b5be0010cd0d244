"""`dpjax demo --quick` end to end: collect, train diffusion and BC, evaluate, write results."""

import json

import pytest

from dpjax.cli import main as cli_main
from dpjax.data import load_dataset


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| bc |" in printed and "| diffusion (ddim, 10 steps) |" in printed
    assert "| bc (single step) |" in printed
    summary = json.loads((out / "summary.json").read_text())
    # The expert's frequencies are measured on the collected demonstrations, not assumed.
    modes = [load_dataset(out / "data")[i]["episode_metadata"]["mode"] for i in range(100)]
    measured = {m: modes.count(k) / len(modes) for k, m in enumerate(("north", "east", "south"))}
    assert summary["expert_mode_frequencies"] == pytest.approx(measured)
    for kind in ("diffusion", "bc", "bc (single step)"):
        freqs = summary[kind]["mode_frequencies"]
        assert set(freqs) == {"north", "east", "south"}
        assert abs(sum(freqs.values()) - 1.0) < 1e-6 or sum(freqs.values()) == 0.0
    # Single-step BC replans every step with the same network: other actions, so another
    # jerk (its executed path is made of first actions only, not of smooth chunks).
    assert summary["bc (single step)"]["mean_squared_jerk"] != pytest.approx(
        summary["bc"]["mean_squared_jerk"], rel=1e-3
    )
    # The seed's claim at demo size: diffusion succeeds where BC, averaging the three
    # approaches into one that runs at the wall or stalls, does not.
    assert summary["diffusion"]["success_rate"] > summary["bc"]["success_rate"] + 0.05, summary
    # And it reproduces the expert's three modes far better than BC, which commits to (mostly)
    # one side: total variation distance to the expert's frequencies.
    expert = summary["expert_mode_frequencies"]
    tv = {
        kind: 0.5 * sum(abs(summary[kind]["mode_frequencies"][m] - expert[m]) for m in expert)
        for kind in ("diffusion", "bc")
    }
    assert tv["diffusion"] < tv["bc"], tv
    # The demo leaves runs a user can continue from, and a picture.
    assert (out / "diffusion" / "config.json").exists() and (out / "bc" / "checkpoints").exists()
    assert (out / "rollouts.png").stat().st_size > 10_000
    assert (out / "data" / "dpjax_stats.json").exists()
