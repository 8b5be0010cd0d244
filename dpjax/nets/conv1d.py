"""Temporal (1-D) convolutions written as matmuls, plus the lax references they are tested against.

Why not `nn.Conv`: XLA on CPU lowers `lax.conv_general_dilated` with a width-5 kernel over the
short sequences of an action chunk (length 4-16) to a path ~100-200x slower than the same maths as
one matmul over stacked shifted copies of the input (see benchmarks/nets_primitives.py). Not yet
measured on GPU/TPU: `conv_impl="lax"` on the modules selects XLA's conv there for comparison.

Layout: activations are (B, L, C) ("NWC"); kernels are (C_out, k, C_in) ("OWI", PyTorch's
(C_out, C_in, k) with the taps moved before the input channels). Contracting the last axis of both
operands ("NT" matmul) runs 2-3x faster on XLA:CPU than (k*C_in, C_out) weights for the few rows
(B*L = 4..64) of batch-1 sampling, where the UNet is bound by reading its weights.
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


def _matmul_nt(cols: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    """(B, L, K) x (Co, K) -> (B, L, Co), batch and length flattened into one row axis."""
    batch, length, _ = cols.shape
    rows = cols.reshape(batch * length, -1)
    out = lax.dot_general(rows, weight, (((1,), (1,)), ((), ())))
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

    Output 2m reads taps 1, 3 at inputs m, m-1; output 2m+1 reads taps 2, 0 at inputs m, m+1.
    Two dense matmuls over stacked neighbours replace the zero-inserted (lhs-dilated) conv,
    which would spend half its work multiplying zeros.
    """
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
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
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
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
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
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        if self.impl == "matmul":
            y = conv_transpose1d_x2(x, kernel)
        else:
            y = conv_transpose1d_lax(x, kernel)
        return y + bias
