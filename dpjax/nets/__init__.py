"""Flax modules: embeddings, observation encoders and denoisers.

Every denoiser is called as `model.apply(params, noisy_actions (B, H, A), timestep (B,),
conditioning) -> (B, H, A)`; conditioning is (B, C) for "mlp" / "unet1d" and (B, N, D) tokens
for "transformer" (the two output modes of `ObservationEncoder`).
"""

import dataclasses

import jax
import numpy as np

from dpjax.errors import ConfigError, unknown_name
from dpjax.nets.conv1d import Conv1D, Downsample1D, Upsample1D
from dpjax.nets.embeddings import TimestepEmbedding, mish, sinusoidal_embedding
from dpjax.nets.encoders import (
    MLPEncoder,
    ObservationEncoder,
    ResNet18,
    SmallCNN,
    SpatialSoftmax,
    center_crop,
    conditioning_shape,
    random_crop,
)
from dpjax.nets.heads import BCHead, NoiseGate
from dpjax.nets.mlp import MLPDenoiser
from dpjax.nets.transformer import TransformerDenoiser
from dpjax.nets.unet1d import ConditionalUnet1D

DENOISERS = {
    "mlp": MLPDenoiser,
    "unet1d": ConditionalUnet1D,
    "transformer": TransformerDenoiser,
}


def make_denoiser(name: str, **kwargs):
    """Builds the denoiser registered as `name` ("mlp", "unet1d", "transformer") from kwargs."""
    if name not in DENOISERS:
        raise unknown_name("denoiser", name, DENOISERS)
    cls = DENOISERS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigError(
            f"{name} denoiser has no option {unknown}; valid: {', '.join(sorted(fields))}"
        )
    return cls(**kwargs)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (arrays or jax.ShapeDtypeStruct from eval_shape)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


__all__ = [
    "DENOISERS",
    "BCHead",
    "ConditionalUnet1D",
    "Conv1D",
    "Downsample1D",
    "MLPDenoiser",
    "MLPEncoder",
    "NoiseGate",
    "ObservationEncoder",
    "ResNet18",
    "SmallCNN",
    "SpatialSoftmax",
    "TimestepEmbedding",
    "TransformerDenoiser",
    "Upsample1D",
    "center_crop",
    "conditioning_shape",
    "count_params",
    "make_denoiser",
    "mish",
    "random_crop",
    "sinusoidal_embedding",
]
