"""Training throughput against device count and process count: `dpjax train` as users run it.

Each row is a real `dpjax train` run in fresh processes (--steps logged steps after a warm-up
interval of the same length; the second interval's steps/s from metrics.jsonl): one process
over D devices, or P processes (jax.distributed over 127.0.0.1) of D devices each. The global
batch stays --batch (strong scaling): the same training, split over more devices. The policy
is the PushT state shape (see _common.py) with --denoiser; data in memory or streamed.

On a CPU the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=D) and
share the machine's cores, so more devices cannot be faster here: the table then measures
what splitting the batch, all-reducing the gradients and (across processes) gloo cost. On
GPUs and TPUs, run it with --real-devices to use the machine's devices (D <= their count).

    python benchmarks/scaling.py                                  # ~3 minutes here
    python benchmarks/scaling.py --layouts 1x1 1x2 1x4 1x8 2x4 --data stream --json s.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

COLUMNS = [
    ("layout|processes x devices", "s"),
    ("devices", "d"),
    ("fsdp", "d"),
    ("data", "s"),
    ("batch|global batch", "d"),
    ("steps_per_s|steps/s", ".2f"),
    ("samples_per_s|samples/s", ",.0f"),
    ("relative|vs first row", ".2f"),
]

CONFIG = """\
from dpjax.config import {denoiser_class}, OptimConfig, PolicyConfig, TrainConfig
CONFIG = TrainConfig(
    dataset={dataset!r},
    policy=PolicyConfig(action_dim=2, obs_horizon=2, pred_horizon=16, action_horizon=8,
                        low_dim_keys=("state",), low_dim_features=None,
                        denoiser={denoiser!r}),
    optim=OptimConfig(warmup_steps=1), batch_size={batch}, num_steps={num_steps},
    log_every={steps}, eval_every=10**9, checkpoint_every=10**9, val_fraction=0.0,
    data_loader={data!r}, fsdp_devices={fsdp},
)
"""


def write_dataset(path: Path) -> Path:
    from dpjax.data import write_dataset as write
    from dpjax.data.synthetic import synthetic_episodes

    episodes = synthetic_episodes(50, seed=0, min_length=100, max_length=200,
                                  state_dim=_common.STATE_DIM)  # fmt: skip
    return write(episodes, path, name="pusht_state_like")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(config: Path, out: Path, processes: int, devices: int, real: bool) -> float:
    """steps/s of the second logged interval of `dpjax train config` in this layout."""
    env = dict(os.environ)
    if not real:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    base = [sys.executable, "-m", "dpjax.cli", "train", str(config), "--out", str(out),
            "--set", f"num_devices={devices * processes}"]  # fmt: skip
    if processes == 1:
        commands = [base]
    else:
        port = free_port()
        commands = [[*base, "--coordinator-address", f"127.0.0.1:{port}", "--num-processes",
                     str(processes), "--process-id", str(i)] for i in range(processes)]  # fmt: skip
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in commands]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"dpjax train failed ({processes}x{devices}): {err[-2000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["steps_per_sec"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "1x4", "1x8", "2x1", "2x4"],
                        help="PROCESSESxDEVICES each")  # fmt: skip
    parser.add_argument("--denoiser", default="mlp", choices=_common.DENOISERS)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--data", default="memory", choices=["memory", "stream"])
    parser.add_argument("--fsdp", type=int, default=1, help="fsdp_devices (must divide D)")
    parser.add_argument("--real-devices", action="store_true",
                        help="use the machine's devices instead of simulated CPU devices")  # fmt: skip
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    layouts = []
    for text in args.layouts:
        p, _, d = text.partition("x")
        if not (p.isdigit() and d.isdigit() and int(p) > 0 and int(d) > 0):
            parser.error(f"layout {text!r} is not PROCESSESxDEVICES (e.g. 2x4)")
        layouts.append((int(p), int(d)))
    print(_common.header(f"training throughput against devices and processes ({args.denoiser})"))
    denoiser = _common.DENOISERS[args.denoiser]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = write_dataset(work / "data")
        for processes, devices in layouts:
            config = work / f"config_{processes}x{devices}.py"
            config.write_text(CONFIG.format(
                denoiser_class=type(denoiser).__name__, denoiser=denoiser, dataset=str(dataset),
                batch=args.batch, num_steps=2 * args.steps, steps=args.steps, data=args.data,
                fsdp=args.fsdp,
            ))  # fmt: skip
            rate = run_layout(config, work / f"run_{processes}x{devices}", processes, devices,
                              args.real_devices)  # fmt: skip
            rows.append({
                "layout": f"{processes} x {devices}", "processes": processes,
                "devices": processes * devices, "fsdp": args.fsdp, "data": args.data,
                "batch": args.batch, "steps_per_s": rate, "samples_per_s": rate * args.batch,
            })  # fmt: skip
    for row in rows:
        row["relative"] = row["steps_per_s"] / rows[0]["steps_per_s"]
    print(_common.markdown_table(COLUMNS, rows))
    if not args.real_devices:
        print("# simulated CPU devices share this machine's cores: the rows measure the cost "
              "of splitting, not a speed-up")  # fmt: skip
    _common.write_json(args.json, "scaling", args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
