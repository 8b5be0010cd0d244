"""ConditionalUnet1D: reference parameter count, any horizon, shape errors, impl/dtype parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_jit, normal, numpy_params

from dpjax.errors import ConfigError, ShapeError
from dpjax.nets import ConditionalUnet1D, count_params
from dpjax.nets.unet1d import pad_to_multiple

SMALL = dict(action_dim=2, cond_dim=6, down_dims=(16, 32, 64), step_embed_dim=16)


def _inputs(batch=2, horizon=16, action_dim=2, cond_dim=6):
    return (
        normal((batch, horizon, action_dim), 0),
        jnp.arange(batch, dtype=jnp.int32) * 37,
        normal((batch, cond_dim), 1),
    )


def test_reference_parameter_count():
    # Diffusion Policy's ConditionalUnet1D(input_dim=2, cond_dim=36, kernel_size=5,
    # step_embed_dim=128, down_dims=(256, 512, 1024), cond_predict_scale=True)
    model = ConditionalUnet1D(action_dim=2, cond_dim=36)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *_inputs(1, 16, 2, 36))
    assert count_params(shapes) == 63_497_090


def test_any_horizon_including_odd():
    model = ConditionalUnet1D(**SMALL)
    noisy, timestep, cond = _inputs(horizon=17)
    params = numpy_params(model, noisy, timestep, cond)
    for h in (1, 7, 15, 16, 17):  # traced only: shape errors would surface here
        out = jax.eval_shape(model.apply, params, noisy[:, :h], timestep, cond)
        assert out.shape == (2, h, 2), h
    # a horizon of 16 is a multiple of 4 (two downsamples): nothing padded
    assert pad_to_multiple(noisy[:, :16], 4).shape[1] == 16
    assert pad_to_multiple(noisy[:, :15], 4).shape[1] == 16


@pytest.mark.parametrize(
    "noisy_shape, cond_shape, expected",
    [
        ((2, 16, 3), (2, 6), "(B, H, 2)"),
        ((2, 16), (2, 6), "(B, H, 2)"),
        ((2, 16, 2), (2, 7), "(2, 6)"),
        ((2, 16, 2), (3, 6), "(2, 6)"),
    ],
)
def test_wrong_shapes_raise_with_expected_shape(noisy_shape, cond_shape, expected):
    model = ConditionalUnet1D(**SMALL)
    args = (jnp.zeros(noisy_shape), jnp.zeros((2,), jnp.int32), jnp.zeros(cond_shape))
    with pytest.raises(ShapeError) as err:
        jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    assert expected in str(err.value)


def test_wrong_timestep_shape_and_missing_cond():
    model = ConditionalUnet1D(**SMALL)
    noisy, _, cond = _inputs()
    with pytest.raises(ShapeError, match=r"timestep: expected shape \(2,\)"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), noisy, jnp.zeros((3,), jnp.int32), cond)
    with pytest.raises(ConfigError, match="global_cond"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), noisy, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ConfigError, match="n_groups"):
        bad = ConditionalUnet1D(**{**SMALL, "down_dims": (12, 32)})
        jax.eval_shape(bad.init, jax.random.PRNGKey(0), noisy, jnp.zeros((2,), jnp.int32), cond)


TWO_LEVELS = {**SMALL, "down_dims": (16, 32)}  # compiles faster; still pads odd horizons


@fast_jit
def _float32_and_bfloat16(params, noisy, timestep, cond):
    model = ConditionalUnet1D(**TWO_LEVELS)
    return {
        "f32": model.apply(params, noisy, timestep, cond),
        "bf16": model.clone(dtype=jnp.bfloat16).apply(params, noisy, timestep, cond),
    }


def test_odd_horizon_runs_bfloat16_close_and_timestep_matters():
    # matmul == lax convolutions is checked layer by layer in test_nets_conv1d.py
    noisy, timestep, cond = _inputs(horizon=7)
    # the same sample twice, at two timesteps
    noisy, cond = jnp.concatenate([noisy, noisy]), jnp.concatenate([cond, cond])
    timestep = jnp.concatenate([timestep, timestep + 500])
    model = ConditionalUnet1D(**TWO_LEVELS)
    params = numpy_params(model, noisy, timestep, cond)
    out = _float32_and_bfloat16(params, noisy, timestep, cond)
    assert out["f32"].shape == (4, 7, 2) and np.isfinite(out["f32"]).all()
    assert out["bf16"].dtype == jnp.float32  # the dtype of noisy_actions
    bf16_shapes = jax.eval_shape(
        model.clone(dtype=jnp.bfloat16).init, jax.random.PRNGKey(0), noisy, timestep, cond
    )
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(bf16_shapes)} == {np.dtype("float32")}
    scale = float(jnp.abs(out["f32"]).max())
    assert 0 < float(jnp.abs(out["bf16"] - out["f32"]).max()) < 0.1 * scale
    assert float(jnp.abs(out["f32"][2:] - out["f32"][:2]).max()) > 1e-3
