"""Matmul precision: float32 everywhere, or bfloat16 matmul operands with float32 elsewhere.

`PolicyConfig.precision`:

    "float32"          every operation in float32.
    "bfloat16-matmul"  every float32 matmul and convolution of the networks (flax's Dense and
                       Conv, dpjax's temporal convolutions, einsums) reads its two operands
                       rounded to bfloat16 and accumulates / returns float32; parameters,
                       normalization, activations, the loss and the optimizer stay float32.
                       The backward pass's matmuls read bfloat16 too (the cotangent rounded).
    "auto"             the faster of the two on this backend: bfloat16-matmul on TPUs and
                       GPUs and on CPUs with AMX (an Intel Xeon here ran bfloat16 matmuls at
                       1,130 GFLOP/s against 210 float32), float32 on other CPUs (this AMD
                       EPYC: bfloat16 97 GFLOP/s, float32 140; benchmarks/roofline.py).

`with_precision(fn, precision)` applies it to any function of arrays (a network's `apply`)
without touching the network's code: it traces `fn` to a jaxpr and evaluates it again with
each float32 `dot_general` / `conv_general_dilated` (inside nested jits too) replaced by its
bfloat16-operand form. Everything else is bound as traced, including the bodies of scans,
remat and custom derivatives, whose matmuls stay float32: dpjax's networks use none of them
(tests/test_nets_precision.py checks that every matmul of their training step reads bfloat16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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
    from dpjax.machine import cpu_flags

    return "bfloat16-matmul" if "amx_bf16" in cpu_flags() else "float32"


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


def _evaluate(jaxpr, consts, args) -> list:
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
            outputs = [_bfloat16_matmul(eqn.primitive, eqn.params)(*inputs)]
        elif name in _NESTED_JITS:
            inner = eqn.params["jaxpr"]
            outputs = _evaluate(inner.jaxpr, inner.consts, inputs)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)  # (subfuns, params) before jax 0.7
            subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
            outputs = eqn.primitive.bind(*subfuns, *inputs, **params)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _bfloat16_matmul(primitive, params: dict) -> Callable:
    """The matmul `primitive` with `params`, from bfloat16 operands, float32 result; its
    backward pass rounds the cotangent to bfloat16 so those matmuls read bfloat16 too."""
    as_f32 = {**params, "preferred_element_type": jnp.float32}
    as_bf16 = {**params, "preferred_element_type": jnp.bfloat16}

    def forward(a, b):
        a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        return primitive.bind(a16, b16, **as_f32), (a16, b16)

    @jax.custom_vjp
    def matmul(a, b):
        return forward(a, b)[0]

    def backward(residuals, cotangent):
        _, vjp = jax.vjp(lambda x, y: primitive.bind(x, y, **as_bf16), *residuals)
        da, db = vjp(cotangent.astype(jnp.bfloat16))
        return da.astype(jnp.float32), db.astype(jnp.float32)

    matmul.defvjp(forward, backward)
    return matmul
