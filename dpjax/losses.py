"""Training objectives: timestep sampling, targets, loss weighting (pure functions).

The seed's loss is the noise-prediction MSE: t ~ U{0..T-1}, x_t = q_sample(x0, t, eps),
loss = |eps_theta(x_t, t) - eps|^2. Also: sample (x0) and v targets, timesteps concentrated
on the middle of the schedule (logit-normal, the seed's "Problem 1" fix), and min-SNR-gamma
weighting (Hang et al. 2023), which caps the weight of low-noise timesteps.

Flow matching (Lipman et al. 2023; pi0's action expert): the straight path
x_s = (1 - s) x0 + s eps, s in [0, 1] (1 = noise, as t = T - 1 is for diffusion), and the
velocity target eps - x0; the denoiser sees the time as s * T, a float on the diffusion
timesteps' scale. Times: uniform, logit-normal, or pi0's shifted Beta(1.5, 1) on
[0.001, 1], which puts more weight on the noisy end.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dpjax.errors import unknown_name
from dpjax.schedules import FLOW_PREDICTION_TYPES, NoiseSchedule, q_sample, training_target

TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal", "beta")
# pi0's flow time: s = FLOW_BETA_MIN + (1 - FLOW_BETA_MIN) * Beta(1.5, 1) (density ~ s^0.5).
FLOW_BETA_A, FLOW_BETA_B, FLOW_BETA_MIN = 1.5, 1.0, 0.001
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "min_snr")


def sample_timesteps(
    key: jax.Array,
    batch_size: int,
    num_train_timesteps: int,
    sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jnp.ndarray:
    """(B,) int32 training timesteps: uniform on {0..T-1}, or t = floor(T * s) for the
    continuous times s of `sample_unit_times` (logit_normal: s = sigmoid(N(mean, std)))."""
    if sampling == "uniform":
        return jax.random.randint(key, (batch_size,), 0, num_train_timesteps)
    s = sample_unit_times(key, batch_size, sampling, logit_mean, logit_std)
    t = jnp.floor(s * num_train_timesteps).astype(jnp.int32)
    return jnp.clip(t, 0, num_train_timesteps - 1)


def sample_unit_times(
    key: jax.Array,
    batch_size: int,
    sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jnp.ndarray:
    """(B,) float32 times in [0, 1]: uniform, logit-normal, or pi0's shifted Beta."""
    if sampling == "uniform":
        return jax.random.uniform(key, (batch_size,))
    if sampling == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (batch_size,)))
    if sampling == "beta":
        beta = jax.random.beta(key, FLOW_BETA_A, FLOW_BETA_B, (batch_size,))
        return FLOW_BETA_MIN + (1.0 - FLOW_BETA_MIN) * beta
    raise unknown_name("timestep sampling", sampling, TIMESTEP_SAMPLINGS)


def loss_weights(
    schedule: NoiseSchedule,
    t: jnp.ndarray,
    prediction_type: str,
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> jnp.ndarray:
    """(B,) per-example weights. min_snr: the x0-space weight min(SNR, gamma), expressed
    for the prediction type the network outputs (/SNR for epsilon, /(SNR+1) for v)."""
    if weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    if weighting != "min_snr":
        raise unknown_name("loss weighting", weighting, LOSS_WEIGHTINGS)
    snr = jnp.exp(schedule.log_snr[t])
    clipped = jnp.minimum(snr, min_snr_gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped


def diffusion_loss(
    denoise_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    x0: jnp.ndarray,
    key: jax.Array,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "epsilon",
    timestep_sampling: str = "uniform",
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Weighted MSE between denoise_fn(x_t, t) and the target for clean actions x0 (B, H, A).

    Returns (scalar loss, metrics). The noise and the timesteps both come from `key`.
    """
    key_t, key_noise = jax.random.split(key)
    batch = x0.shape[0]
    t = sample_timesteps(key_t, batch, schedule.num_train_timesteps, timestep_sampling)
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    x_t = q_sample(schedule, x0, t, noise)
    target = training_target(schedule, prediction_type, x0, t, noise)
    prediction = denoise_fn(x_t, t).astype(jnp.float32)
    per_example = jnp.mean((prediction - target) ** 2, axis=tuple(range(1, x0.ndim)))
    weights = loss_weights(schedule, t, prediction_type, weighting, min_snr_gamma)
    loss = jnp.mean(weights * per_example)
    return loss, {"loss": loss, "mse": jnp.mean(per_example)}


def flow_matching_loss(
    denoise_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    x0: jnp.ndarray,
    key: jax.Array,
    num_train_timesteps: int,
    *,
    prediction_type: str = "velocity",
    timestep_sampling: str = "uniform",
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """MSE between denoise_fn(x_s, s * T) and the velocity eps - x0 (prediction_type
    "velocity") or x0 itself ("sample"), for x0 (B, H, A).

    Returns (scalar loss, metrics); the noise and the times both come from `key`.
    """
    if prediction_type not in FLOW_PREDICTION_TYPES:
        raise unknown_name("flow prediction type", prediction_type, FLOW_PREDICTION_TYPES)
    key_s, key_noise = jax.random.split(key)
    s = sample_unit_times(key_s, x0.shape[0], timestep_sampling)
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    s_b = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    x_s = (1.0 - s_b) * x0 + s_b * noise
    prediction = denoise_fn(x_s, s * num_train_timesteps).astype(jnp.float32)
    target = x0 if prediction_type == "sample" else noise - x0
    loss = jnp.mean((prediction - target) ** 2)
    return loss, {"loss": loss, "mse": loss}


def regression_loss(prediction: jnp.ndarray, target: jnp.ndarray):
    """The behavioral-cloning objective: MSE between predicted and demonstrated actions."""
    loss = jnp.mean((prediction.astype(jnp.float32) - target) ** 2)
    return loss, {"loss": loss, "mse": loss}


# The share of the regression loss the losing hypotheses get (relaxed winner-takes-all), so
# that none is left where no target ever reaches it.
HYPOTHESIS_RELAXATION = 0.05


def hypothesis_errors(chunks, target) -> jnp.ndarray:
    """(B, K) mean squared error of each of K candidate chunks (B, K, H, A) against the target
    chunks (B, H, A); its argmin over K is the winner of `multi_hypothesis_loss`."""
    return jnp.mean((chunks.astype(jnp.float32) - target[:, None]) ** 2, axis=(2, 3))


def multi_hypothesis_loss(chunks, logits, target, relaxation: float = HYPOTHESIS_RELAXATION):
    """K candidate chunks (B, K, H, A) and their logits (B, K) against target chunks (B, H, A):
    relaxed winner-takes-all (Rupprecht et al. 2017's multiple-hypothesis prediction) - the
    candidate nearest each target regresses it with weight 1 - relaxation, the others share
    the rest - plus the cross-entropy of the logits on the winner, so that sampling the
    categorical draws each candidate as often as the targets fall nearest it. With K = 1 this
    is `regression_loss` (no relaxation, no classification)."""
    chunks = chunks.astype(jnp.float32)
    num = chunks.shape[1]
    if num == 1:
        return regression_loss(chunks[:, 0], target)
    errors = hypothesis_errors(chunks, target)
    winner = jnp.argmin(errors, axis=1)
    one_hot = jax.nn.one_hot(winner, num)
    weights = one_hot * (1 - relaxation) + (1 - one_hot) * relaxation / (num - 1)
    mse = jnp.mean(jnp.sum(weights * errors, axis=1))
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    cross_entropy = -jnp.mean(jnp.sum(one_hot * log_probs, axis=-1))
    loss = mse + cross_entropy
    winner_mse = jnp.mean(jnp.min(errors, axis=1))
    return loss, {"loss": loss, "mse": winner_mse, "cross_entropy": cross_entropy}
