"""Latency of an exported policy (`dpjax export`) on the machine at hand: the seed's "measure
latency on the target hardware", with nothing but jax and the file.

    python benchmarks/exported_latency.py policy.dpjax [--batches 1 8] [--seconds 2]

For each batch size: the first call (deserialize + compile), then the median, p95 and p99 of
repeated calls (each one action chunk for a batch of observation histories), and the chunks per
second that makes at the policy's action horizon.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from dpjax.export import load_exported
from dpjax.machine import cpu_model


def observation(metadata: dict, batch: int, rng) -> dict[str, np.ndarray]:
    horizon = metadata["obs_horizon"]
    out = {}
    for k, s in metadata["observation_spec"].items():
        shape = (batch, horizon, *s["shape"])
        out[k] = (rng.integers(0, 256, shape).astype(np.uint8) if s["dtype"] == "uint8"
                  else rng.normal(size=shape).astype(s["dtype"]))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per batch")
    args = parser.parse_args(argv)
    policy = load_exported(args.file)
    meta = policy.metadata
    fixed = meta.get("batch")
    batches = [fixed] if fixed else args.batches
    print(f"# {args.file}: {meta['policy_kind']} policy, {meta['sampler'] or 'regression'} "
          f"{meta['num_inference_steps'] or ''}, executes {meta['action_horizon']} of "
          f"{meta['pred_horizon']} actions")  # fmt: skip
    print(f"# {jax.devices()[0].device_kind}, {cpu_model()}; jax {jax.__version__}")
    print("| batch | first call s | p50 ms | p95 ms | p99 ms | chunks/s |")
    print("|-------|--------------|--------|--------|--------|----------|")
    rng = np.random.default_rng(0)
    key = np.asarray(jax.random.key_data(jax.random.key(0)))
    for batch in batches:
        obs = observation(meta, batch, rng)
        t0 = time.perf_counter()
        policy(obs, key)
        first = time.perf_counter() - t0
        times = []
        start = time.perf_counter()
        while len(times) < 5 or (len(times) < 1000 and time.perf_counter() - start < args.seconds):
            t0 = time.perf_counter()
            policy(obs, key)
            times.append(1e3 * (time.perf_counter() - t0))
        p = np.percentile(times, [50, 95, 99])
        print(f"| {batch} | {first:.2f} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} | "
              f"{1e3 * batch / p[0]:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
