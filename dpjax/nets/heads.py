"""Regression heads: conditioning -> a whole action chunk in one forward pass (BC), or K candidate
chunks and a categorical over them (multiple-hypothesis BC)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dpjax.nets.embeddings import mish


class BCHead(nn.Module):
    """conditioning (B, C) -> (chunks (B, K, H, A), logits (B, K)): Mish MLP, the seed's
    fusion sizes. K = num_hypotheses; with K = 1 the logits are zeros and not learned."""

    pred_horizon: int
    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 256)
    dtype: Any = jnp.float32
    num_hypotheses: int = 1

    @nn.compact
    def __call__(self, cond: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = cond.astype(self.dtype)
        for width in self.hidden_dims:
            x = mish(nn.Dense(width, dtype=self.dtype)(x))
        k, batch_size = self.num_hypotheses, cond.shape[0]
        chunks = nn.Dense(k * self.pred_horizon * self.action_dim, dtype=self.dtype)(x)
        chunks = chunks.reshape(batch_size, k, self.pred_horizon, self.action_dim)
        if k == 1:
            return chunks, jnp.zeros((batch_size, 1), jnp.float32)
        logits = nn.Dense(k, name="logits")(x.astype(jnp.float32))
        return chunks, logits
