"""Sampling latency: full observation -> action chunk through `DiffusionPolicy.act`.

Each case is one policy (PushT state shape: 2 x 18-D observations -> 8 of 16 predicted 2-D
actions) with the seed MLP, Diffusion Policy's 63.5M-parameter UNet or the transformer as
denoiser, one sampler, one step count, one batch and one dtype. A case is compiled by its first
call (reported as compile time: first call minus a later one), then `act` is timed: host-side
observation checks, the encoder once, and the whole reverse process as one `lax.scan`.
bfloat16 = weights cast once outside the sampler and bfloat16 activations; bf16-weights =
float32 activations with the conv kernels stored in bfloat16 (bfloat16 matmul inputs, float32
accumulation). Their "max abs err" is the largest difference to the float32 chunk from the
same weights and key, in action units (actions span [-1, 1] here).

    python benchmarks/sampling.py                 # a few minutes on 2 CPU cores
    python benchmarks/sampling.py --full --json sampling.json    # the issue's whole grid
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

FULL = dict(
    denoisers=list(_common.DENOISERS),
    methods=["ddpm", "ddim", "dpmsolver++", "euler", "heun"],
    steps=[1, 10, 16, 100, 1000],
    batches=[1, 64],
    dtypes=list(_common.DTYPES),
)
COLUMNS = [
    ("denoiser", "s"),
    ("method", "s"),
    ("steps", "d"),
    ("evaluations|evals", "d"),
    ("batch", "d"),
    ("dtype", "s"),
    ("latency_ms|latency (ms)", ".2f"),
    ("min_ms|min (ms)", ".2f"),
    ("per_eval_ms|per eval (ms)", ".3f"),
    ("compile_s|compile (s)", ".2f"),
    ("max_abs_err|max abs err vs f32", ".1e"),
]


def bench_case(policy, params, method: str, steps: int, batch: int, seconds: float) -> dict:
    import jax

    obs = _common.observation(batch)
    key = jax.random.key(0)
    options = dict(sampler=method, num_inference_steps=steps)
    call = lambda: jax.block_until_ready(policy.act(params, obs, key, **options))
    t0 = time.perf_counter()
    first_chunk = call()
    first_s = time.perf_counter() - t0
    timing = _common.time_call(call, min_seconds=seconds, min_repeats=2)
    evaluations = policy.num_denoiser_evaluations(method, steps)
    return {
        "method": method,
        "steps": steps,
        "evaluations": evaluations,
        "batch": batch,
        "latency_ms": 1e3 * timing["median_s"],
        "min_ms": 1e3 * timing["min_s"],
        "repeats": timing["repeats"],
        "per_eval_ms": 1e3 * timing["min_s"] / evaluations,
        "compile_s": max(first_s - timing["median_s"], 0.0),
        "chunk": first_chunk,
    }


def run(args) -> list[dict]:
    import jax
    import numpy as np

    from dpjax.nets import count_params

    rows = []
    for name in args.denoisers:
        max_steps = max(args.steps)
        policies = {
            dtype: _common.make_pusht_policy(name, dtype, num_train_timesteps=max(100, max_steps))
            for dtype in args.dtypes
        }
        params32 = policies[args.dtypes[0]].init(jax.random.key(0))
        n_params = count_params(params32)
        for method in args.methods:
            for steps in args.steps:
                for batch in args.batches:
                    reference = None
                    for dtype in args.dtypes:
                        if _skip(name, steps, batch, dtype, args):
                            continue
                        params = _common.cast_params(params32, dtype)
                        row = bench_case(
                            policies[dtype], params, method, steps, batch, args.seconds
                        )
                        chunk = np.asarray(row.pop("chunk"), np.float32)
                        if dtype == "float32":
                            reference = chunk
                        elif reference is not None:
                            row["max_abs_err"] = float(np.max(np.abs(chunk - reference)))
                        row.update(denoiser=name, params=n_params, dtype=dtype)
                        rows.append(row)
                        print(
                            f"{name:11s} {method:11s} steps={steps:4d} batch={batch:3d} {dtype:8s}"
                            f" {row['latency_ms']:10.2f} ms (min {row['min_ms']:.2f})"
                            f"  compile {row['compile_s']:.2f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    return rows


def _skip(name: str, steps: int, batch: int, dtype: str, args) -> bool:
    """The slow corner (UNet, 1000 steps, batch 64: ~10 min a call here) runs only on request."""
    if args.max_evals_x_batch and steps * batch > args.max_evals_x_batch and name == "unet1d":
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--denoisers", nargs="+", default=["mlp", "unet1d", "transformer"],
                        choices=list(_common.DENOISERS))  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=["ddpm", "dpmsolver++"])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=_common.DTYPES)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per case")
    parser.add_argument(
        "--max-evals-x-batch",
        type=int,
        default=6400,
        help="skip UNet cases with steps * batch above this (0: run all)",
    )
    parser.add_argument("--full", action="store_true", help="the issue's whole grid")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    args.dtypes = list(dict.fromkeys(args.dtypes))
    if "float32" in args.dtypes:  # first: the reference for the others' error
        args.dtypes = ["float32", *[d for d in args.dtypes if d != "float32"]]
    info = _common.machine()
    rows = run(args)
    print(_common.header("sampling latency, observation -> action chunk (DiffusionPolicy.act)",
                         info))  # fmt: skip
    print(_common.markdown_table(COLUMNS, rows))
    _common.write_json(args.json, "sampling", args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
