"""Reverse-process latency: sampler x steps x batch with the seed's MLP-sized denoiser.

The denoiser is the seed document's fusion MLP: [observation features 256 + proprio 64 +
timestep embedding 128] -> 512 -> 512 -> 256 -> 10 actions x 4 dims. Conditioning is fixed
(the encoder runs once per chunk, outside the loop), so this measures the sampler itself.
Each case is compiled once (compile time reported separately), then timed to the median of
repeated calls. Run: `python benchmarks/sampler_latency.py [--quick] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from dpjax import samplers, schedules
from dpjax.machine import cpu_model
from dpjax.nets import MLPDenoiser, count_params

STEPS = (1, 2, 5, 10, 20, 50, 100, 1000)
BATCHES = (1, 256)
ACTION_HORIZON, ACTION_DIM, COND_DIM = 10, 4, 256 + 64


def machine_description() -> str:
    return (
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {cpu_model()}, "
        f"{jax.device_count()} device(s); jax {jax.__version__}, python {platform.python_version()}"
    )


def time_call(fn, *args, min_seconds: float = 0.5, max_repeats: int = 50) -> float:
    """Median wall time of fn(*args) (already compiled), in seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (
        time.perf_counter() - start < min_seconds and len(times) < max_repeats
    ):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(model, params, schedule, method: str, steps: int, batch: int) -> dict:
    cond = jnp.ones((batch, COND_DIM), jnp.float32)

    def denoise_chunk(key, x_T, cond):
        denoise = lambda x, t: model.apply(params, x, t, cond)
        return samplers.sample(
            denoise, x_T, schedule, sampler=method, num_inference_steps=steps, key=key
        )

    fn = jax.jit(denoise_chunk)
    key = jax.random.key(0)
    x_T = jax.random.normal(key, (batch, ACTION_HORIZON, ACTION_DIM))
    t0 = time.perf_counter()
    compiled = fn.lower(key, x_T, cond).compile()
    compile_s = time.perf_counter() - t0
    latency_s = time_call(compiled, key, x_T, cond)
    return {
        "method": method,
        "steps": steps,
        "batch": batch,
        "evaluations": samplers.num_denoiser_evaluations(
            method, steps, schedule.num_train_timesteps
        ),
        "latency_ms": latency_s * 1e3,
        "compile_s": compile_s,
    }


def format_table(rows: list[dict]) -> str:
    header = "| method | steps | evals | batch | latency (ms) | per eval (ms) | compile (s) |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['evaluations']} | {r['batch']} | "
            f"{r['latency_ms']:.2f} | {r['latency_ms'] / r['evaluations']:.3f} | "
            f"{r['compile_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(samplers.sampler_names()))
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--quick", action="store_true", help="steps 1 10 100, two methods")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.methods, args.steps = ["ddim", "dpmsolver++"], [1, 10, 100]
    schedule = schedules.make_schedule("squaredcos_cap_v2", max(1000, max(args.steps)))
    model = MLPDenoiser(action_dim=ACTION_DIM, pred_horizon=ACTION_HORIZON, cond_dim=COND_DIM)
    params = model.init(
        jax.random.key(0),
        jnp.zeros((1, ACTION_HORIZON, ACTION_DIM)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, COND_DIM)),
    )
    print(f"# sampler latency, seed MLP denoiser ({count_params(params):,} params)")
    print(f"# machine: {machine_description()}")
    rows = []
    for method in args.methods:
        for steps in args.steps:
            for batch in args.batches:
                row = bench_case(model, params, schedule, method, steps, batch)
                rows.append(row)
                print(
                    f"{method:12s} steps={steps:5d} batch={batch:4d} "
                    f"{row['latency_ms']:10.2f} ms  compile {row['compile_s']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_description(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
