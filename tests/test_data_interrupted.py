"""A `dpjax collect` killed with SIGKILL mid-run leaves no dataset that looks complete; running
it again collects the whole dataset, cleans up, and never imports TensorFlow."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dpjax.data import load_dataset
from dpjax.errors import DataError

REPO = Path(__file__).resolve().parents[1]

# A task defined outside dpjax, loaded by `dpjax collect slow_line:make_task`. Every reset
# prints a line (so the test knows how far collection got); SLOW_LINE_SLEEP slows each step.
TASK_MODULE = textwrap.dedent(
    """
    import os, time
    import numpy as np
    from dpjax.envs.base import ArraySpec, Task

    class Env:
        def reset(self, *, seed=None):
            self.x = 0.0
            print("reset", seed, flush=True)
            return self._obs(), {}

        def _obs(self):
            return {"state": np.float32([self.x]), "image": np.zeros((4, 4, 3), np.uint8)}

        def step(self, action):
            time.sleep(float(os.environ.get("SLOW_LINE_SLEEP", "0")))
            self.x += float(action[0])
            success = self.x >= 1.0
            return self._obs(), 0.0, False, False, {"success": success}

        def close(self):
            pass

    def make_task():
        return Task(
            name="slow-line",
            observation_spec={"state": ArraySpec((1,), "float32")},
            action_dim=1,
            max_episode_steps=10,
            make_env=lambda seed: Env(),
            make_expert=lambda env, seed: (lambda obs: np.float32([0.25])),
        )
    """
)

COLLECT = textwrap.dedent(
    """
    import sys
    from dpjax import cli
    cli.COMMAND_MODULES = ("dpjax.commands.collect",)
    code = cli.main(sys.argv[1:])
    # etils probes importlib.util.find_spec("tensorflow"); only an actual import counts.
    imported = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]
    assert not imported, f"tensorflow was imported: {imported[:5]}"
    sys.exit(code)
    """
)


def _command(out: Path, episodes: int) -> list[str]:
    collect = ["collect", "slow_line:make_task", "--episodes", str(episodes), "--out", str(out)]
    return [sys.executable, "-c", COLLECT, *collect]


def test_killed_collection_leaves_no_dataset_and_rerun_completes(tmp_path):
    (tmp_path / "slow_line.py").write_text(TASK_MODULE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SLOW_LINE_SLEEP": "0.02"}
    datasets = tmp_path / "datasets"
    out = datasets / "demos"
    proc = subprocess.Popen(
        _command(out, 200),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        # Episodes 0..4 are past the writer's first episode: shards are being written.
        for seed in range(5):
            line = proc.stdout.readline()
            assert line.split() == ["reset", str(seed)], line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert not out.exists()
    leftovers = list(datasets.iterdir())
    assert leftovers and all(p.name.startswith(".demos.incomplete-") for p in leftovers)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(out)
    with pytest.raises(DataError, match="half-written"):
        load_dataset(leftovers[0])
    with pytest.raises(DataError):  # the folder above it holds no complete-looking dataset
        load_dataset(datasets)

    # The same command again, at full speed: the whole dataset, and the leftovers gone.
    env["SLOW_LINE_SLEEP"] = "0"
    result = subprocess.run(
        _command(out, 12), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept 12/12 episodes" in result.stdout
    dataset = load_dataset(out)
    assert len(dataset) == 12 and dataset.stats.num_steps == 12 * 4
    assert [e["episode_metadata"]["seed"] for e in dataset] == list(range(12))
    assert [p.name for p in datasets.iterdir()] == ["demos"]
