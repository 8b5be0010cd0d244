"""Diffusion-timestep embeddings and the activation Diffusion Policy uses throughout."""

import math

import flax.linen as nn
import jax.numpy as jnp

from dpjax.errors import ConfigError
from dpjax.nets.shapes import check_shape


def mish(x: jnp.ndarray) -> jnp.ndarray:
    """Mish(x) = x * tanh(softplus(x)) (Misra 2019), Diffusion Policy's activation."""
    return x * jnp.tanh(jnp.logaddexp(x, 0.0))


def sinusoidal_embedding(timesteps: jnp.ndarray, dim: int, max_period: float = 10000.0):
    """Transformer-style embedding of (B,) int or float timesteps -> (B, dim) float32.

    Layout [sin | cos] with frequencies exp(-log(max_period) * i / (dim/2 - 1)), as in Diffusion
    Policy's SinusoidalPosEmb, so the first frequency is 1 and the last 1/max_period.
    """
    if dim < 4 or dim % 2:
        raise ConfigError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
    check_shape("timesteps", timesteps, (None,))
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimestepEmbedding(nn.Module):
    """(B,) timesteps -> sinusoidal -> Dense(4*dim) -> Mish -> Dense(dim) -> (B, dim).

    `sinusoidal_dim` defaults to `dim` (Diffusion Policy uses the same width for both: 128).
    """

    dim: int = 128
    sinusoidal_dim: int | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, timesteps: jnp.ndarray) -> jnp.ndarray:
        emb = sinusoidal_embedding(timesteps, self.sinusoidal_dim or self.dim).astype(self.dtype)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = nn.Dense(4 * self.dim, **dense)(emb)
        return nn.Dense(self.dim, **dense)(mish(emb))
