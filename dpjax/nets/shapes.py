"""Static shape checks at trace time: a wrong input fails with a message, not deep in XLA."""

from collections.abc import Sequence

import chex
import jax.numpy as jnp

from dpjax.errors import ShapeError

Dims = Sequence[int | str | None]


def format_shape(expected: Dims) -> str:
    """(None, 16, "A") -> "(B, 16, A)": None is the batch or any size, a str names a free dim."""
    parts = ["B" if d is None else str(d) for d in expected]
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def check_shape(name: str, x: jnp.ndarray, expected: Dims) -> None:
    """Raises ShapeError unless `x.shape` matches `expected` (None and str match any size):
    chex.assert_shape's check, with the typed error and message the rest of dpjax gives."""
    try:
        chex.assert_shape(x, [d if isinstance(d, int) else None for d in expected])
    except AssertionError:
        raise ShapeError(
            f"{name}: expected shape {format_shape(expected)}, got {tuple(x.shape)}"
        ) from None


def broadcast_timestep(timestep: jnp.ndarray, batch: int) -> jnp.ndarray:
    """() or (B,) timesteps -> (B,); samplers often hold one scalar t for the whole batch."""
    timestep = jnp.asarray(timestep)
    if timestep.ndim == 0:
        return jnp.broadcast_to(timestep, (batch,))
    check_shape("timestep", timestep, (batch,))
    return timestep
