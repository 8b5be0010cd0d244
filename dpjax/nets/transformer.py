"""A transformer denoiser: action tokens self-attend and cross-attend to observation tokens.

Close to Diffusion Policy's time-series transformer (the timestep is one more conditioning token;
an optional causal mask over action tokens), but pre-LayerNorm throughout and with no separate
observation encoder stack: the cross-attention of every layer reads the projected tokens directly.
"""

import flax.linen as nn
import jax.numpy as jnp

from dpjax.errors import ConfigError, ShapeError
from dpjax.nets.embeddings import TimestepEmbedding
from dpjax.nets.shapes import broadcast_timestep, check_shape


class DecoderBlock(nn.Module):
    """Pre-LN: x += SelfAttn(LN x); x += CrossAttn(LN x, memory); x += MLP(LN x). x (B, H, W)."""

    num_heads: int
    mlp_ratio: int = 4
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, memory: jnp.ndarray, mask: jnp.ndarray | None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(num_heads=self.num_heads, deterministic=True, **kw)
        h = nn.LayerNorm(**kw)(x)
        x = x + nn.MultiHeadDotProductAttention(**attn, name="self_attn")(h, h, mask=mask)
        h = nn.LayerNorm(**kw)(x)
        x = x + nn.MultiHeadDotProductAttention(**attn, name="cross_attn")(h, memory)
        h = nn.LayerNorm(**kw)(x)
        h = nn.gelu(nn.Dense(self.mlp_ratio * x.shape[-1], **kw)(h))
        return x + nn.Dense(x.shape[-1], **kw)(h)


class TransformerDenoiser(nn.Module):
    """(noisy_actions (B, H, A), timestep (B,), conditioning (B, N, D) or (B, D)) -> (B, H, A).

    `pred_horizon` and `max_cond_tokens` size the learned positional embeddings: any H up to
    `pred_horizon` and any N up to `max_cond_tokens` are accepted. A (B, D) conditioning is one
    token. With `causal`, action token i attends only to tokens j <= i.
    """

    action_dim: int = 2
    pred_horizon: int = 16
    cond_dim: int = 256
    max_cond_tokens: int = 32
    num_layers: int = 4
    width: int = 256
    num_heads: int = 4
    mlp_ratio: int = 4
    causal: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _check_inputs(self, noisy_actions, conditioning):
        if self.width % self.num_heads:
            raise ConfigError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        check_shape("noisy_actions", noisy_actions, (None, "H", self.action_dim))
        batch, horizon = noisy_actions.shape[:2]
        if horizon > self.pred_horizon:
            raise ShapeError(
                f"noisy_actions: horizon {horizon} exceeds pred_horizon={self.pred_horizon}; "
                f"expected shape (B, <= {self.pred_horizon}, {self.action_dim})"
            )
        if conditioning.ndim == 2:
            conditioning = conditioning[:, None, :]
        check_shape("conditioning", conditioning, (batch, "N", self.cond_dim))
        if conditioning.shape[1] > self.max_cond_tokens:
            raise ShapeError(
                f"conditioning: {conditioning.shape[1]} tokens exceed max_cond_tokens="
                f"{self.max_cond_tokens}; expected shape (B, <= {self.max_cond_tokens}, "
                f"{self.cond_dim})"
            )
        return conditioning

    @nn.compact
    def __call__(
        self, noisy_actions: jnp.ndarray, timestep: jnp.ndarray, conditioning: jnp.ndarray
    ) -> jnp.ndarray:
        conditioning = self._check_inputs(noisy_actions, conditioning)
        batch, horizon = noisy_actions.shape[:2]
        timestep = broadcast_timestep(timestep, batch)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pos_init = nn.initializers.normal(0.02)

        action_pos = self.param("action_pos", pos_init, (self.pred_horizon, self.width))
        cond_pos = self.param("cond_pos", pos_init, (self.max_cond_tokens + 1, self.width))
        time_token = TimestepEmbedding(self.width, sinusoidal_dim=128, **kw)(timestep)[:, None]
        cond_tokens = nn.Dense(self.width, **kw, name="cond_proj")(conditioning.astype(self.dtype))
        memory = jnp.concatenate([time_token, cond_tokens], axis=1)
        memory = memory + cond_pos[: memory.shape[1]].astype(self.dtype)

        x = nn.Dense(self.width, **kw, name="action_proj")(noisy_actions.astype(self.dtype))
        x = x + action_pos[:horizon].astype(self.dtype)
        mask = nn.make_causal_mask(jnp.ones((batch, horizon))) if self.causal else None
        for i in range(self.num_layers):
            x = DecoderBlock(self.num_heads, self.mlp_ratio, **kw, name=f"block_{i}")(
                x, memory, mask
            )
        x = nn.LayerNorm(**kw)(x)
        out = nn.Dense(self.action_dim, **kw, name="action_head")(x)
        return out.astype(noisy_actions.dtype)
