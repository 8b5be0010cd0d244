import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import schedules
from dpjax.errors import ConfigError, UnknownNameError


def reference_betas(name, T, beta_start=1e-4, beta_end=0.02):
    """Independent float64 formulas, written from the papers' definitions."""
    i = np.arange(T, dtype=np.float64)
    if name == "linear":
        return beta_start + (beta_end - beta_start) * i / (T - 1)
    if name == "scaled_linear":
        r = math.sqrt(beta_start) + (math.sqrt(beta_end) - math.sqrt(beta_start)) * i / (T - 1)
        return r * r
    if name == "squaredcos_cap_v2":
        f = lambda s: np.cos((s / T + 0.008) / 1.008 * np.pi / 2) ** 2
        return np.minimum(1.0 - f(i + 1) / f(i), 0.999)
    if name == "sigmoid":
        z = -6.0 + 12.0 * i / (T - 1)
        return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-z))
    raise AssertionError(name)


@pytest.mark.parametrize("name", schedules.SCHEDULE_NAMES)
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_schedule_matches_float64_reference(name, T):
    s = schedules.make_schedule(name, T)
    # Betas are float32 by definition (as in diffusers); everything after is float64.
    betas = reference_betas(name, T).astype(np.float32).astype(np.float64)
    abar = np.cumprod(1.0 - betas)
    assert s.betas.shape == s.alphas_cumprod.shape == s.sigmas.shape == (T,)
    assert s.betas.dtype == jnp.float32 and s.num_train_timesteps == T
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas, 1.0 - betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=2e-6)
    np.testing.assert_allclose(s.sigmas, np.sqrt((1 - abar) / abar), rtol=2e-6)
    np.testing.assert_allclose(s.log_snr, np.log(abar / (1 - abar)), rtol=2e-5, atol=1e-5)
    assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)


def test_cosine_betas_capped():
    s = schedules.make_schedule("squaredcos_cap_v2", 1000)
    assert float(s.betas.max()) == pytest.approx(0.999, rel=1e-6)


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2", "scaled_linear"])
def test_zero_terminal_snr(name):
    plain = schedules.make_schedule(name, 1000)
    s = schedules.make_schedule(name, 1000, rescale_betas_zero_snr=True)
    assert float(s.alphas_cumprod[-1]) == schedules.ZERO_SNR_ALPHA_CUMPROD
    assert float(plain.alphas_cumprod[-1]) > 1e-5 or name == "squaredcos_cap_v2"
    np.testing.assert_allclose(s.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(s.sigmas)))
    # The terminal 2**-24 (diffusers' value) can exceed the rescaled abar_{T-2}; all else descends.
    assert np.all(np.diff(np.asarray(s.alphas_cumprod)[:-1]) < 0)


def test_bad_schedule_arguments():
    with pytest.raises(UnknownNameError, match="squaredcos_cap_v2"):
        schedules.make_schedule("cosine", 100)
    with pytest.raises(ConfigError):
        schedules.make_schedule("linear", 0)
    with pytest.raises(ConfigError):
        schedules.make_schedule("linear", 100, beta_start=0.1, beta_end=0.01)


def test_q_sample_moments():
    s = schedules.make_schedule("linear", 1000)
    x0 = jnp.array([[1.5, -2.0, 0.5]])
    for t in (0, 300, 999):
        noise = jax.random.normal(jax.random.key(t), (20000, 3))
        xt = schedules.q_sample(s, jnp.broadcast_to(x0, noise.shape), jnp.full((20000,), t), noise)
        abar = float(s.alphas_cumprod[t])
        np.testing.assert_allclose(xt.mean(0), np.sqrt(abar) * x0[0], atol=0.03)
        np.testing.assert_allclose(xt.var(0), 1 - abar, rtol=0.05, atol=1e-4)


@pytest.mark.parametrize("prediction_type", schedules.PREDICTION_TYPES)
def test_prediction_type_round_trip(prediction_type):
    s = schedules.make_schedule("squaredcos_cap_v2", 100)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (64, 8, 2))
    noise = jax.random.normal(k2, (64, 8, 2))
    t = jnp.arange(64) % 100
    xt = schedules.q_sample(s, x0, t, noise)
    target = schedules.training_target(s, prediction_type, x0, t, noise)
    x0_hat, eps_hat = schedules.convert_output(s, target, xt, t, prediction_type)
    # x0 from epsilon divides by sqrt(abar_t), which is ~1e-2 at the noisiest t.
    np.testing.assert_allclose(eps_hat, noise, atol=2e-3)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-2 if prediction_type != "sample" else 1e-6)


def test_velocity_definition():
    s = schedules.make_schedule("linear", 100)
    x0, noise, t = jnp.ones((2, 3)), 2 * jnp.ones((2, 3)), jnp.array([10, 90])
    a = np.asarray(s.alphas_cumprod)[[10, 90]][:, None]
    expected = np.sqrt(a) * 2 - np.sqrt(1 - a) * 1
    v = schedules.velocity(s, x0, t, noise)
    np.testing.assert_allclose(v, np.broadcast_to(expected, (2, 3)), rtol=1e-6)
