"""Regression heads: conditioning -> a whole action chunk in one forward pass (BC)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dpjax.nets.embeddings import mish


class BCHead(nn.Module):
    """conditioning (B, C) -> actions (B, H, A): Mish MLP, the seed's fusion sizes."""

    pred_horizon: int
    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 256)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cond: jnp.ndarray) -> jnp.ndarray:
        x = cond.astype(self.dtype)
        for width in self.hidden_dims:
            x = mish(nn.Dense(width, dtype=self.dtype)(x))
        x = nn.Dense(self.pred_horizon * self.action_dim, dtype=self.dtype)(x)
        return x.reshape(cond.shape[0], self.pred_horizon, self.action_dim)
