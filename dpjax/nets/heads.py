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


class NoiseGate(nn.Module):
    """A one-step student's mode gate: K learned mode codes (added to the conditioning), a
    gate that picks one from the initial noise x_T and the conditioning, and K centroid
    chunks that say, in training, which code a teacher's chunk belongs to.

    A deterministic noise -> chunk map onto separated modes is discontinuous at the modes'
    boundaries, which one smooth network blurs (chunks between the modes). With the gate the
    discontinuity is the gate's argmax; each code's map stays inside its mode.

    logits(x_T (B, H, A), cond (B, C) or (B, N, D)) -> (B, K); centroids(cond) -> (B, K, H, A);
    condition(cond, mode (B,)) -> cond + code[mode]. The codes start at zero, so a student
    initialized from its teacher starts as the teacher whatever the gate picks.
    """

    num_modes: int
    pred_horizon: int
    action_dim: int
    code_dim: int
    hidden_dims: Sequence[int] = (256, 256)

    def setup(self):
        k, chunk = self.num_modes, self.pred_horizon * self.action_dim
        self.codes = self.param("codes", nn.initializers.zeros, (k, self.code_dim))
        self.gate_layers = [nn.Dense(w) for w in self.hidden_dims] + [nn.Dense(k)]
        self.centroid_layers = [nn.Dense(w) for w in self.hidden_dims] + [nn.Dense(k * chunk)]

    @staticmethod
    def _mlp(layers, x):
        for layer in layers[:-1]:
            x = mish(layer(x))
        return layers[-1](x)

    @staticmethod
    def _vector(cond: jnp.ndarray) -> jnp.ndarray:
        """(B, C) conditioning, or the mean of (B, N, D) tokens."""
        cond = cond.astype(jnp.float32)
        return cond if cond.ndim == 2 else cond.mean(axis=1)

    def logits(self, x_T: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
        flat = x_T.reshape(x_T.shape[0], -1).astype(jnp.float32)
        return self._mlp(self.gate_layers, jnp.concatenate([flat, self._vector(cond)], -1))

    def centroids(self, cond: jnp.ndarray) -> jnp.ndarray:
        out = self._mlp(self.centroid_layers, self._vector(cond))
        return out.reshape(-1, self.num_modes, self.pred_horizon, self.action_dim)

    def condition(self, cond: jnp.ndarray, mode: jnp.ndarray) -> jnp.ndarray:
        code = self.codes[mode].astype(cond.dtype)  # (B, code_dim)
        return cond + code.reshape(code.shape[0], *(1,) * (cond.ndim - 2), code.shape[-1])

    def __call__(self, x_T: jnp.ndarray, cond: jnp.ndarray):
        """(logits, centroids, cond conditioned on the gate's pick): touches every parameter."""
        logits = self.logits(x_T, cond)
        return logits, self.centroids(cond), self.condition(cond, jnp.argmax(logits, -1))
