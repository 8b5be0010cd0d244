"""Reliability summary: bad inputs, kill -9 of `dpjax train` + resume, same-seed determinism.

    python benchmarks/reliability.py [--kills 3] [--seed N]

Runs tests/test_reliability_inputs.py (each passed test is one bad input that gave a clear
error), the interruption scenario of tests/test_reliability_train.py (kill -9 at random
moments, `--resume`, compare with an uninterrupted run bit for bit), and two same-seed runs
plus one other-seed run; prints one summary line.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_reliability_train as scenarios  # noqa: E402


def bad_inputs() -> tuple[int, int, str]:
    """(passed, failed, note) of tests/test_reliability_inputs.py."""
    path = ROOT / "tests" / "test_reliability_inputs.py"
    if not path.exists():
        return 0, 0, "tests/test_reliability_inputs.py not found"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors)", tail)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    return counts.get("passed", 0), failed, tail


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="kill -9 count (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill moments")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    passed, failed, inputs_note = bad_inputs()
    print(f"bad inputs: {inputs_note}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dpjax-reliability-") as tmp:
        tmp = Path(tmp)
        with scenarios.compilation_cache(tmp / "jax_cache"):
            dataset_dir = scenarios.make_dataset(tmp / "data")
            (tmp / "kill").mkdir()
            interruption = scenarios.interruption_scenario(
                tmp / "kill", dataset_dir, num_kills=args.kills, seed=args.seed
            )
            for note in interruption["notes"]:
                print(note, flush=True)
            print(f"resumed from checkpoint steps {interruption['resumed_from']}", flush=True)
            (tmp / "seeds").mkdir()
            determinism = scenarios.determinism_check(tmp / "seeds", dataset_dir)

    inputs = f"bad inputs tried {passed + failed}" + (
        " (all gave clear errors)" if not failed else f" ({failed} did not give clear errors)"
    )
    print(
        f"reliability: {inputs}, "
        f"interruptions survived {interruption['survived']}/{interruption['kills']}, "
        f"parameters identical after resume: {yes_no(interruption['identical'])}, "
        f"same seed identical: {yes_no(determinism['same_seed_identical'])}, "
        f"different seed differs: {yes_no(determinism['different_seed_differs'])} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    ok = (
        not failed
        and interruption["survived"] == interruption["kills"]
        and interruption["identical"]
        and determinism["same_seed_identical"]
        and determinism["different_seed_differs"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
