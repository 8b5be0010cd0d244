"""The matmul convolutions equal XLA's convolutions (and Flax's / PyTorch's layers)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_jit, normal, numpy_params

from dpjax.errors import ConfigError
from dpjax.nets import conv1d
from dpjax.nets.conv1d import Conv1D, Downsample1D, Upsample1D


@fast_jit
def all_convs(x, w5, w1, w3, w4):
    """Every formulation at once, so each input length compiles one program."""
    # Flax kernels are (k, Ci, Co); dpjax's are (Co, k, Ci)
    flax_conv = nn.Conv(w5.shape[0], (5,), padding=((2, 2),), use_bias=False)
    # Flax's ConvTranspose (transpose_kernel=False) pads the dilated input directly and does not
    # flip taps: PyTorch's padding p becomes k - 1 - p and the taps are reversed
    flax_up = nn.ConvTranspose(w4.shape[0], (4,), strides=(2,), padding=((2, 2),), use_bias=False)
    return {
        "same": conv1d.conv1d_same(x, w5),
        "same_taps": conv1d.conv1d_same_taps(x, w5),
        "same_lax": conv1d.conv1d_lax(x, w5),
        "same_flax": flax_conv.apply({"params": {"kernel": w5.transpose(1, 2, 0)}}, x),
        "pointwise": conv1d.conv1d_same(x, w1),
        "pointwise_lax": conv1d.conv1d_lax(x, w1),
        "down": conv1d.conv1d_stride2(x, w3),
        "down_lax": conv1d.conv1d_lax(x, w3, 2, 1),
        "up": conv1d.conv_transpose1d_x2(x, w4),
        "up_stacked": conv1d.conv_transpose1d_x2_stacked(x, w4),
        "up_lax": conv1d.conv_transpose1d_lax(x, w4),
        "up_flax": flax_up.apply({"params": {"kernel": w4.transpose(1, 2, 0)[::-1]}}, x),
    }


def _weights(ci=3, co=5, seed=0):
    return [normal((co, k, ci), seed + k) for k in (5, 1, 3, 4)]


# batch 2: lengths 1 and 7 take the few-rows (transposed) matmul, 40 the other one
@pytest.mark.parametrize("length", [1, 7, 40])
def test_matmul_forms_match_lax_and_flax(length):
    assert (2 * 7 <= conv1d.SMALL_ROWS) and (2 * 40 > conv1d.SMALL_ROWS)
    x = normal((2, length, 3), length)
    out = all_convs(x, *_weights())
    assert out["same"].shape == (2, length, 5)
    assert out["down"].shape == (2, (length + 1) // 2, 5)
    assert out["up"].shape == (2, 2 * length, 5)
    for name, ref in [
        ("same", "same_lax"),
        ("same_taps", "same_lax"),
        ("same", "same_flax"),
        ("pointwise", "pointwise_lax"),
        ("down", "down_lax"),
        ("up", "up_lax"),
        ("up_stacked", "up_lax"),
        ("up", "up_flax"),
    ]:
        np.testing.assert_allclose(out[name], out[ref], atol=1e-5, err_msg=f"{name} vs {ref}")


@pytest.mark.parametrize("length", [4, 40])
def test_matmul_gradients_match_lax_on_both_row_paths(length):
    """The few-rows path (weight on the left, optimization barrier) differentiates like lax."""
    x, w = normal((2, length, 6), 1), normal((4, 5, 6), 2)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    grads = jax.grad(loss(conv1d.conv1d_same), argnums=(0, 1))(x, w)
    ref = jax.grad(loss(conv1d.conv1d_lax), argnums=(0, 1))(x, w)
    for g, r in zip(grads, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_transposed_conv_matches_definition():
    # direct scatter from PyTorch's definition: input i, tap j -> output 2i - 1 + j
    x = np.asarray(normal((2, 5, 3), 3))
    w = np.asarray(_weights()[3])
    ref = np.zeros((2, 10, 5), np.float32)
    for i in range(5):
        for j in range(4):
            if 0 <= 2 * i - 1 + j < 10:
                ref[:, 2 * i - 1 + j] += x[:, i] @ w[:, j].T
    np.testing.assert_allclose(conv1d.conv_transpose1d_x2(x, w), ref, atol=1e-5)


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    x = normal((2, 7, 3), 7)
    w5, _, w3, w4 = _weights()
    out = all_convs(x, *_weights())
    xt = torch.tensor(np.asarray(x)).permute(0, 2, 1)
    torch_w = {k: torch.tensor(np.asarray(w)) for k, w in [("w5", w5), ("w3", w3), ("w4", w4)]}
    ref = {
        "same": torch.nn.functional.conv1d(xt, torch_w["w5"].permute(0, 2, 1), padding=2),
        "down": torch.nn.functional.conv1d(xt, torch_w["w3"].permute(0, 2, 1), stride=2, padding=1),
        "up": torch.nn.functional.conv_transpose1d(
            xt, torch_w["w4"].permute(2, 0, 1), stride=2, padding=1
        ),
    }
    for name, r in ref.items():
        np.testing.assert_allclose(out[name], r.permute(0, 2, 1).numpy(), atol=1e-5, err_msg=name)


def test_modules_matmul_equals_lax_impl():
    modules = {"conv": (Conv1D(3, 5), 7), "down": (Downsample1D(), 4), "up": (Upsample1D(), 14)}

    @fast_jit
    def run(params, x):
        return {
            name: (module.apply(params[name], x), module.clone(impl="lax").apply(params[name], x))
            for name, (module, _) in modules.items()
        }

    x = normal((2, 7, 3), 1)
    outs = run({name: numpy_params(module, x) for name, (module, _) in modules.items()}, x)
    for name, (out, ref) in outs.items():
        assert out.shape == (2, modules[name][1], 3), name
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=name)
        assert jnp.abs(out).max() > 0


def test_bad_config_raises():
    x = jnp.zeros((1, 4, 3))
    with pytest.raises(ConfigError, match="odd"):
        jax.eval_shape(Conv1D(3, 4).init, jax.random.PRNGKey(0), x)
    with pytest.raises(ConfigError, match="impl"):
        jax.eval_shape(Conv1D(3, 5, impl="fft").init, jax.random.PRNGKey(0), x)


def test_bfloat16_kernels_keep_float32_activations():
    """Kernels stored in bfloat16 (cast once, outside the sampler) with float32 activations: the
    matmul takes bfloat16 inputs, accumulates in float32, and stays close to the float32 conv."""
    modules = {"conv": Conv1D(16, 5), "down": Downsample1D(), "up": Upsample1D()}
    x = normal((2, 8, 16), 2)
    params = {name: numpy_params(m, x) for name, m in modules.items()}
    half = conv1d.cast_conv_kernels(params)
    for name in modules:
        assert half[name]["params"]["kernel"].dtype == jnp.bfloat16
        assert half[name]["params"]["bias"].dtype == jnp.float32

    @fast_jit
    def run(params, half, x):
        return {n: (m.apply(params[n], x), m.apply(half[n], x)) for n, m in modules.items()}

    for name, (ref, out) in run(params, half, x).items():
        assert out.dtype == jnp.float32, name
        scale = float(jnp.abs(ref).max())
        np.testing.assert_allclose(out, ref, atol=2e-2 * scale, err_msg=name)
        assert not np.array_equal(np.asarray(out), np.asarray(ref)), name  # bf16 inputs really


def test_cast_conv_kernels_leaves_dense_weights():
    params = {"Dense_0": {"kernel": jnp.ones((3, 4))}, "Conv1D_0": {"kernel": jnp.ones((4, 5, 3))}}
    out = conv1d.cast_conv_kernels(params)
    assert out["Dense_0"]["kernel"].dtype == jnp.float32
    assert out["Conv1D_0"]["kernel"].dtype == jnp.bfloat16
