"""The training objective's options checked against their formulas: logit-normal timestep
sampling (the distribution of the drawn timesteps) and min-SNR-gamma weighting (the weights,
and that the loss applies them)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import losses, schedules

T = 100


def logit_normal_pmf(mean: float, std: float) -> np.ndarray:
    """P(t = k), k < T, for t = floor(T * sigmoid(N(mean, std^2))): the normal's mass between
    logit(k / T) and logit((k + 1) / T)."""
    edges = np.arange(T + 1) / T
    with np.errstate(divide="ignore"):
        logits = np.log(edges) - np.log1p(-edges)  # -inf at 0, +inf at 1
    cdf = np.array([0.5 * (1 + math.erf((u - mean) / (std * math.sqrt(2)))) for u in logits])
    return np.diff(cdf)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-0.5, 0.7)])
def test_logit_normal_timesteps_follow_their_distribution(mean, std):
    n = 400_000
    t = losses.sample_timesteps(jax.random.key(0), n, T, "logit_normal", mean, std)
    counts = np.bincount(np.asarray(t), minlength=T)
    assert counts.shape == (T,)  # every draw in [0, T)
    tv = 0.5 * np.abs(counts / n - logit_normal_pmf(mean, std)).sum()
    # Sampling noise alone gives ~0.005 here; a wrong std (1.2 for 1.0) gives ~0.05.
    assert tv < 0.012, tv
    uniform = np.bincount(np.asarray(losses.sample_timesteps(jax.random.key(1), n, T)), minlength=T)
    assert 0.5 * np.abs(uniform / n - 1 / T).sum() < 0.012


def test_a_wrong_std_would_fail_the_distribution_check():
    t = losses.sample_timesteps(jax.random.key(0), 400_000, T, "logit_normal", 0.0, 1.2)
    counts = np.bincount(np.asarray(t), minlength=T)
    assert 0.5 * np.abs(counts / 400_000 - logit_normal_pmf(0.0, 1.0)).sum() > 0.03


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_match_the_formula(prediction_type):
    """min(SNR, gamma) in x0 space, divided by what the prediction type's MSE already weighs:
    SNR for epsilon, SNR + 1 for v, nothing for x0; SNR = abar / (1 - abar)."""
    schedule = schedules.make_schedule("squaredcos_cap_v2", T)
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    snr = abar / (1 - abar)
    gamma = 5.0
    divisor = {"epsilon": snr, "v_prediction": snr + 1, "sample": np.ones_like(snr)}
    expected = np.minimum(snr, gamma) / divisor[prediction_type]
    t = jnp.arange(T)
    weights = losses.loss_weights(schedule, t, prediction_type, "min_snr", gamma)
    np.testing.assert_allclose(np.asarray(weights), expected, rtol=2e-5)
    np.testing.assert_array_equal(np.asarray(losses.loss_weights(schedule, t, prediction_type)), 1)


def test_the_loss_applies_the_weights_per_example():
    """Predicting x0 = 0 for clean actions of 1: each example's MSE is 1, so the loss is the
    mean min-SNR weight of the timesteps the key draws."""
    schedule = schedules.make_schedule("squaredcos_cap_v2", T)
    x0 = jnp.ones((256, 4, 2))
    key = jax.random.key(3)
    loss, metrics = losses.diffusion_loss(
        lambda x, t: jnp.zeros_like(x), x0, key, schedule, prediction_type="sample",
        weighting="min_snr",
    )  # fmt: skip
    t = losses.sample_timesteps(jax.random.split(key)[0], 256, T)
    expected = losses.loss_weights(schedule, t, "sample", "min_snr").mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(metrics["mse"]) == pytest.approx(1.0)
    assert abs(float(loss) - 1.0) > 0.1  # weighted: not the plain MSE of 1
