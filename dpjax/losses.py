"""Training objectives: timestep sampling, targets, loss weighting (pure functions).

The seed's loss is the noise-prediction MSE: t ~ U{0..T-1}, x_t = q_sample(x0, t, eps),
loss = |eps_theta(x_t, t) - eps|^2. Also: sample (x0) and v targets, timesteps concentrated
on the middle of the schedule (logit-normal, the seed's "Problem 1" fix), and min-SNR-gamma
weighting (Hang et al. 2023), which caps the weight of low-noise timesteps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dpjax.errors import unknown_name
from dpjax.schedules import NoiseSchedule, q_sample, training_target

TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal")
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "min_snr")


def sample_timesteps(
    key: jax.Array,
    batch_size: int,
    num_train_timesteps: int,
    sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jnp.ndarray:
    """(B,) int32 training timesteps. logit_normal: t = floor(T * sigmoid(N(mean, std)))."""
    if sampling == "uniform":
        return jax.random.randint(key, (batch_size,), 0, num_train_timesteps)
    if sampling == "logit_normal":
        u = logit_mean + logit_std * jax.random.normal(key, (batch_size,))
        t = jnp.floor(jax.nn.sigmoid(u) * num_train_timesteps).astype(jnp.int32)
        return jnp.clip(t, 0, num_train_timesteps - 1)
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


def regression_loss(prediction: jnp.ndarray, target: jnp.ndarray):
    """The behavioral-cloning objective: MSE between predicted and demonstrated actions."""
    loss = jnp.mean((prediction.astype(jnp.float32) - target) ** 2)
    return loss, {"loss": loss, "mse": loss}
