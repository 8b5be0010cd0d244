"""MLP and transformer denoisers, the registry and count_params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_jit, normal, numpy_params

from dpjax.errors import ConfigError, ShapeError, UnknownNameError
from dpjax.nets import (
    ConditionalUnet1D,
    MLPDenoiser,
    ObservationEncoder,
    TransformerDenoiser,
    conditioning_shape,
    count_params,
    make_denoiser,
)

TINY_TF = dict(action_dim=3, pred_horizon=8, cond_dim=5, max_cond_tokens=4, num_layers=2,
               width=16, num_heads=2)  # fmt: skip


def _noisy(batch=2, horizon=8, action_dim=3, seed=0):
    return normal((batch, horizon, action_dim), seed)


def test_mlp_seed_architecture_shapes():
    # the seed's sizes: vision 256 + proprio 64 conditioning, 10 actions x 4D
    model = MLPDenoiser(action_dim=4, pred_horizon=10, cond_dim=320)
    noisy, t, cond = _noisy(3, 10, 4), jnp.array([0, 5, 99]), jnp.ones((3, 320))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), noisy, t, cond)
    kernels = [shapes["params"][f"Dense_{i}"]["kernel"].shape for i in range(4)]
    assert kernels == [(320 + 128 + 40, 512), (512, 512), (512, 256), (256, 40)]
    small = MLPDenoiser(action_dim=4, pred_horizon=10, cond_dim=6, hidden_dims=(32, 32))
    params = numpy_params(small, noisy, t, jnp.ones((3, 6)))
    out = fast_jit(small.apply)(params, noisy, t, jnp.ones((3, 6)))
    assert out.shape == (3, 10, 4) and np.isfinite(out).all()


def test_mlp_wrong_shapes_raise():
    model = MLPDenoiser(action_dim=4, pred_horizon=10, cond_dim=6)
    t = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ShapeError, match=r"expected shape \(B, 10, 4\), got \(2, 9, 4\)"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), _noisy(2, 9, 4), t, jnp.ones((2, 6)))
    with pytest.raises(ShapeError, match=r"conditioning: expected shape \(2, 6\)"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), _noisy(2, 10, 4), t, jnp.ones((2, 5)))
    with pytest.raises(ShapeError, match=r"\(2, 6\)"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), _noisy(2, 10, 4), t)


@fast_jit
def _transformer_outputs(params, noisy, t, tokens):
    model = TransformerDenoiser(**TINY_TF)
    return {
        "f32": model.apply(params, noisy, t, tokens),
        "bf16": model.clone(dtype=jnp.bfloat16).apply(params, noisy, t, tokens),
    }


def test_transformer_shapes_tokens_vector_and_bfloat16():
    model = TransformerDenoiser(**TINY_TF)
    noisy, t = _noisy(), jnp.array([3, 7], jnp.int32)
    tokens = normal((2, 4, 5), 1)
    params = numpy_params(model, noisy, t, tokens)
    shape = lambda *args: jax.eval_shape(model.apply, params, *args).shape
    assert shape(noisy, t, tokens[:, 0]) == (2, 8, 3)  # a (B, D) vector is one token
    assert shape(noisy[:, :5], t, tokens[:, :2]) == (2, 5, 3)  # shorter horizon, fewer tokens
    out = _transformer_outputs(params, noisy, t, tokens)
    assert out["f32"].shape == (2, 8, 3) and out["bf16"].dtype == jnp.float32
    scale = float(jnp.abs(out["f32"]).max())
    assert 0 < float(jnp.abs(out["bf16"] - out["f32"]).max()) < 0.1 * scale


@pytest.mark.parametrize(
    "noisy_shape, cond_shape, expected",
    [
        ((2, 9, 3), (2, 4, 5), "(B, <= 8, 3)"),
        ((2, 8, 2), (2, 4, 5), "(B, H, 3)"),
        ((2, 8, 3), (2, 4, 6), "(2, N, 5)"),
        ((2, 8, 3), (2, 5, 5), "(B, <= 4, 5)"),
    ],
)
def test_transformer_wrong_shapes_raise(noisy_shape, cond_shape, expected):
    model = TransformerDenoiser(**TINY_TF)
    args = (jnp.zeros(noisy_shape), jnp.zeros((2,), jnp.int32), jnp.zeros(cond_shape))
    with pytest.raises(ShapeError) as err:
        jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    assert expected in str(err.value)


@fast_jit
def _input_output_jacobian(params, noisy, t, tokens):
    """d out[i] / d noisy[j], summed over action dims: (H, H), for causal and full attention."""
    jacobians = {}
    for causal in (True, False):
        model = TransformerDenoiser(**TINY_TF, causal=causal)
        jac = jax.jacrev(lambda x, m=model: m.apply(params, x, t, tokens))(noisy)
        # (B, H, A, B, H, A) -> sample 0 only -> (H, H)
        jacobians[causal] = jnp.abs(jac[0, :, :, 0]).sum(axis=(1, 3))
    return jacobians


def test_causal_mask_really_masks():
    noisy, t = _noisy(1), jnp.array([10], jnp.int32)
    tokens = normal((1, 4, 5), 1)
    params = numpy_params(TransformerDenoiser(**TINY_TF), noisy, t, tokens)
    jac = _input_output_jacobian(params, noisy, t, tokens)
    future = np.triu(np.ones((8, 8), bool), k=1)  # [i, j] with j > i
    assert np.all(np.asarray(jac[True])[future] == 0.0)
    assert np.all(np.asarray(jac[True])[~future] > 0.0)
    assert np.all(np.asarray(jac[False])[future] > 0.0)  # without the mask, the future leaks


def test_registry_and_count_params():
    assert isinstance(make_denoiser("unet1d", action_dim=3), ConditionalUnet1D)
    assert isinstance(make_denoiser("mlp"), MLPDenoiser)
    assert make_denoiser("transformer", width=32).width == 32
    with pytest.raises(UnknownNameError, match="mlp, transformer, unet1d"):
        make_denoiser("resnet")
    with pytest.raises(ConfigError, match="down_dim.*valid: action_dim"):
        make_denoiser("unet1d", down_dim=(8, 16))
    assert count_params({"a": jnp.zeros((3, 4)), "b": [jnp.zeros(5), jnp.zeros(())]}) == 18


def test_encoder_outputs_fit_the_denoisers():
    """Vector conditioning sizes the UNet / MLP, tokens feed the transformer (traced only)."""
    obs = {"agent_pos": jnp.zeros((2, 2, 7)), "image": jnp.zeros((2, 2, 24, 24, 3), jnp.uint8)}
    kw = dict(low_dim_keys=("agent_pos",), image_keys=("image",), image_encoder="small_cnn")
    (cond_dim,) = conditioning_shape(ObservationEncoder(**kw), obs)[1:]
    assert cond_dim == 2 * 64 + 2 * 256  # the seed's proprio 64 + vision 256, two obs steps
    tokens_shape = conditioning_shape(ObservationEncoder(**kw, output="tokens", token_dim=32), obs)
    noisy, t = jnp.zeros((2, 16, 2)), jnp.zeros((2,), jnp.int32)
    models_and_conditioning = [
        (make_denoiser("unet1d", cond_dim=cond_dim), jnp.zeros((2, cond_dim))),
        (make_denoiser("mlp", action_dim=2, pred_horizon=16, cond_dim=cond_dim),
         jnp.zeros((2, cond_dim))),
        (make_denoiser("transformer", cond_dim=32), jnp.zeros(tokens_shape)),
    ]  # fmt: skip
    for model, cond in models_and_conditioning:
        out, _ = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), noisy, t, cond)
        assert out.shape == (2, 16, 2)
