"""`dpjax train` across processes (jax.distributed over 127.0.0.1, CPU collectives via gloo):
2 processes x 4 simulated devices (streaming their data) reach the parameters of 1 process x
8 devices (data in memory), write one run (files from process 0, checkpoints together) that a
single 1-device process loads, and resume; a killed process stops the other."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from dpjax.cli import main as cli_main
from dpjax.data import write_dataset
from dpjax.data.synthetic import three_mode_episodes
from dpjax.policy import load_policy
from dpjax.training.logs import read_metrics

CONFIG = """\
from dpjax.config import MLPConfig, OptimConfig, PolicyConfig, TrainConfig
CONFIG = TrainConfig(
    dataset={dataset!r},
    policy=PolicyConfig(action_dim=2, obs_horizon=2, pred_horizon=4, action_horizon=2,
                        denoiser=MLPConfig(hidden_dims=(64, 64)), low_dim_features=8,
                        num_inference_steps=4),
    optim=OptimConfig(warmup_steps=2), batch_size=16, num_steps=12, log_every=4, eval_every=6,
    checkpoint_every=6, val_fraction=0.1, val_batches=2,
)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def devices_env(n: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def start_processes(args: list[str], num_processes: int, env: dict) -> list[subprocess.Popen]:
    """`dpjax train ARGS` as process i of `num_processes` on 127.0.0.1, for each i."""
    port = free_port()
    flags = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(num_processes)]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "dpjax.cli", "train", *args, *flags, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(num_processes)
    ]


def train_in_processes(args: list[str], num_processes: int, devices_each: int):
    procs = start_processes(args, num_processes, devices_env(devices_each))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [out + err for out, err in outs]


def leaves(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    write_dataset(three_mode_episodes(40, seed=1), root / "data", name="three_modes")
    path = root / "tiny.py"
    path.write_text(CONFIG.format(dataset=str(root / "data")))
    return path


def test_two_processes_train_what_one_process_on_eight_devices_trains(config_file, tmp_path):
    two, eight = tmp_path / "two_processes", tmp_path / "one_process"
    # the two processes stream their windows from disk, each reading its half of each batch
    outs = train_in_processes(
        [str(config_file), "--out", str(two), "--set", "data_loader=stream"], 2, 4
    )
    # process 0 reports; the others stay quiet
    assert "trained to step 12" in outs[0] and "trained to step 12" not in outs[1]
    assert "streaming the training windows from disk" in outs[0]
    result = subprocess.run(
        [sys.executable, "-m", "dpjax.cli", "train", str(config_file), "--out", str(eight)],
        env=devices_env(8), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # The run written by two processes loads in this 1-device process.
    _, params_two, _ = load_policy(two)
    _, params_eight, _ = load_policy(eight)
    a, b = leaves(params_two), leaves(params_eight)
    tolerance = 1e-5 * max(float(np.abs(x).max()) for x in b)  # float32 reduction order
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) < tolerance
    # ... and training moved them well beyond it (EMA parameters: steps 6 -> 12 move ~2e-4)
    _, earlier, _ = load_policy(eight, step=6)
    moved = max(float(np.abs(x - y).max()) for x, y in zip(leaves(earlier), b, strict=True))
    assert moved > 10 * tolerance
    # one metrics log (process 0's), one line per logged step
    assert [r["step"] for r in read_metrics(two)] == [4, 6, 8, 12]

    # Resume across the same two processes continues from the shared checkpoint.
    train_in_processes(["--resume", str(two), "--set", "num_steps=18"], 2, 4)
    assert [r["step"] for r in read_metrics(two)][-1] == 18
    _, resumed, _ = load_policy(two)
    assert any(float(np.abs(x - y).max()) > 0 for x, y in zip(leaves(resumed), a, strict=True))


def test_partial_or_bad_process_flags_are_one_line_errors(config_file, tmp_path, capsys):
    for extra, fragment in [
        (["--num-processes", "2"], "go together"),
        (["--coordinator-address", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
         "process id 2 is not in [0, 2)"),
    ]:  # fmt: skip
        code = cli_main(["train", str(config_file), "--out", str(tmp_path / "run"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "Traceback" not in err, err
        assert not (tmp_path / "run").exists()


def test_a_killed_process_stops_the_others_with_a_message_and_the_run_resumes(tmp_path):
    import signal
    import time

    root = tmp_path
    write_dataset(three_mode_episodes(40, seed=1), root / "data", name="three_modes")
    config = root / "long.py"
    # many steps, frequent checkpoints: the run is killed long before it ends
    config.write_text(
        CONFIG.format(dataset=str(root / "data"))
        .replace("num_steps=12", "num_steps=100000")
        .replace("checkpoint_every=6", "checkpoint_every=20")
    )
    run = root / "run"
    env = {**devices_env(2), "DPJAX_PEER_TIMEOUT_S": "5"}
    procs = start_processes([str(config), "--out", str(run)], 2, env)
    try:
        deadline = time.monotonic() + 300
        while not any(p.name.isdigit() for p in (run / "checkpoints").glob("*")):
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - t_kill
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # The survivor stops by itself (not a hang, not a C++ abort), says who stopped and how
    # to go on, soon after the peer timeout.
    assert procs[0].returncode == 75, err[-3000:]
    assert "process 1 of 2 sent no heartbeat for 5 s" in err, err[-3000:]
    assert f"--resume {run}" in err and "the last checkpoint is step" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert waited < 60
    saved = max(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())

    # Both processes started again continue from the last checkpoint.
    target = saved + 8
    train_in_processes(["--resume", str(run), "--set", f"num_steps={target}"], 2, 2)
    steps = [r["step"] for r in read_metrics(run)]
    assert steps[-1] == target
    _, params, _ = load_policy(run)
    assert all(np.isfinite(x).all() for x in leaves(params))


def test_a_slurm_job_is_detected_as_a_cluster_and_a_plain_shell_is_not(monkeypatch):
    from dpjax.training.distributed import detected_cluster

    for var in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "DPJAX_DISTRIBUTED"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert detected_cluster() is None
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}  # fmt: skip
    for var, value in slurm.items():
        monkeypatch.setenv(var, value)
    assert detected_cluster() == "SlurmCluster"
    monkeypatch.setenv("DPJAX_DISTRIBUTED", "0")  # the way out of auto-detection
    assert detected_cluster() is None
