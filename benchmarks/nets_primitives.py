"""Times the UNet's temporal-conv primitives: XLA's conv vs the matmul forms in dpjax.nets.conv1d.

    python benchmarks/nets_primitives.py [--batches 1 64] [--budget 1.0] [--unet] [--matmul]
    python benchmarks/nets_primitives.py --encoders [--batches 64]   # the image encoders

Shapes are those ConditionalUnet1D(down_dims=(256, 512, 1024)) sees at horizon 16. Each entry is
the median wall time of one jitted call (ms), after a compile-and-warm-up call.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpjax.machine import cpu_model
from dpjax.nets import conv1d

# (name, length, c_in, c_out): stride-1 width-5 convs of the UNet at horizon 16
SAME = [("L16 256->256", 16, 256, 256), ("L8 512->512", 8, 512, 512),
        ("L4 1024->1024", 4, 1024, 1024), ("L4 2048->512", 4, 2048, 512)]  # fmt: skip
DOWN = [("L16 C256", 16, 256), ("L8 C512", 8, 512)]
UP = [("L4 C512", 4, 512), ("L8 C256", 8, 256)]


def time_call(fn, *args, budget: float) -> float:
    """Median milliseconds of `fn(*args)` over as many calls as fit in `budget` s (3 to 20)."""
    jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < 20 and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def time_all(impls: dict, x, w, budget: float) -> dict:
    return {name: time_call(jax.jit(fn), x, w, budget=budget) for name, fn in impls.items()}


def rows(batch: int, budget: float):
    """Yields (primitive, shape, {impl: ms}) for one batch size."""
    key = jax.random.PRNGKey(0)
    for name, length, ci, co in SAME:
        x = jax.random.normal(key, (batch, length, ci))
        w = jax.random.normal(key, (co, 5, ci)) * 0.02
        impls = {
            "lax": conv1d.conv1d_lax,
            "taps": conv1d.conv1d_same_taps,
            "stacked": conv1d.conv1d_same,
        }
        yield "conv k5", name, time_all(impls, x, w, budget)
    for name, length, ch in DOWN:
        x = jax.random.normal(key, (batch, length, ch))
        w = jax.random.normal(key, (ch, 3, ch)) * 0.02
        impls = {
            "lax": lambda x, w: conv1d.conv1d_lax(x, w, 2, 1),
            "stacked": conv1d.conv1d_stride2,
        }
        yield "down k3 s2", name, time_all(impls, x, w, budget)
    for name, length, ch in UP:
        x = jax.random.normal(key, (batch, length, ch))
        w = jax.random.normal(key, (ch, 4, ch)) * 0.02
        impls = {"lax": conv1d.conv_transpose1d_lax, "stacked": conv1d.conv_transpose1d_x2}
        yield "up k4 s2", name, time_all(impls, x, w, budget)


def unet_rows(batch: int, budget: float):
    """Yields (impl, ms) for one call of the full 63.5M-parameter UNet at horizon 16."""
    from dpjax.nets import ConditionalUnet1D

    x, t = jnp.zeros((batch, 16, 2)), jnp.zeros((batch,), jnp.int32)
    cond = jnp.zeros((batch, 36))
    model = ConditionalUnet1D(action_dim=2, cond_dim=36)
    # LLVM optimisation off for the one-off init, as DiffusionPolicy.init_params does
    init = jax.jit(model.init, compiler_options={"xla_backend_optimization_level": 0})
    params = init(jax.random.PRNGKey(0), x, t, cond)
    # lax convs at batch 64 take minutes per call here; measured at batch 1 only
    for impl in ("matmul", "lax") if batch == 1 else ("matmul",):
        apply = jax.jit(model.clone(conv_impl=impl).apply)
        yield impl, time_call(apply, params, x, t, cond, budget=budget)


def encoder_rows(batch: int, budget: float, names=None, crop: int = 84, steps: int = 2):
    """Yields (encoder, forward ms, forward + backward ms) for each image encoder on the
    `batch` x `steps` crops of a train step (the PushT image recipe: 64 x 2 at 84 x 84)."""
    from dpjax.nets.encoders import IMAGE_ENCODERS

    key = jax.random.PRNGKey(0)
    images = jax.random.randint(key, (batch * steps, crop, crop, 3), 0, 256).astype(jnp.uint8)
    for name, encoder_cls in IMAGE_ENCODERS.items():
        if names and name not in names:
            continue
        model = encoder_cls(256)
        params = model.init(key, images)
        forward = jax.jit(model.apply)
        grads = jax.jit(jax.grad(lambda p, x, m=model: jnp.sum(m.apply(p, x) ** 2)))
        yield (
            name,
            time_call(forward, params, images, budget=budget),
            time_call(grads, params, images, budget=budget),
        )


def print_encoder_table(batches, budget: float, names=None) -> None:
    print("\n# image encoders on a train step's crops (batch x 2 steps, 84 x 84 uint8);")
    print("# ms per call (median); backward = the gradient with respect to the parameters")
    print("| encoder | images | forward | forward + backward |")
    print("|---------|--------|---------|--------------------|")
    for batch in batches:
        for name, fwd, fwd_bwd in encoder_rows(batch, budget, names):
            print(f"| {name} | {2 * batch} | {fwd:.1f} | {fwd_bwd:.1f} |", flush=True)


# (K, Co) of the UNet's largest stride-1 conv (width 5 x 1024 channels) and a 256-channel one
MATMUL_WEIGHTS = [(5120, 1024), (1280, 256)]
MATMUL_ROWS = [1, 4, 8, 16, 32, 64, 128, 256, 1024]
_NT = (((1,), (1,)), ((), ()))


def _matmul_forms() -> dict:
    """rows (M, K) x weight (Co, K) -> (M, Co), three ways."""
    return {
        "rows x W^T": lambda x, w: lax.dot_general(x, w, _NT),
        "(W x rows^T)^T": lambda x, w: lax.optimization_barrier(lax.dot_general(w, x, _NT)).T,
        "bf16 rows x W^T": lambda x, w: lax.dot_general(
            x.astype(w.dtype), w, _NT, preferred_element_type=jnp.float32
        ),
    }


def matmul_rows(budget: float, weights=MATMUL_WEIGHTS, row_counts=MATMUL_ROWS):
    """Yields (K, Co, rows, {form: ms}, dpjax's form): the matmul behind every matmul conv.

    "rows x W^T" is the plain product, "(W x rows^T)^T" the weight-on-the-left product that
    `dpjax.nets.conv1d._matmul_nt` uses for up to SMALL_ROWS float32 rows on CPU.
    """
    key = jax.random.PRNGKey(0)
    for k, co in weights:
        w = jax.random.normal(key, (co, k)) * 0.02
        weights = {"rows x W^T": w, "(W x rows^T)^T": w, "bf16 rows x W^T": w.astype(jnp.bfloat16)}
        for m in row_counts:
            x = jax.random.normal(key, (m, k))
            ms = {n: time_call(jax.jit(f), x, weights[n], budget=budget)
                  for n, f in _matmul_forms().items()}  # fmt: skip
            used = "(W x rows^T)^T" if conv1d._few_rows_transposed(m, x.dtype) else "rows x W^T"
            yield k, co, m, ms, used


def print_matmul_table(budget: float) -> None:
    print("\n# the matmul under every conv: rows (M, K) x weight (Co, K); ms per call (median),")
    print("# GB/s = float32 weight bytes / time (batch-1 sampling is bound by reading weights)")
    forms = list(_matmul_forms())
    print(
        "| K x Co | rows | "
        + " | ".join(f"{f} ms" for f in forms)
        + " | dpjax uses | GB/s | GFLOP/s |"
    )
    print("|---|---:|" + "---:|" * len(forms) + "---|---:|---:|")
    for k, co, m, ms, used in matmul_rows(budget):
        cells = " | ".join(f"{ms[f]:.3f}" for f in forms)
        gbs = 4 * k * co / (ms[used] * 1e-3) / 1e9
        gflops = 2 * m * k * co / (ms[used] * 1e-3) / 1e9
        print(f"| {k} x {co} | {m} | {cells} | {used} | {gbs:.1f} | {gflops:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--unet", action="store_true", help="also time whole UNet calls")
    parser.add_argument("--matmul", action="store_true", help="only the matmul table")
    parser.add_argument(
        "--encoders", nargs="*", metavar="NAME", help="only the image encoders (these, or all)"
    )
    args = parser.parse_args(argv)
    cpu = cpu_model()
    print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}, {cpu}, {os.cpu_count()} cores")
    if args.matmul:
        print_matmul_table(args.budget)
        return
    if args.encoders is not None:
        from dpjax.errors import unknown_name
        from dpjax.nets.encoders import IMAGE_ENCODERS

        for name in args.encoders:
            if name not in IMAGE_ENCODERS:
                raise unknown_name("image encoder", name, IMAGE_ENCODERS)
        print_encoder_table(args.batches, args.budget, args.encoders)
        return
    print("# ms per call (median); lax = lax.conv_general_dilated (what nn.Conv runs);")
    print("# taps = sum of k shifted matmuls; stacked = one matmul over stacked taps (dpjax)")
    cols = ["lax", "taps", "stacked", "speedup"]
    print(
        f"| {'primitive':<10} | {'shape':<14} | {'batch':>5} | "
        + " | ".join(f"{c:>9}" for c in cols)
        + " |"
    )
    print(f"|{'-' * 12}|{'-' * 16}|{'-' * 7}|" + "|".join("-" * 11 for _ in cols) + "|")
    for batch in args.batches:
        for prim, shape, ms in rows(batch, args.budget):
            taps = f"{ms['taps']:9.3f}" if "taps" in ms else f"{'-':>9}"
            speedup = ms["lax"] / ms["stacked"]
            print(f"| {prim:<10} | {shape:<14} | {batch:>5} | {ms['lax']:9.3f} | {taps} | "
                  f"{ms['stacked']:9.3f} | {speedup:8.1f}x |", flush=True)  # fmt: skip
    if args.unet:
        print("\n| UNet (256,512,1024), H=16 | batch | ms per call |")
        print("|---------------------------|-------|-------------|")
        for batch in args.batches:
            for impl, ms in unet_rows(batch, args.budget):
                print(f"| conv_impl={impl:<15} | {batch:>5} | {ms:11.1f} |", flush=True)


if __name__ == "__main__":
    main()
