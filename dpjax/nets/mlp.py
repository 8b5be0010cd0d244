"""The seed document's fusion MLP denoiser: the smallest network that conditions on observations."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dpjax.nets.embeddings import TimestepEmbedding, mish
from dpjax.nets.shapes import broadcast_timestep, check_shape


class MLPDenoiser(nn.Module):
    """(noisy_actions (B, H, A), timestep (B,), conditioning (B, C)) -> (B, H, A).

    concat[conditioning (e.g. vision 256 + proprio 64), timestep embedding 128, flattened
    noisy actions H*A] -> 512 -> 512 -> 256 -> H*A, Mish activations (Diffusion Policy's choice,
    smoother than ReLU near zero, which the noise-prediction target rewards).
    With cond_dim=0, conditioning may be None (an unconditional model).
    """

    action_dim: int = 4
    pred_horizon: int = 10
    cond_dim: int = 320
    hidden_dims: Sequence[int] = (512, 512, 256)
    step_embed_dim: int = 128
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        noisy_actions: jnp.ndarray,
        timestep: jnp.ndarray,
        conditioning: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        check_shape("noisy_actions", noisy_actions, (None, self.pred_horizon, self.action_dim))
        batch = noisy_actions.shape[0]
        timestep = broadcast_timestep(timestep, batch)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        parts = [
            TimestepEmbedding(self.step_embed_dim, **dense)(timestep),
            noisy_actions.reshape(batch, -1).astype(self.dtype),
        ]
        if self.cond_dim:
            if conditioning is None:
                conditioning = jnp.zeros((0,))  # fails the check below with the expected shape
            check_shape("conditioning", conditioning, (batch, self.cond_dim))
            parts.insert(0, conditioning.astype(self.dtype))
        x = jnp.concatenate(parts, axis=-1)
        for width in self.hidden_dims:
            x = mish(nn.Dense(width, **dense)(x))
        out = nn.Dense(self.pred_horizon * self.action_dim, **dense)(x)
        return out.reshape(noisy_actions.shape).astype(noisy_actions.dtype)
