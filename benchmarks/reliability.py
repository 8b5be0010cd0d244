"""Reliability summary: bad inputs, kill -9 of `dpjax train` + resume, same-seed determinism.

    python benchmarks/reliability.py [--kills 3] [--seed N]

Runs tests/test_reliability_inputs.py (each of its tests feeds bad input and passes when
the error is clear), the interruption scenario defined here (kill -9 of `dpjax train` at
random moments, `--resume`, compare with an uninterrupted run bit for bit), and two
same-seed runs plus one other-seed run; prints one summary line.
tests/test_reliability_train.py runs the same scenarios as tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import numpy as np

from dpjax import config as config_lib
from dpjax.checkpoint import Checkpointer
from dpjax.config import TrainConfig
from dpjax.data import write_dataset
from dpjax.data.synthetic import three_mode_episodes
from dpjax.policy import load_policy
from dpjax.policy.loading import abstract_train_state
from dpjax.training.loop import train

ROOT = Path(__file__).resolve().parent.parent

CONFIG_TEMPLATE = """
from dpjax.config import MLPConfig, OptimConfig, PolicyConfig, TrainConfig

CONFIG = TrainConfig(
    dataset={dataset!r},
    policy=PolicyConfig(
        action_dim=2, obs_horizon=2, pred_horizon=4, action_horizon=2,
        denoiser=MLPConfig(hidden_dims=(32, 32)), low_dim_features=8, num_inference_steps=4,
    ),
    optim=OptimConfig(learning_rate=1e-3, warmup_steps=2),
    seed={seed}, batch_size=16, num_steps={num_steps}, log_every=1, eval_every={num_steps},
    checkpoint_every=2, max_to_keep=2, val_fraction={val_fraction}, val_batches=1,
)
"""


def make_dataset(path: Path) -> Path:
    write_dataset(three_mode_episodes(20, seed=1), path, name="three_modes")
    return path


def write_config(
    path: Path, dataset_dir: Path, *, num_steps: int = 60, val_fraction: float = 0.1
) -> Path:
    text = CONFIG_TEMPLATE.format(
        dataset=str(dataset_dir), seed=0, num_steps=num_steps, val_fraction=val_fraction
    )
    path.write_text(textwrap.dedent(text))
    return path


def restore_state(run_dir: Path, step: int | None = None, *, best: bool = False):
    """The whole train state of a run's checkpoint (latest by default)."""
    policy, _, metadata = load_policy(run_dir, step=step, best=best)
    config = config_lib.from_dict(TrainConfig, metadata["config"])
    with Checkpointer(run_dir) as ckpt:
        state, _ = ckpt.restore(abstract_train_state(policy, config), step, best=best)
    return state


def trees_equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def all_finite(tree) -> bool:
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree))


def check_checkpoints_complete(run_dir: Path) -> list[int]:
    """Every step directory on disk is listed, and every listed step restores (checksums
    included), so nothing half-written is ever picked up. Returns the listed steps."""
    directory = run_dir / "checkpoints"
    on_disk = sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())
    with Checkpointer(run_dir) as ckpt:
        steps, best = ckpt.all_steps(), ckpt.all_steps(best=True)
    assert on_disk == steps, (on_disk, steps)
    assert set(best) <= set(steps), (best, steps)
    for step in steps:
        assert all_finite(restore_state(run_dir, step).params)
    if best:
        restore_state(run_dir, best=True)
    return steps


CACHE_OPTIONS = {
    "jax_compilation_cache_dir": None,
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


@contextlib.contextmanager
def compilation_cache(directory: Path):
    """Shares compiled train steps between this process and the `dpjax train` subprocesses
    (compiling dominates these tiny runs); every run then executes the same program."""
    try:  # a private API: without it the runs just compile separately (slower, still valid)
        from jax._src.compilation_cache import reset_cache
    except (ImportError, AttributeError):
        reset_cache = lambda: None  # noqa: E731

    previous = {name: getattr(jax.config, name) for name in CACHE_OPTIONS}
    options = {**CACHE_OPTIONS, "jax_compilation_cache_dir": str(directory)}
    for name, value in options.items():
        jax.config.update(name, value)
    reset_cache()
    saved_env = {name.upper(): os.environ.get(name.upper()) for name in options}
    os.environ.update({name.upper(): str(value) for name, value in options.items()})
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        reset_cache()
        for name, value in saved_env.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dpjax.cli", "train", *args]


def _last_logged_step(run_dir: Path, skip_lines: int) -> int | None:
    """The step of the newest complete metrics line past the first `skip_lines` lines."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().split("\n")[:-1]
    except FileNotFoundError:
        return None
    lines = lines[skip_lines:]
    return json.loads(lines[-1])["step"] if lines else None


def _line_count(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def _wait(condition, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"train exited early with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for training to progress")
        time.sleep(0.01)


def interruption_scenario(
    workdir: Path, dataset_dir: Path, *, num_kills: int = 3, seed: int | None = None
) -> dict:
    """kill -9 `dpjax train` `num_kills` times at random moments, `--resume` after each, and
    compare the final state with an uninterrupted run's (started alongside, same seed)."""
    rng = random.Random(seed)
    num_steps = 60
    config_file = write_config(workdir / "config.py", dataset_dir, num_steps=num_steps)
    reference_dir, run_dir = workdir / "uninterrupted", workdir / "interrupted"
    logs = (workdir / "logs.txt").open("w")
    # Run first, so that no compilation-cache entry is written by a process being killed.
    reference = subprocess.run(
        _cli(str(config_file), "--out", str(reference_dir)), stdout=logs, stderr=logs, timeout=300
    )
    assert reference.returncode == 0, (workdir / "logs.txt").read_text()[-2000:]
    survived, resumed_from, kill_notes = 0, [], []
    try:
        for kill in range(num_kills):
            steps_before = check_checkpoints_complete(run_dir) if kill else []
            resumed_from.append(steps_before[-1] if steps_before else 0)
            args = ("--resume", str(run_dir)) if kill else (str(config_file), "--out", str(run_dir))
            skip = _line_count(run_dir)
            proc = subprocess.Popen(_cli(*args), stdout=logs, stderr=logs)
            try:
                if kill == 0:
                    # Early: often before the first checkpoint, sometimes during compilation.
                    _wait((run_dir / "config.json").exists, proc, 120)
                    time.sleep(rng.uniform(0.0, 1.0))
                else:
                    start = resumed_from[-1]
                    target = rng.randint(start + 2, max(start + 3, num_steps - 8))
                    reached = lambda skip=skip, target=target: (
                        (_last_logged_step(run_dir, skip) or 0) >= target
                    )
                    _wait(reached, proc, 120)
                    time.sleep(rng.uniform(0.0, 0.05))  # lands anywhere in a step or a save
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            code = proc.wait()
            kill_notes.append(
                f"kill {kill}: exit {code}, after step {_last_logged_step(run_dir, 0)}"
            )
            survived += code == -signal.SIGKILL
        steps_before = check_checkpoints_complete(run_dir)
        resumed_from.append(steps_before[-1] if steps_before else 0)
        final = subprocess.run(
            _cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=300
        )
        assert final.returncode == 0, final.stderr[-2000:]
        assert f"trained to step {num_steps}" in final.stdout, final.stdout
    finally:
        logs.close()
    check_checkpoints_complete(run_dir)
    a, b = restore_state(reference_dir), restore_state(run_dir)
    identical = (
        int(a.step) == int(b.step) == num_steps
        and trees_equal(a.params, b.params)
        and trees_equal(a.ema_params, b.ema_params)
        and trees_equal(a.opt_state, b.opt_state)
        and trees_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))
    )
    return {
        "kills": num_kills,
        "survived": survived,
        "resumed_from": resumed_from,
        "identical": identical,
        "notes": kill_notes,
    }


def determinism_check(workdir: Path, dataset_dir: Path) -> dict:
    """Two runs with one seed, one with another: (same seed identical, other seed differs)."""
    config_file = write_config(workdir / "config.py", dataset_dir)
    config = config_lib.load_config_file(str(config_file))
    states = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_config = config_lib.apply_overrides(config, [f"seed={seed}"])
        train(run_config, workdir / name, progress=False, stop_at_step=6)
        states[name] = restore_state(workdir / name)
    a, b, c = states["a"], states["b"], states["c"]
    return {
        "same_seed_identical": trees_equal(a.params, b.params)
        and trees_equal(a.ema_params, b.ema_params),
        "different_seed_differs": not trees_equal(a.params, c.params)
        and not trees_equal(a.ema_params, c.ema_params),
    }


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
        with compilation_cache(tmp / "jax_cache"):
            dataset_dir = make_dataset(tmp / "data")
            (tmp / "kill").mkdir()
            interruption = interruption_scenario(
                tmp / "kill", dataset_dir, num_kills=args.kills, seed=args.seed
            )
            for note in interruption["notes"]:
                print(note, flush=True)
            print(f"resumed from checkpoint steps {interruption['resumed_from']}", flush=True)
            (tmp / "seeds").mkdir()
            determinism = determinism_check(tmp / "seeds", dataset_dir)

    inputs = f"bad-input tests passed {passed}/{passed + failed}" + (
        " (each a clear error)" if not failed else f" ({failed} without a clear error)"
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
