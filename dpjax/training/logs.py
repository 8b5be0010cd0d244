"""Training metrics to a JSONL file and TensorBoard event files (tensorboardX, no TensorFlow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS_FILENAME = "metrics.jsonl"  # in the run directory


class MetricsLog:
    """`write(step, {name: float})` appends a JSON line and a TensorBoard scalar per name."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False):
        self.path = Path(run_dir) / METRICS_FILENAME
        self._file = self.path.open("a" if resume else "w")
        try:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(run_dir), flush_secs=10)
        except ImportError:  # a core dependency; tolerate its absence rather than lose a run
            self._writer = None

    def write(self, step: int, record: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in record.items():
                self._writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILENAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
