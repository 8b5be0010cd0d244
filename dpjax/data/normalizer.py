"""Per-dimension min-max normalization to [-1, 1], built from `DatasetStats`.

Diffusion Policy normalizes actions and low-dimensional observations this way so that the
Gaussian noise of the forward process has a scale matched to the data. Dimensions that never
vary (max == min) are mapped to 0 and back without dividing by their zero range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

from dpjax.data.stats import DatasetStats
from dpjax.errors import DataError

# Ranges below this are treated as constant: dividing by them would amplify float noise.
_RANGE_EPS = 1e-6


@struct.dataclass
class Normalizer:
    """Affine maps y = (x - center) * scale, per step key ("action", "observation/state").

    center / scale have the per-step shape of their key (e.g. (A,)); they broadcast over any
    leading batch / time axes, so `normalize("action", a)` works on a (B, H, A) action chunk.
    A pytree of arrays: it can be passed into jitted functions and stored in checkpoints.
    """

    center: dict[str, jnp.ndarray]
    scale: dict[str, jnp.ndarray]

    @classmethod
    def from_stats(cls, stats: DatasetStats, keys: Iterable[str] | None = None) -> Normalizer:
        """Uses the min/max of `keys` (default: every key with statistics)."""
        keys = list(stats.arrays) if keys is None else list(keys)
        missing = [k for k in keys if k not in stats.arrays]
        if missing:
            raise DataError(f"no statistics for {missing}; available: {sorted(stats.arrays)}")
        center, scale = {}, {}
        for key in keys:
            low, high = stats.arrays[key].min, stats.arrays[key].max
            span = high - low
            center[key] = jnp.asarray((high + low) / 2, jnp.float32)
            scale[key] = jnp.asarray(
                np.where(span > _RANGE_EPS, 2.0 / np.maximum(span, _RANGE_EPS), 1.0), jnp.float32
            )
        return cls(center=center, scale=scale)

    def normalize(self, key: str, x: jnp.ndarray) -> jnp.ndarray:
        """x (..., *shape) in [min, max] -> (..., *shape) in [-1, 1]."""
        return (x - self.center[key]) * self.scale[key]

    def unnormalize(self, key: str, y: jnp.ndarray) -> jnp.ndarray:
        """Inverse of `normalize`."""
        return y / self.scale[key] + self.center[key]

    def has(self, name: str) -> bool:
        """Whether `name` ("action", "observation/<key>") is normalized."""
        return name in self.center

    def normalize_observation(self, observation: Mapping[str, jnp.ndarray]) -> dict[str, Any]:
        """Normalizes the low-dim keys of {name: (..., *shape)}; images pass through as is."""
        return {
            k: self.normalize(f"observation/{k}", v) if f"observation/{k}" in self.center else v
            for k, v in observation.items()
        }

    def to_dict(self) -> dict[str, dict[str, list]]:
        """JSON-compatible form, e.g. to save next to a checkpoint."""
        return {
            key: {
                "center": np.asarray(self.center[key]).tolist(),
                "scale": np.asarray(self.scale[key]).tolist(),
            }
            for key in self.center
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        try:
            center = {k: jnp.asarray(v["center"], jnp.float32) for k, v in d.items()}
            scale = {k: jnp.asarray(v["scale"], jnp.float32) for k, v in d.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"corrupt normalizer: {type(e).__name__}: {e}") from e
        for key in center:
            if center[key].shape != scale[key].shape or not bool(jnp.all(scale[key] > 0)):
                raise DataError(f"corrupt normalizer entry {key!r}")
        return cls(center=center, scale=scale)
