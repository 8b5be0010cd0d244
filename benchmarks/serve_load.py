"""Policy server under load: N concurrent clients on loopback, latency percentiles and
throughput, with and without batching across clients.

    python benchmarks/serve_load.py                         # the demo's cup policy (trained
                                                            #   briefly here: speed, not skill)
    python benchmarks/serve_load.py --run runs/pusht --clients 1 4 16 --requests 50

`dpjax serve` runs in a subprocess (as on a GPU box); each client is a thread of this process
with its own `PolicyClient`, sending one observation history at a time and waiting for its
chunk, `--requests` times after a warm-up request. Latency is measured at the client (send to
reply); throughput is chunks per second over the whole run. "batched" serves with --max-batch
16, "unbatched" with --max-batch 1 (one request per call, in arrival order).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dpjax.machine import cpu_model


def demo_run(work: Path) -> Path:
    """The `dpjax demo` recipe, trained 10 steps on 20 demonstrations (weights don't matter
    for speed; the network, sampler and shapes do)."""
    from dpjax.config import apply_overrides
    from dpjax.configs import multimodal_diffusion
    from dpjax.envs.collect import collect_demos
    from dpjax.training.loop import train

    data = collect_demos(work / "data", 20, 0, progress=False)
    config = apply_overrides(
        multimodal_diffusion.recipe(data),
        ["num_steps=10", "eval_every=10", "checkpoint_every=10", "log_every=10"],
    )
    train(config, work / "run", progress=False)
    return work / "run"


def start_server(run_dir: Path, max_batch: int, extra: list[str]):
    process = subprocess.Popen(
        [sys.executable, "-m", "dpjax.cli", "serve", str(run_dir), "--port", "0",
         "--max-batch", str(max_batch), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in process.stdout:
        if line.startswith("serving"):
            return process, int(line.split("ws://127.0.0.1:")[1].split()[0])
    process.wait()
    raise RuntimeError(f"dpjax serve exited with {process.returncode}")


def load(port: int, clients: int, requests: int) -> dict[str, float]:
    """Latency percentiles (ms) and throughput (chunks/s) of `clients` concurrent clients."""
    from dpjax.client import PolicyClient

    latencies: list[float] = []
    lock, start = threading.Lock(), threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def one_client(i: int) -> None:
        try:
            with PolicyClient("127.0.0.1", port, timeout=300) as client:
                spec = client.metadata["observation_spec"]
                horizon = client.metadata["obs_horizon"]
                rng = np.random.default_rng(i)
                obs = {k: (rng.integers(0, 256, (horizon, *s["shape"])).astype(np.uint8)
                           if s["dtype"] == "uint8" else
                           rng.normal(size=(horizon, *s["shape"])).astype(np.float32))
                       for k, s in spec.items()}  # fmt: skip
                client.act(obs)  # warm-up (connection, any compile)
                start.wait()
                mine = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    client.act(obs)
                    mine.append(1e3 * (time.perf_counter() - t0))
                with lock:
                    latencies.extend(mine)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    p = np.percentile(latencies, [50, 95, 99])
    return {"p50": p[0], "p95": p[1], "p99": p[2], "throughput": len(latencies) / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory (default: the demo's recipe, briefly trained)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=40, help="requests per client")
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--modes", nargs="+", default=["unbatched", "batched"],
                        choices=["unbatched", "batched"])  # fmt: skip
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    extra = [*(["--sampler", args.sampler] if args.sampler else []),
             *(["--steps", str(args.steps)] if args.steps else [])]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else demo_run(Path(tmp))
        print(f"# dpjax serve {run_dir if args.run else '(the demo recipe)'} {' '.join(extra)}")
        print(
            f"# {cpu_model()}; server and clients on this machine (loopback), "
            f"{args.requests} requests per client"
        )
        print("| serving | clients | p50 ms | p95 ms | p99 ms | chunks/s |")
        print("|---------|---------|--------|--------|--------|----------|")
        rows = []
        for mode in args.modes:
            process, port = start_server(run_dir, 16 if mode == "batched" else 1, extra)
            try:
                for clients in args.clients:
                    r = load(port, clients, args.requests)
                    rows.append({"serving": mode, "clients": clients, **r})
                    print(f"| {mode} | {clients} | {r['p50']:.1f} | {r['p95']:.1f} | "
                          f"{r['p99']:.1f} | {r['throughput']:.0f} |", flush=True)  # fmt: skip
            finally:
                process.terminate()
                process.wait(20)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_model(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
