"""Helpers for fast tests of Flax modules on a small CPU (tests only; not part of dpjax).

Compiling `jax.random` initialisers and samplers (threefry) costs seconds per distinct shape
there, more than running the tiny models under test; these draw with NumPy instead.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# LLVM optimisation off: about halves XLA:CPU compile time; test shapes are too small to care
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def normal(shape, seed: int = 0) -> jnp.ndarray:
    """Standard-normal float32 array drawn with NumPy."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def uint8_images(shape, seed: int = 0) -> jnp.ndarray:
    """Uniform uint8 array (images) drawn with NumPy."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def numpy_params(model, *args, seed: int = 0, **kwargs):
    """Variables of `model` with the shapes `model.init(key, *args, **kwargs)` gives (traced, never
    compiled), drawn with NumPy: kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.01), rest N(0, 1/n)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        if "scale" in jax.tree_util.keystr(path):
            return jnp.asarray(1 + 0.1 * noise, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return jnp.asarray(noise / np.sqrt(fan_in), leaf.dtype)

    shapes = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map_with_path(draw, shapes)
