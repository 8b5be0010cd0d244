"""Static shape checks at trace time: a wrong input fails with a message, not deep in XLA."""

from collections.abc import Sequence

import jax.numpy as jnp

from dpjax.errors import ShapeError

Dims = Sequence[int | str | None]


def format_shape(expected: Dims) -> str:
    """(None, 16, "A") -> "(B, 16, A)": None is the batch or any size, a str names a free dim."""
    parts = ["B" if d is None else str(d) for d in expected]
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def check_shape(name: str, x: jnp.ndarray, expected: Dims) -> None:
    """Raises ShapeError unless `x.shape` matches `expected` (None and str match any size).

    Not chex.assert_shape: `chex.disable_asserts()`, which users call for speed, would switch
    off the input checks that dpjax's bad-input errors rely on."""
    shape = tuple(x.shape)
    ok = len(shape) == len(expected) and all(
        not isinstance(e, int) or s == e for s, e in zip(shape, expected, strict=False)
    )
    if not ok:
        raise ShapeError(f"{name}: expected shape {format_shape(expected)}, got {shape}")


def broadcast_timestep(timestep: jnp.ndarray, batch: int) -> jnp.ndarray:
    """() or (B,) timesteps -> (B,); samplers often hold one scalar t for the whole batch."""
    timestep = jnp.asarray(timestep)
    if timestep.ndim == 0:
        return jnp.broadcast_to(timestep, (batch,))
    check_shape("timestep", timestep, (batch,))
    return timestep
