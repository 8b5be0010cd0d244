"""Observation encoders: low-dim MLPs, image CNNs with a spatial-softmax head, crops, and the
`ObservationEncoder` that turns an observation dict into conditioning for a denoiser.

Images arrive as uint8 (B, H, W, C) and are mapped to [-1, 1] inside the module (Diffusion
Policy's image range); float images are taken to be in [0, 1] already.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError, ShapeError, unknown_name
from dpjax.nets.embeddings import mish


def image_to_float(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 [0, 255] or float [0, 1] images -> `dtype` in [-1, 1]."""
    x = images.astype(dtype)
    x = x / 255.0 if images.dtype == jnp.uint8 else x
    return x * 2.0 - 1.0


def _check_crop(images: jnp.ndarray, crop_hw: tuple[int, int]) -> None:
    if images.ndim < 3 or crop_hw[0] > images.shape[-3] or crop_hw[1] > images.shape[-2]:
        raise ShapeError(
            f"images: expected shape (..., H >= {crop_hw[0]}, W >= {crop_hw[1]}, C), "
            f"got {tuple(images.shape)}"
        )


def random_crop(key: jax.Array, images: jnp.ndarray, crop_hw: tuple[int, int]) -> jnp.ndarray:
    """(..., H, W, C) -> (..., h, w, C): every image gets its own offset, fixed by `key`."""
    _check_crop(images, crop_hw)
    h, w = crop_hw
    lead, (height, width, channels) = images.shape[:-3], images.shape[-3:]
    flat = images.reshape(-1, height, width, channels)
    key_y, key_x = jax.random.split(key)
    top = jax.random.randint(key_y, (flat.shape[0],), 0, height - h + 1)
    left = jax.random.randint(key_x, (flat.shape[0],), 0, width - w + 1)

    def crop_one(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (h, w, channels))

    return jax.vmap(crop_one)(flat, top, left).reshape(*lead, h, w, channels)


def center_crop(images: jnp.ndarray, crop_hw: tuple[int, int]) -> jnp.ndarray:
    """(..., H, W, C) -> (..., h, w, C), the evaluation-time counterpart of `random_crop`."""
    _check_crop(images, crop_hw)
    top = (images.shape[-3] - crop_hw[0]) // 2
    left = (images.shape[-2] - crop_hw[1]) // 2
    return images[..., top : top + crop_hw[0], left : left + crop_hw[1], :]


class MLPEncoder(nn.Module):
    """(B, E) -> (B, features[-1]); Mish between layers, none after the last (the seed's 7 -> 64
    proprioception layer is `MLPEncoder((64,))`, one linear map)."""

    features: Sequence[int] = (64,)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.astype(self.dtype)
        for i, width in enumerate(self.features):
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = mish(x) if i < len(self.features) - 1 else x
        return x


class SpatialSoftmax(nn.Module):
    """(B, h, w, C) feature map -> (B, 2K): expected (x, y) in [-1, 1] of K learned keypoints."""

    num_keypoints: int = 32
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        batch, h, w, _ = features.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        logits = nn.Conv(self.num_keypoints, (1, 1), **kw)(features)
        # softmax in float32: a bfloat16 softmax over many positions loses the peak
        attention = jax.nn.softmax(logits.reshape(batch, h * w, -1).astype(jnp.float32), axis=1)
        ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
        grid = jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)  # (h*w, 2)
        keypoints = jnp.einsum("bpk,pd->bkd", attention, grid)
        return keypoints.reshape(batch, -1).astype(self.dtype)


def _group_norm(channels: int, dtype, param_dtype) -> nn.GroupNorm:
    # Diffusion Policy swaps BatchNorm for GroupNorm with 16 channels per group
    return nn.GroupNorm(
        num_groups=max(1, channels // 16), epsilon=1e-5, dtype=dtype, param_dtype=param_dtype
    )


class BasicBlock(nn.Module):
    """ResNet basic block, GroupNorm. (B, H, W, Ci) -> (B, H/strides, W/strides, features)."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        s = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), **kw)(x)
        y = nn.relu(_group_norm(self.features, self.dtype, self.param_dtype)(y))
        y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), **kw)(y)
        y = _group_norm(self.features, self.dtype, self.param_dtype)(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), s, **kw)(x)
            x = _group_norm(self.features, self.dtype, self.param_dtype)(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 trunk trained from scratch, GroupNorm instead of BatchNorm (no batch statistics,
    so train and eval behave alike), spatial-softmax keypoints -> Dense -> (B, features).

    The trunk downsamples 32x: images need >= 64 px for a feature map with more than one position
    (Diffusion Policy uses 84 or 96 px crops: a 3x3 map).
    """

    features: int = 256
    num_keypoints: int = 32
    stage_features: Sequence[int] = (64, 128, 256, 512)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = image_to_float(images, self.dtype)
        x = nn.Conv(self.stage_features[0], (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                    use_bias=False, **kw)(x)  # fmt: skip
        x = nn.relu(_group_norm(self.stage_features[0], **kw)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, width in enumerate(self.stage_features):
            x = BasicBlock(width, 1 if stage == 0 else 2, **kw)(x)
            x = BasicBlock(width, 1, **kw)(x)
        x = SpatialSoftmax(self.num_keypoints, **kw)(x)
        return nn.Dense(self.features, **kw)(x)


class SmallCNN(nn.Module):
    """Three stride-2 3x3 convs + spatial softmax -> (B, features): ResNet18's fast stand-in.

    `input_pool` > 1 averages input_pool x input_pool pixel blocks first (84 x 84 crops -> 42 x
    42 at 2): on a CPU the convolutions' backward pass dominates the image recipe's train
    step; halving the resolution cuts the encoder's forward + backward 5.5x (678 -> 122 ms for
    128 crops) and the whole step 3x on an AMD EPYC core (benchmarks/nets_primitives.py).
    """

    features: int = 256
    num_keypoints: int = 16
    channels: Sequence[int] = (32, 64, 64)
    input_pool: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = image_to_float(images, self.dtype)
        if self.input_pool > 1:
            window = (self.input_pool, self.input_pool)
            x = nn.avg_pool(x, window, window, padding="SAME")
        for width in self.channels:
            x = nn.Conv(width, (3, 3), (2, 2), padding=((1, 1), (1, 1)), **kw)(x)
            x = nn.relu(_group_norm(width, **kw)(x))
        x = SpatialSoftmax(self.num_keypoints, **kw)(x)
        return nn.Dense(self.features, **kw)(x)


IMAGE_ENCODERS = {
    "resnet18": ResNet18,
    "small_cnn": SmallCNN,
    "small_cnn_pool2": functools.partial(SmallCNN, input_pool=2),
}


def _as_steps(name: str, x: jnp.ndarray, rank: int, what: str) -> jnp.ndarray:
    """Adds the obs-step axis to a per-episode input: rank-`rank` -> rank+1, (B, 1, ...)."""
    if x.ndim == rank:
        return x[:, None]
    if x.ndim != rank + 1:
        raise ShapeError(
            f"observation[{name!r}]: expected {what} of shape "
            f"{'(B, T, E) or (B, E)' if rank == 2 else '(B, T, H, W, C) or (B, H, W, C)'}, "
            f"got {tuple(x.shape)}"
        )
    return x


class ObservationEncoder(nn.Module):
    """Observation dict -> conditioning for a denoiser.

    obs: {key: (B, T, E) low-dim or (B, T, H, W, C) uint8 image}; a key without the obs-step axis
    ((B, E) or (B, H, W, C)) counts as one step. Only `low_dim_keys` and `image_keys` are read,
    in that order; others are ignored, a missing one raises ShapeError naming it.

    Goal and text conditioning are extra keys, nothing more: a goal state ("goal") or a language
    embedding ("language_embedding") goes in `low_dim_keys`, a goal image in `image_keys`; each is
    encoded like an observation of the same kind (images by their own encoder unless
    `share_image_encoder`).

    output="vector": (B, C), every key's per-step features (low-dim through Dense(low_dim_features)
    or raw when None; images through the CNN) flattened over steps and concatenated over keys — the
    UNet's / MLP's global_cond. output="tokens": (B, N, token_dim), one token per key per step,
    key-major — the transformer's conditioning.

    Images are center-cropped to `crop_hw` when set, randomly cropped when `train=True` (that
    needs an "augment" rng: `apply(..., rngs={"augment": key})`).
    """

    low_dim_keys: Sequence[str] = ("agent_pos",)
    image_keys: Sequence[str] = ()
    output: str = "vector"
    low_dim_features: int | None = 64
    image_encoder: str = "resnet18"
    image_features: int = 256
    share_image_encoder: bool = False
    token_dim: int = 256
    crop_hw: tuple[int, int] | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _check(self, obs) -> None:
        if self.output not in ("vector", "tokens"):
            raise ConfigError(f"output must be 'vector' or 'tokens', got {self.output!r}")
        if self.image_keys and self.image_encoder not in IMAGE_ENCODERS:
            raise unknown_name("image encoder", self.image_encoder, IMAGE_ENCODERS)
        keys = (*self.low_dim_keys, *self.image_keys)
        if not keys:
            raise ConfigError("ObservationEncoder needs at least one low-dim or image key")
        for key in keys:
            if key not in obs:
                raise ShapeError(
                    f"observation is missing key {key!r}; expected keys {list(keys)}, "
                    f"got {sorted(obs)}"
                )
        batches = {key: obs[key].shape[0] if obs[key].ndim else None for key in keys}
        if len(set(batches.values())) != 1:
            raise ShapeError(f"observation keys disagree on batch size (axis 0): {batches}")

    def _image_encoder(self, key: str) -> nn.Module:
        return IMAGE_ENCODERS[self.image_encoder](
            self.image_features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"image_encoder_{key}",
        )

    def _encode_images(self, encoder, images: jnp.ndarray, train: bool) -> jnp.ndarray:
        """(B, T, H, W, C) -> (B, T, image_features)."""
        batch, steps = images.shape[:2]
        if self.crop_hw is not None:
            if train:
                images = random_crop(self.make_rng("augment"), images, self.crop_hw)
            else:
                images = center_crop(images, self.crop_hw)
        return encoder(images.reshape(-1, *images.shape[2:])).reshape(batch, steps, -1)

    @nn.compact
    def __call__(self, obs, train: bool = False) -> jnp.ndarray:
        self._check(obs)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        per_key = []
        for key in self.low_dim_keys:
            x = _as_steps(key, obs[key], 2, "a low-dim array").astype(self.dtype)
            width = self.token_dim if self.output == "tokens" else self.low_dim_features
            per_key.append(x if width is None else nn.Dense(width, **kw, name=f"low_dim_{key}")(x))
        shared = self._image_encoder("shared") if self.share_image_encoder else None
        for key in self.image_keys:
            images = _as_steps(key, obs[key], 4, "an image")
            encoder = shared if shared is not None else self._image_encoder(key)
            x = self._encode_images(encoder, images, train)
            if self.output == "tokens":
                x = nn.Dense(self.token_dim, **kw, name=f"image_token_{key}")(x)
            per_key.append(x)
        if self.output == "tokens":
            return jnp.concatenate(per_key, axis=1)
        return jnp.concatenate([x.reshape(x.shape[0], -1) for x in per_key], axis=-1)


def conditioning_shape(encoder: ObservationEncoder, obs) -> tuple[int, ...]:
    """The shape `encoder` returns for `obs`, computed abstractly (no parameters allocated);
    e.g. to size a denoiser's cond_dim / cond_dim."""
    out = jax.eval_shape(lambda o: encoder.init_with_output(jax.random.PRNGKey(0), o)[0], obs)
    return tuple(out.shape)
