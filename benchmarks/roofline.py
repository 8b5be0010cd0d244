"""Roofline: how close each denoiser call and train step comes to this machine's limits.

Measured in the same run: peak matmul FLOP/s (a 2048^3 float32 and bfloat16 matmul) and
memory read bandwidth (summing a 256 MB array, larger than any cache). For each case, XLA's
cost analysis of the compiled program gives the FLOPs and bytes of one denoiser call (or train
step), and the time of one call is measured inside the real sampler: (t(n2) - t(n1)) / (n2 - n1)
for DDIM runs of n1 and n2 steps through `DiffusionPolicy.act`, which removes the encoder and
dispatch. The limit of a call is max(weight bytes / bandwidth, FLOPs / peak): batch-1 sampling
must read every weight once per step; large batches are bound by arithmetic. "of limit" is
limit time / measured time (1.0 = at the hardware limit).

    python benchmarks/roofline.py                  # ~3 minutes here
    python benchmarks/roofline.py --json roofline.json
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import training  # noqa: E402

COLUMNS = [
    ("case", "s"),
    ("denoiser", "s"),
    ("batch", "d"),
    ("gflop", ".3f"),
    ("weight_mb|weights (MB)", ".1f"),
    ("cost_mb|XLA bytes (MB)", ".1f"),
    ("measured_ms|measured (ms)", ".2f"),
    ("flop_limit_ms|FLOP limit (ms)", ".2f"),
    ("mem_limit_ms|weight-read limit (ms)", ".2f"),
    ("bound", "s"),
    ("achieved_gflops|GFLOP/s", ".1f"),
    ("of_limit|of limit", ".0%"),
]


def _min_time(fn, seconds: float) -> float:
    return _common.time_call(fn, min_seconds=seconds, min_repeats=3)["min_s"]


def measure_peaks(seconds: float, mb: int = 256) -> dict[str, float]:
    """Peak matmul FLOP/s (float32, bfloat16) and read bandwidth, measured now."""
    import jax
    import jax.numpy as jnp

    n = 2048
    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        run = lambda mm=mm, a=a: jax.block_until_ready(mm(a, a))
        run()
        out[f"peak_gflops_{dtype}"] = 2 * n**3 / _min_time(run, seconds) / 1e9
    big = jnp.ones((mb * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(big))
    out["bandwidth_gbs"] = big.nbytes / _min_time(
        lambda: jax.block_until_ready(total(big)), seconds
    ) / 1e9  # fmt: skip
    return out


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def denoiser_call_cost(policy, params, batch: int) -> tuple[float, float]:
    """FLOPs and bytes of one denoiser call on a (batch, horizon, A) chunk, from XLA."""
    import jax
    import jax.numpy as jnp

    from dpjax.policy.policies import PolicyNetwork

    c = policy.config
    obs = {k: jnp.asarray(v) for k, v in _common.observation(batch).items()}
    cond = policy._encode(params, obs, False)
    x = jnp.zeros((batch, c.pred_horizon, c.action_dim))
    t = jnp.zeros((batch,), jnp.int32)
    call = jax.jit(
        lambda p, x, t, cond: policy.network.apply(p, x, t, cond, method=PolicyNetwork.denoise)
    )
    return _cost(call.lower(params, x, t, cond).compile())


def per_call_seconds(policy, params, batch: int, steps: tuple[int, int], seconds: float):
    import jax

    obs = _common.observation(batch)
    key = jax.random.key(0)
    times = []
    for n in steps:
        fn = lambda n=n: jax.block_until_ready(
            policy.act(params, obs, key, sampler="ddim", num_inference_steps=n)
        )
        fn()
        times.append(_min_time(fn, seconds))
    return max(times[1] - times[0], 1e-9) / (steps[1] - steps[0])


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's largest cache from Linux sysfs (None where unknown)."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes) if sizes else None


def _row(case, name, batch, flops, cost_bytes, weight_bytes, seconds, peaks, bound_by_memory):
    """One table row. Weights that fit in half the last-level cache are read from cache between
    calls, so the memory-bandwidth limit does not bound them: "of limit" is then left empty."""
    flop_limit = flops / (peaks["peak_gflops_float32"] * 1e9)
    mem_limit = weight_bytes / (peaks["bandwidth_gbs"] * 1e9)
    limit = max(flop_limit, mem_limit) if bound_by_memory else flop_limit
    bound = "weights" if limit == mem_limit and bound_by_memory else "FLOPs"
    cache = peaks.get("cache_bytes")
    in_cache = bound == "weights" and cache is not None and weight_bytes < cache / 2
    return {
        "case": case,
        "denoiser": name,
        "batch": batch,
        "gflop": flops / 1e9,
        "weight_mb": weight_bytes / 1e6,
        "cost_mb": cost_bytes / 1e6,
        "measured_ms": 1e3 * seconds,
        "flop_limit_ms": 1e3 * flop_limit,
        "mem_limit_ms": 1e3 * mem_limit,
        "bound": "weights (in cache)" if in_cache else bound,
        "achieved_gflops": flops / seconds / 1e9,
        "of_limit": None if in_cache else limit / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--denoisers", nargs="+", default=list(_common.DENOISERS),
                        choices=list(_common.DENOISERS))  # fmt: skip
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--train-batches", type=int, nargs="*", default=[64])
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 6],
                        help="the two DDIM step counts whose difference times one call")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per measurement")
    parser.add_argument("--bandwidth-mb", type=int, default=256)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    import jax

    from dpjax.nets import count_params

    info = _common.machine()
    peaks = {
        **measure_peaks(args.seconds, args.bandwidth_mb),
        "cache_bytes": last_level_cache_bytes(),
    }
    print(f"peaks: {peaks}", file=sys.stderr, flush=True)
    rows = []
    for name in args.denoisers:
        policy = _common.make_pusht_policy(name)
        params = policy.init(jax.random.key(0))
        denoiser_params = params["params"]["denoiser"]
        weight_bytes = 4.0 * count_params(denoiser_params)
        for batch in args.batches:
            flops, cost_bytes = denoiser_call_cost(policy, params, batch)
            seconds = per_call_seconds(policy, params, batch, tuple(args.steps), args.seconds)
            row = _row("sample: 1 denoiser call", name, batch, flops, cost_bytes, weight_bytes,
                       seconds, peaks, bound_by_memory=True)  # fmt: skip
            rows.append(row)
            print(f"{name} batch {batch}: {row['measured_ms']:.2f} ms, {row['bound']}",
                  file=sys.stderr, flush=True)  # fmt: skip
        for batch in args.train_batches:
            step, state, data, _ = training.make_step(name, batch, 1)
            flops, cost_bytes = _cost(step.lower(state, data).compile())
            holder = {"state": state}

            def one(step=step, data=data, holder=holder):
                holder["state"], m = step(holder["state"], data)
                jax.block_until_ready(m)

            one()
            seconds = _min_time(one, args.seconds)
            row = _row("train: 1 step", name, batch, flops, cost_bytes, weight_bytes, seconds,
                       peaks, bound_by_memory=False)  # fmt: skip
            rows.append(row)
            print(f"{name} train batch {batch}: {row['measured_ms']:.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(_common.header("roofline: one denoiser call / one train step vs this machine", info))
    print(
        f"# measured now: float32 matmul {peaks['peak_gflops_float32']:.0f} GFLOP/s, bfloat16 "
        f"matmul {peaks['peak_gflops_bfloat16']:.0f} GFLOP/s, read bandwidth "
        f"{peaks['bandwidth_gbs']:.1f} GB/s; times are the minimum of repeated runs"
    )
    print(_common.markdown_table(COLUMNS, rows))
    _common.write_json(args.json, "roofline", args, rows, peaks=peaks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
