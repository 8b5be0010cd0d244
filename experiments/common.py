"""Shared helpers of the experiment scripts: the provenance every result file states (command,
machine, versions, date, wall time, size, budget cuts), progress lines, writing results.

Not an experiment itself (it defines no CONFIG). The scripts import it as `common`: running
`python experiments/NAME.py` puts this folder first on sys.path.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpjax.machine import cpu_model, package_version

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line(script: str | Path, argv: Sequence[str]) -> str:
    """How to re-run this, from the repo root: `python experiments/NAME.py ARGS`."""
    script = Path(script).resolve()
    try:
        shown = script.relative_to(REPO_ROOT)
    except ValueError:
        shown = script
    return shlex.join(["python", str(shown), *argv])


def machine() -> dict[str, Any]:
    """CPU model, cores this process may use, load, OS, and the accelerators JAX sees."""
    import jax

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "load_average_at_start": load,
        "os": f"{platform.system()} {platform.release()}",
        "jax_backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }


def git_commit() -> str | None:
    """The checkout's HEAD commit. (Uncommitted changes are not detected: `git status` may
    rewrite the index, and an experiment should leave the checkout alone.)"""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def versions(extra: Sequence[str] = ()) -> dict[str, Any]:
    packages = ("jax", "jaxlib", "flax", "optax", "numpy", "dpjax", *extra)
    return {
        "python": platform.python_version(),
        **{p: package_version(p) for p in packages},
        "dpjax_commit": git_commit(),
    }


class Progress:
    """`[  12.3 s] message` lines, flushed, with the time since the experiment started."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed:7.1f} s] {message}", flush=True)


def markdown_table(columns, rows) -> str:
    """A Markdown table: columns are (header, "l" or "r" alignment, cell(row) -> str)."""
    lines = [
        "| " + " | ".join(h for h, _, _ in columns) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for _, a, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(r) for _, _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def success_cell(row) -> str:
    """ "66% (62%-70%)": a row's success rate with its 95% interval."""
    lo, hi = row["success_ci95"]
    return f"{row['success_rate']:.0%} ({lo:.0%}-{hi:.0%})"


class CellCache:
    """Finished cells of a study in a JSON file: `get(key, compute)` returns the stored
    value or computes, stores (at once, so a killed study loses at most one cell) and
    returns it; a rerun skips what is done. Several processes may share the file (a study
    run in shards): each store re-reads it under a lock and adds its cell to what is there."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cells = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, compute):
        if key not in self.cells:
            value = _jsonable(compute())
            with self._locked():
                self.cells = {**self._read(), key: value}
                self._write()
        return self.cells[key]

    def clear(self) -> None:
        """Forgets every cell, in the file too (a rerun that must compute them again)."""
        with self._locked():
            self.cells = {}
            self._write()

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.cells))
        tmp.replace(self.path)

    def refresh(self) -> None:
        """Reads the cells other processes have stored since."""
        self.cells = {**self.cells, **self._read()}


def provenance(
    *, script, argv, size: str, wall_seconds: float, budget_cuts: Sequence[str], extra=()
) -> dict[str, Any]:
    return {
        "command": command_line(script, argv),
        "size": size,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(wall_seconds, 1),
        "machine": machine(),
        "versions": versions(extra),
        "budget_cuts": list(budget_cuts),
    }


def provenance_markdown(record: dict[str, Any]) -> str:
    m, v = record["machine"], record["versions"]
    shown = ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "dpjax_commit")
    lines = [
        f"Command (from the repo root, venv active): `{record['command']}`",
        "",
        f"- Size: **{record['size']}**",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['devices']} ({m['jax_backend']}); "
        f"load average at start {m['load_average_at_start']}; {m['os']}",
        f"- Versions: {shown}; dpjax commit {v.get('dpjax_commit') or 'unknown'}",
        f"- Date: {record['date']}; wall time {record['wall_seconds'] / 60:.1f} min",
    ]
    if record["budget_cuts"]:
        lines.append("- Budget cuts: " + "; ".join(record["budget_cuts"]))
    return "\n".join(lines) + "\n"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(name: str, markdown: str, data: dict[str, Any], results_dir=RESULTS_DIR):
    """experiments/results/NAME.md and NAME.json; returns their paths."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    md, js = results_dir / f"{name}.md", results_dir / f"{name}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    return md, js


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "(install the `plot` extra for the figure: pip install 'dpjax[plot]')", file=sys.stderr
        )
        return False
    return True


def publish(
    name: str, markdown: str, data: dict[str, Any], table: str, plot=None, results_dir=RESULTS_DIR
) -> list[Path]:
    """Writes NAME.md / NAME.json (and NAME.png via `plot(path)` when matplotlib is there),
    prints the table and where everything went; returns the paths."""
    results_dir = Path(results_dir)
    written = list(write_results(name, markdown, data, results_dir))
    print("\n" + table)
    if plot is not None and have_matplotlib():
        written.append(plot(results_dir / f"{name}.png"))
    print("\nwrote " + ", ".join(map(str, written)))
    return written


def publish_study(
    name: str,
    *,
    quick: bool,
    script,
    argv: Sequence[str],
    wall_seconds: float,
    budget_cuts: Sequence[str],
    intro: str,
    body: str,
    data: dict[str, Any],
    plot=None,
    footer: str = "",
    results_dir=RESULTS_DIR,
) -> list[Path]:
    """A study's results page: "# NAME (size)", `intro`, the provenance, the `body` table and an
    optional `footer`, written with the JSON (provenance then `data`) as NAME[_quick].md/.json
    (and .png via `plot`) by `publish`; returns the paths."""
    size = "quick" if quick else "full"
    record = provenance(
        script=script, argv=argv, size=size, wall_seconds=wall_seconds, budget_cuts=budget_cuts
    )
    markdown = f"# {name} ({size})\n\n{intro}\n\n{provenance_markdown(record)}\n{body}\n"
    if footer:
        markdown += f"\n{footer}\n"
    stem = name + ("_quick" if quick else "")
    return publish(stem, markdown, {**record, **data}, body, plot, results_dir)


def save_figure(fig, path: Path) -> Path:
    """Lays out, writes (100 dpi) and closes a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
