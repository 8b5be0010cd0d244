"""Diffusion Policy's ConditionalUnet1D (Chi et al. 2023): a temporal UNet over the action chunk.

Same layers and parameter count as the reference (63,497,090 for action_dim=2, cond_dim=36,
down_dims=(256, 512, 1024), kernel_size=5, step_embed_dim=128), with FiLM conditioning
that predicts a per-channel scale and bias. Convolutions are the matmul forms of `conv1d.py`.

Any horizon works: the chunk is zero-padded at the end to a multiple of 2**(len(down_dims) - 1)
(the number of stride-2 downsamples) and the output cropped back. Horizons that are already a
multiple (16 in Diffusion Policy) are computed exactly as the reference; for others the padded
steps are extra context the convolutions see near the end of the chunk.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dpjax.errors import ConfigError
from dpjax.nets.conv1d import Conv1D, ConvImpl, Downsample1D, Upsample1D
from dpjax.nets.embeddings import TimestepEmbedding, mish
from dpjax.nets.shapes import broadcast_timestep, check_shape


class Conv1DBlock(nn.Module):
    """Conv1D -> GroupNorm -> Mish. (B, L, Ci) -> (B, L, features)."""

    features: int
    kernel_size: int = 5
    n_groups: int = 8
    impl: ConvImpl = "matmul"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = Conv1D(self.features, self.kernel_size, self.impl, self.dtype, self.param_dtype)(x)
        # PyTorch's GroupNorm epsilon, so converted weights behave the same
        norm = nn.GroupNorm(
            num_groups=self.n_groups, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype
        )
        return mish(norm(x))


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1DBlocks with FiLM in between, plus a (1x1 conv when channels change) residual.

    x (B, L, Ci), cond (B, Dc) -> (B, L, features).
    """

    features: int
    kernel_size: int = 5
    n_groups: int = 8
    impl: ConvImpl = "matmul"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
        block = dict(
            kernel_size=self.kernel_size,
            n_groups=self.n_groups,
            impl=self.impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        out = Conv1DBlock(self.features, **block)(x)
        film = nn.Dense(2 * self.features, dtype=self.dtype, param_dtype=self.param_dtype)(
            mish(cond)
        )
        scale, bias = jnp.split(film, 2, axis=-1)
        out = scale[:, None, :] * out + bias[:, None, :]
        out = Conv1DBlock(self.features, **block)(out)
        if x.shape[-1] != self.features:
            x = Conv1D(self.features, 1, self.impl, self.dtype, self.param_dtype)(x)
        return out + x


def pad_to_multiple(x: jnp.ndarray, multiple: int) -> jnp.ndarray:
    """(B, L, C) -> (B, ceil(L / multiple) * multiple, C), zeros appended along L."""
    extra = -x.shape[1] % multiple
    return jnp.pad(x, ((0, 0), (0, extra), (0, 0))) if extra else x


# Diffusion Policy's (and LeRobot's) final Conv1dBlock keeps its default 8 GroupNorm groups
# whatever n_groups is; matching it keeps their weights' function (benchmarks/vs_lerobot.py
# --parity checks n_groups 4 too).
FINAL_BLOCK_GROUPS = 8


class ConditionalUnet1D(nn.Module):
    """Denoiser (noisy_actions (B, H, A), timestep (B,), global_cond (B, C)) -> (B, H, A).

    `global_cond` is the flattened observation features (ObservationEncoder in vector mode).
    With cond_dim=0 it may be None. The output has the dtype of `noisy_actions`.
    """

    action_dim: int = 2
    cond_dim: int = 36
    down_dims: Sequence[int] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    conv_impl: ConvImpl = "matmul"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _check_config(self) -> None:
        if not self.down_dims:
            raise ConfigError("ConditionalUnet1D needs at least one entry in down_dims")
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            raise ConfigError(f"down_dims {bad} are not divisible by n_groups={self.n_groups}")
        if self.down_dims[0] % FINAL_BLOCK_GROUPS:
            raise ConfigError(
                f"down_dims[0]={self.down_dims[0]} is not divisible by {FINAL_BLOCK_GROUPS}, the "
                "final block's GroupNorm groups (as in Diffusion Policy's UNet)"
            )

    @nn.compact
    def __call__(
        self,
        noisy_actions: jnp.ndarray,
        timestep: jnp.ndarray,
        global_cond: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        self._check_config()
        check_shape("noisy_actions", noisy_actions, (None, "H", self.action_dim))
        batch, horizon = noisy_actions.shape[:2]
        timestep = broadcast_timestep(timestep, batch)
        cond = TimestepEmbedding(
            self.step_embed_dim, dtype=self.dtype, param_dtype=self.param_dtype
        )(timestep)
        if self.cond_dim:
            if global_cond is None:
                raise ConfigError(f"global_cond of shape (B, {self.cond_dim}) is required")
            check_shape("global_cond", global_cond, (batch, self.cond_dim))
            cond = jnp.concatenate([cond, global_cond.astype(self.dtype)], axis=-1)

        block = dict(
            kernel_size=self.kernel_size,
            n_groups=self.n_groups,
            impl=self.conv_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        resample = dict(impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype)
        levels = len(self.down_dims)
        x = pad_to_multiple(noisy_actions.astype(self.dtype), 2 ** (levels - 1))

        skips = []
        for level, features in enumerate(self.down_dims):
            x = ConditionalResidualBlock1D(features, **block)(x, cond)
            x = ConditionalResidualBlock1D(features, **block)(x, cond)
            skips.append(x)
            if level < levels - 1:
                x = Downsample1D(**resample)(x)

        for _ in range(2):
            x = ConditionalResidualBlock1D(self.down_dims[-1], **block)(x, cond)

        # the reference upsamples after every up level; the finest skip is never concatenated
        for features in reversed(self.down_dims[:-1]):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ConditionalResidualBlock1D(features, **block)(x, cond)
            x = ConditionalResidualBlock1D(features, **block)(x, cond)
            x = Upsample1D(**resample)(x)

        x = Conv1DBlock(self.down_dims[0], **{**block, "n_groups": FINAL_BLOCK_GROUPS})(x)
        x = Conv1D(self.action_dim, 1, self.conv_impl, self.dtype, self.param_dtype)(x)
        return x[:, :horizon].astype(noisy_actions.dtype)
