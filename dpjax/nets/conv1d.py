"""Temporal (1-D) convolutions written as matmuls, plus the lax references they are tested against.

Why not `nn.Conv`: XLA on CPU lowers `lax.conv_general_dilated` with a width-5 kernel over the
short sequences of an action chunk (length 4-16) to a path ~100-200x slower than the same maths as
one matmul over stacked shifted copies of the input (see benchmarks/nets_primitives.py). Not yet
measured on GPU/TPU: `conv_impl="lax"` on the modules selects XLA's conv there for comparison.

Layout: activations are (B, L, C) ("NWC"); kernels are (C_out, k, C_in) ("OWI", PyTorch's
(C_out, C_in, k) with the taps moved before the input channels). Contracting the last axis of both
operands ("NT" matmul) runs 2-3x faster on XLA:CPU than (k*C_in, C_out) weights for the few rows
(B*L = 4..64) of batch-1 sampling, where the UNet is bound by reading its weights; computing
that product transposed (weight on the left, see `_matmul_nt`) gains another 1.5x there.
Transposed-conv kernels use PyTorch's tap convention: tap j sends input i to output
`stride * i - padding + j`.
"""

from collections.abc import Callable
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dpjax.errors import ConfigError

ConvImpl = Literal["matmul", "lax"]
_DIMS = ("NWC", "OWI", "NWC")


def _uniform_fan_in(fan_in: int) -> Callable:
    """PyTorch's default Conv init U(+-1/sqrt(fan_in)), for weights and bias alike."""
    bound = 1.0 / (fan_in**0.5)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ---------------------------------------------------------------- matmul formulations (hot path)


def _stack_taps(xp: jnp.ndarray, k: int, length: int, stride: int = 1) -> jnp.ndarray:
    """(B, Lp, C) padded input -> (B, length, k*C): tap j of output i is xp[stride*i + j]."""
    taps = [xp[:, j : j + stride * (length - 1) + 1 : stride] for j in range(k)]
    return jnp.concatenate(taps, axis=-1) if k > 1 else taps[0]


# Row counts up to which `_matmul_nt` computes the transposed product (weight as the left
# operand). Measured crossover on XLA:CPU: 1.3-1.5x faster at 16-64 rows, even at 128, slower
# from 256 (benchmarks/nets_primitives.py --matmul). Batch-1 UNet calls have 4-16 rows.
SMALL_ROWS = 64


def _few_rows_transposed(num_rows: int, dtype) -> bool:
    """Whether `_matmul_nt` computes the transposed product: few float32 rows on CPU
    (with bfloat16 operands XLA:CPU is slower that way; not measured on GPU/TPU)."""
    return num_rows <= SMALL_ROWS and dtype == jnp.float32 and jax.default_backend() == "cpu"


def _matmul_nt(cols: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    """(B, L, K) x (Co, K) -> (B, L, Co), batch and length flattened into one row axis.

    A weight of another dtype (bfloat16 weights with float32 activations) sets the dtype of
    the matmul's inputs; the result is accumulated and returned in the activations' dtype.
    On CPU, few float32 rows (<= SMALL_ROWS) are computed as (Co, K) x (rows, K)^T -> (Co, rows), then
    transposed: XLA:CPU then streams the weight once (the matmul ran 1.2-2.7x faster at 4-8
    rows, where batch-1 sampling is bound by reading the weights). The
    optimization barrier keeps XLA from folding the (tiny) transpose back into the matmul.
    """
    batch, length, _ = cols.shape
    rows = cols.reshape(batch * length, -1).astype(weight.dtype)
    dims = (((1,), (1,)), ((), ()))

    def transposed(rows, weight):
        out_t = lax.dot_general(weight, rows, dims, preferred_element_type=cols.dtype)
        return lax.optimization_barrier(out_t).T

    def plain(rows, weight):
        return lax.dot_general(rows, weight, dims, preferred_element_type=cols.dtype)

    num_rows = batch * length
    if isinstance(num_rows, int):
        out = (transposed if _few_rows_transposed(num_rows, rows.dtype) else plain)(rows, weight)
    elif _few_rows_transposed(0, rows.dtype):
        # A symbolic batch (jax.export): the same choice, made when the program runs, so an
        # exported policy computes exactly what the jitted one does at every batch size.
        out = lax.cond(jnp.asarray(num_rows) <= SMALL_ROWS, transposed, plain, rows, weight)
    else:
        out = plain(rows, weight)
    return out.reshape(batch, length, weight.shape[0])


def conv1d_same(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Stride-1 'same' conv. x (B, L, Ci), kernel (Co, k, Ci), odd k -> (B, L, Co)."""
    co, k, ci = kernel.shape
    pad = k // 2
    xp = jnp.pad(x, ((0, 0), (pad, k - 1 - pad), (0, 0))) if k > 1 else x
    return _matmul_nt(_stack_taps(xp, k, x.shape[1]), kernel.reshape(co, k * ci))


def conv1d_same_taps(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Same maths as `conv1d_same` as a sum of k matmuls (kept for the benchmark)."""
    k = kernel.shape[1]
    pad = k // 2
    xp = jnp.pad(x, ((0, 0), (pad, k - 1 - pad), (0, 0)))
    length = x.shape[1]
    return sum(_matmul_nt(xp[:, j : j + length], kernel[:, j]) for j in range(k))


def conv1d_stride2(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Conv k=3, stride 2, padding 1 (the UNet downsample). (B, L, Ci) -> (B, ceil(L/2), Co)."""
    co, k, ci = kernel.shape
    out_len = (x.shape[1] - 1) // 2 + 1
    # right padding only as far as the last window reaches (PyTorch pads 1 but never reads it)
    xp = jnp.pad(x, ((0, 0), (1, 2 * out_len + k - 3 - x.shape[1]), (0, 0)))
    return _matmul_nt(_stack_taps(xp, k, out_len, stride=2), kernel.reshape(co, k * ci))


def conv_transpose1d_x2(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Transposed conv k=4, stride 2, padding 1 (the UNet upsample). (B, L, Ci) -> (B, 2L, Co).

    One matmul of the input with the kernel read as (Co * 4, Ci) (a free reshape, so the
    weights are never copied) gives every tap's contribution z[m, :, j] = W_j x_m; the
    outputs then gather them on the (small) activations: output 2m = z[m, 1] + z[m-1, 3],
    output 2m+1 = z[m, 2] + z[m+1, 0]. Slicing the taps out of the kernel instead copies the
    weights on every call (~9 ms of a ~40 ms batch-1 UNet call here).
    """
    co, k, ci = kernel.shape
    if k != 4:
        raise ConfigError(f"conv_transpose1d_x2 needs a width-4 kernel, got {k}")
    batch, length, _ = x.shape
    z = _matmul_nt(x, kernel.reshape(co * k, ci)).reshape(batch, length, co, k)
    zp = jnp.pad(z, ((0, 0), (1, 1), (0, 0), (0, 0)))
    even = zp[:, 1:-1, :, 1] + zp[:, :-2, :, 3]
    odd = zp[:, 1:-1, :, 2] + zp[:, 2:, :, 0]
    return jnp.stack([even, odd], axis=2).reshape(batch, 2 * length, co)


def conv_transpose1d_x2_stacked(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Same maths as `conv_transpose1d_x2` with the taps sliced out of the kernel (kept for
    the benchmark): two matmuls over stacked neighbours, each reading half the kernel."""
    co, k, ci = kernel.shape
    if k != 4:
        raise ConfigError(f"conv_transpose1d_x2 needs a width-4 kernel, got {k}")
    length = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
    prev, here, nxt = xp[:, :length], xp[:, 1 : length + 1], xp[:, 2:]
    even = _matmul_nt(jnp.concatenate([here, prev], -1), kernel[:, 1::2].reshape(co, 2 * ci))
    odd = _matmul_nt(jnp.concatenate([here, nxt], -1), kernel[:, 2::-2].reshape(co, 2 * ci))
    return jnp.stack([even, odd], axis=2).reshape(x.shape[0], 2 * length, co)


# ---------------------------------------------------------------- lax references


def conv1d_lax(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1, padding=None) -> jnp.ndarray:
    """Reference conv with PyTorch padding semantics (`padding` defaults to k // 2 both sides)."""
    pad = kernel.shape[1] // 2 if padding is None else padding
    return lax.conv_general_dilated(x, kernel, (stride,), [(pad, pad)], dimension_numbers=_DIMS)


def conv_transpose1d_lax(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 2, padding: int = 1
) -> jnp.ndarray:
    """Reference PyTorch ConvTranspose1d: a conv of the stride-dilated input with flipped taps."""
    k = kernel.shape[1]
    pad = k - 1 - padding
    return lax.conv_general_dilated(
        x, kernel[:, ::-1], (1,), [(pad, pad)], lhs_dilation=(stride,), dimension_numbers=_DIMS
    )


def _check_impl(impl: str) -> None:
    if impl not in ("matmul", "lax"):
        raise ConfigError(f"conv impl must be 'matmul' or 'lax', got {impl!r}")


def _operands(x, kernel, bias, dtype, impl: str):
    """Activations and bias in `dtype`. A kernel stored in bfloat16 stays bfloat16 on the matmul
    path: its matmul then reads half the bytes and accumulates in `dtype`. Casting it to float32
    instead would copy every weight on every call (XLA:CPU does not fuse that convert into the
    matmul: 7x slower than float32 weights for the UNet's batch-1 calls, measured here)."""
    keep = impl == "matmul" and kernel.dtype == jnp.bfloat16
    return x.astype(dtype), kernel if keep else kernel.astype(dtype), bias.astype(dtype)


def cast_conv_kernels(params, dtype=jnp.bfloat16):
    """The parameter tree with every temporal-conv kernel (3-D "kernel") stored as `dtype`.

    Done once, outside the sampler: with bfloat16 kernels and float32 activations the UNet's
    matmuls read half the bytes and accumulate in float32; everything else stays float32.
    It halves the weights' memory. On XLA:CPU it is not faster: bfloat16 matmuls miss the
    few-rows path of `_matmul_nt`, and batch-1 UNet calls ran 1.1-1.8x slower than float32
    (benchmarks/sampling.py --dtypes float32 bf16-weights).
    """

    def cast(path, a):
        is_conv = getattr(path[-1], "key", None) == "kernel" and a.ndim == 3
        return a.astype(dtype) if is_conv else a

    return jax.tree_util.tree_map_with_path(cast, params)


# ---------------------------------------------------------------- modules


class Conv1D(nn.Module):
    """Stride-1 'same' temporal conv. (B, L, Ci) -> (B, L, features); kernel (features, k, Ci)."""

    features: int
    kernel_size: int = 5
    impl: ConvImpl = "matmul"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        _check_impl(self.impl)
        if self.kernel_size % 2 != 1:
            raise ConfigError(
                f"Conv1D kernel_size must be odd for 'same' padding, got {self.kernel_size}"
            )
        fan_in = x.shape[-1] * self.kernel_size
        kernel = self.param(
            "kernel",
            _uniform_fan_in(fan_in),
            (self.features, self.kernel_size, x.shape[-1]),
            self.param_dtype,
        )
        bias = self.param("bias", _uniform_fan_in(fan_in), (self.features,), self.param_dtype)
        x, kernel, bias = _operands(x, kernel, bias, self.dtype, self.impl)
        y = conv1d_same(x, kernel) if self.impl == "matmul" else conv1d_lax(x, kernel)
        return y + bias


class Downsample1D(nn.Module):
    """Conv k=3, stride 2, padding 1, channels kept: (B, L, C) -> (B, ceil(L/2), C)."""

    impl: ConvImpl = "matmul"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        _check_impl(self.impl)
        c = x.shape[-1]
        kernel = self.param("kernel", _uniform_fan_in(3 * c), (c, 3, c), self.param_dtype)
        bias = self.param("bias", _uniform_fan_in(3 * c), (c,), self.param_dtype)
        x, kernel, bias = _operands(x, kernel, bias, self.dtype, self.impl)
        y = conv1d_stride2(x, kernel) if self.impl == "matmul" else conv1d_lax(x, kernel, 2, 1)
        return y + bias


class Upsample1D(nn.Module):
    """Transposed conv k=4, stride 2, padding 1, channels kept. (B, L, C) -> (B, 2L, C)."""

    impl: ConvImpl = "matmul"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        _check_impl(self.impl)
        c = x.shape[-1]
        kernel = self.param("kernel", _uniform_fan_in(4 * c), (c, 4, c), self.param_dtype)
        bias = self.param("bias", _uniform_fan_in(4 * c), (c,), self.param_dtype)
        x, kernel, bias = _operands(x, kernel, bias, self.dtype, self.impl)
        if self.impl == "matmul":
            y = conv_transpose1d_x2(x, kernel)
        else:
            y = conv_transpose1d_lax(x, kernel)
        return y + bias
