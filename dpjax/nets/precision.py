"""Matmul precision: float32 everywhere, or bfloat16 matmul operands with float32 elsewhere.

`PolicyConfig.precision`:

    "float32"          every operation in float32.
    "bfloat16-matmul"  every float32 matmul and convolution of the networks (flax's Dense and
                       Conv, dpjax's temporal convolutions, einsums) reads its two operands
                       rounded to bfloat16 and accumulates / returns float32; parameters,
                       normalization, activations, the loss and the optimizer stay float32.
                       The backward pass's matmuls read bfloat16 too (the cotangent rounded) and
                       accumulate float32.
    "auto"             the faster of the two on this backend: bfloat16-matmul on TPUs and
                       GPUs; on a CPU, measured when first asked (`cpu_bfloat16_speedup`,
                       cached per process). CPU flags do not tell: an Intel Xeon with AMX ran
                       bfloat16 matmuls at 1,130 GFLOP/s against 210 float32, an AMD EPYC
                       with avx512_bf16 at 97 against 140 one day, and a host of the same
                       name (family 26) at 884 against 397 another (benchmarks/roofline.py).
                       `dpjax train` records the resolved precision in the run's config.json
                       (agreed by every process), so a resume or evaluation elsewhere computes
                       what was trained.

`with_precision(fn, precision)` applies it to any function of arrays (a network's `apply`)
without touching the network's code: it traces `fn` to a jaxpr and evaluates it again with
each float32 `dot_general` / `conv_general_dilated` (inside nested jits too) replaced by its
bfloat16-operand form. Everything else is bound as traced, including the bodies of scans,
remat and custom derivatives, whose matmuls stay float32: dpjax's networks use none of them
(tests/test_nets_precision.py checks that every matmul of their training step reads bfloat16).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from dpjax.errors import unknown_name

PRECISIONS = ("float32", "bfloat16-matmul", "auto")
_MATMULS = ("dot_general", "conv_general_dilated")
_NESTED_JITS = ("pjit", "jit")


def resolve_precision(precision: str, backend: str | None = None) -> str:
    """ "auto" -> "bfloat16-matmul" or "float32" for `backend` (default: JAX's); the others
    unchanged. See the module doc for the measurements behind "auto"."""
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "bfloat16-matmul"
    return "bfloat16-matmul" if cpu_bfloat16_speedup() >= AUTO_MIN_SPEEDUP else "float32"


# "auto" on a CPU times (rows, inner) x (inner, outer) both ways: the UNet's middle temporal
# conv of a batch-64 training step (64 x 8 rows, 5 taps x 512 channels in, 512 out).
AUTO_PROBE = (512, 2560, 512)
# bfloat16-matmul is picked where it is at least this much faster (shared machines drift).
AUTO_MIN_SPEEDUP = 1.2


@functools.cache
def cpu_bfloat16_speedup(repeats: int = 7) -> float:
    """float32 time / bfloat16-matmul time of the `AUTO_PROBE` product on the CPU: the best of
    `repeats` interleaved calls of each, after compiling both (~0.1-0.5 s in all). Above 1
    where bfloat16 operands pay. Cached: one measurement per process."""
    rows, inner, outer = AUTO_PROBE
    cpu = jax.devices("cpu")[0]
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(ka, (rows, inner)), cpu)
    b = jax.device_put(jax.random.normal(kb, (inner, outer)), cpu)
    product = lambda a, b: a @ b
    forms = [jax.jit(product), jax.jit(with_precision(product, "bfloat16-matmul"))]
    best = [math.inf] * len(forms)
    for form in forms:
        jax.block_until_ready(form(a, b))
    for _ in range(repeats):
        for i, form in enumerate(forms):
            start = time.perf_counter()
            jax.block_until_ready(form(a, b))
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / best[1]


def agreed_precision(precision: str) -> str:
    """`resolve_precision(precision)`, the same in every process of a multi-process run:
    process 0's resolution, broadcast (processes compiling different programs would deadlock
    in their collectives)."""
    resolved = resolve_precision(precision)
    if jax.process_count() == 1 or precision != "auto":
        return resolved
    from jax.experimental import multihost_utils

    index = np.int32(PRECISIONS.index(resolved))
    return PRECISIONS[int(multihost_utils.broadcast_one_to_all(index))]


def with_precision(fn: Callable, precision: str) -> Callable:
    """`fn` computed at `precision` (resolved with `resolve_precision`). Positional arguments
    that are Python scalars or None, and all keyword arguments, are passed through as they
    are (static); the other positional arguments are pytrees of arrays."""
    if resolve_precision(precision) == "float32":
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        static = {i: a for i, a in enumerate(args) if _is_static(a)}
        dynamic = [a for i, a in enumerate(args) if i not in static]

        def call(*dyn):
            it = iter(dyn)
            full = [static[i] if i in static else next(it) for i in range(len(args))]
            return fn(*full, **kwargs)

        closed, out_shape = jax.make_jaxpr(call, return_shape=True)(*dynamic)
        out = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(dynamic))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


def _is_static(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _evaluate(jaxpr, consts, args, matmul: Callable | None = None) -> list:
    """Evaluates `jaxpr` with every float32 matmul / conv bound through `matmul(primitive,
    params)` (default `_bfloat16_matmul`) and everything else as traced."""
    matmul = matmul or _bfloat16_matmul
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, jex_core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _MATMULS and all(getattr(x, "dtype", None) == jnp.float32 for x in inputs):
            outputs = [matmul(eqn.primitive, eqn.params)(*inputs)]
        elif name in _NESTED_JITS:
            inner = eqn.params["jaxpr"]
            outputs = _evaluate(inner.jaxpr, inner.consts, inputs, matmul)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)  # (subfuns, params) before jax 0.7
            subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
            outputs = eqn.primitive.bind(*subfuns, *inputs, **params)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _rounded_matmul(primitive, params: dict) -> Callable:
    """The matmul `primitive` with `params` from bfloat16-rounded operands, accumulated into
    and returned as float32 (no derivative rule of its own); a dot_general in a layout
    XLA:CPU lacks for these types computed as (batch, rows, inner) x (batch, columns, inner)
    (`_canonical_dot`)."""
    as_f32 = {**params, "preferred_element_type": jnp.float32}

    def matmul(a, b):
        a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        if primitive.name != "dot_general":
            return primitive.bind(a, b, **as_f32)
        a, b, dims, out_shape = _canonical_dot(a, b, params["dimension_numbers"])
        out = primitive.bind(a, b, **{**as_f32, "dimension_numbers": dims})
        return out if out_shape is None else out.reshape(out_shape)

    return matmul


def _canonical_dot(a, b, dimension_numbers):
    """The same product as (batch, rows, inner) x (batch, columns, inner) -> (batch, rows,
    columns), the batch axis left out where there is none: `a`, `b`, their dimension numbers
    and the shape to reshape the product to (batch axes, then `a`'s kept, then `b`'s kept),
    None where the product is left as it is.
    XLA:CPU has no bfloat16 x bfloat16 -> float32 dot for some layouts that float32 dots
    take (several contracted axes: the weight gradient of a Dense layer on (B, L, C)
    inputs; batch axes not leading: multi-head attention's gradients; (k, j) x (b, l, k)),
    and the transposes of a canonical form cost copies (the forward of a batch-64 UNet call
    ran 1.15x slower with every product made canonical), so the forms it has stay as they are."""
    (contract_a, contract_b), (batch_a, batch_b) = dimension_numbers
    free_a = [d for d in range(a.ndim) if d not in (*contract_a, *batch_a)]
    free_b = [d for d in range(b.ndim) if d not in (*contract_b, *batch_b)]
    leading = tuple(range(len(batch_a)))
    simple = len(contract_a) == 1 and len(batch_a) <= 1 and len(free_b) <= 1
    if simple and batch_a == batch_b == leading:  # a Dense layer's, dpjax's convolutions'
        return a, b, dimension_numbers, None
    batch_shape = [a.shape[d] for d in batch_a]
    out_shape = (*batch_shape, *[a.shape[d] for d in free_a], *[b.shape[d] for d in free_b])
    lead = [math.prod(batch_shape)] if batch_a else []

    def merged(x, batch, free, contract):
        size = lambda axes: math.prod(x.shape[d] for d in axes)
        return x.transpose([*batch, *free, *contract]).reshape(*lead, size(free), size(contract))

    a, b = merged(a, batch_a, free_a, contract_a), merged(b, batch_b, free_b, contract_b)
    axes = (0,) if batch_a else ()
    return a, b, (((a.ndim - 1,), (b.ndim - 1,)), (axes, axes)), out_shape


def _bfloat16_matmul(primitive, params: dict) -> Callable:
    """The matmul `primitive` with `params`, from bfloat16 operands, float32 result. Its
    backward pass is the float32 matmul's, evaluated with `_rounded_matmul`: the cotangent
    and the saved operands read as bfloat16, the gradients accumulated in float32 (XLA:CPU
    ran bfloat16-output matmuls 1.1-1.3x slower than float32 ones on an AMD EPYC where
    bfloat16 operands with float32 output ran 1.3x faster)."""
    forward = _rounded_matmul(primitive, params)

    @jax.custom_vjp
    def matmul(a, b):
        return forward(a, b)

    def forward_saving(a, b):
        a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        return forward(a16, b16), (a16, b16)

    def backward(residuals, cotangent):
        a, b = (r.astype(jnp.float32) for r in residuals)  # exact: bfloat16 fits in float32
        _, vjp = jax.vjp(lambda x, y: primitive.bind(x, y, **params), a, b)
        closed = jax.make_jaxpr(vjp)(cotangent)
        return tuple(_evaluate(closed.jaxpr, closed.consts, [cotangent], _rounded_matmul))

    matmul.defvjp(forward_saving, backward)
    return matmul
