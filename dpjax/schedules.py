"""Noise schedules as arrays, the forward process, and prediction-type conversions.

Conventions follow the diffusion literature and diffusers' schedulers: training timesteps
t = 0 .. T-1, `alphas_cumprod[t]` = abar_t, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
`sigmas[t]` = sqrt((1 - abar_t) / abar_t) is the noise level of the equivalent
variance-exploding process (x_t / sqrt(abar_t) = x_0 + sigma_t eps), which Euler/Heun and
DPM-Solver work in. `log_snr[t]` = log(abar_t / (1 - abar_t)) = -2 log sigma_t.

Everything here is a pure function; the schedule is a pytree of float32 arrays of shape (T,).
Betas are built in float64 and cast once, so values agree with diffusers' float32 betas to
float32 precision.
"""

from __future__ import annotations

import math
from typing import Literal

import flax.struct
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError, unknown_name

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
# What a flow-matching denoiser outputs: the velocity eps - x0, or the clean sample x0.
FLOW_PREDICTION_TYPES: tuple[str, ...] = ("velocity", "sample")

# abar_{T-1} after rescaling to zero terminal SNR: diffusers' Euler and DPM-Solver use this
# value so that sigma_{T-1} stays finite; we use it for every sampler (see README).
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


@flax.struct.dataclass
class NoiseSchedule:
    """A discrete-time variance-preserving noise schedule; every field has shape (T,)."""

    betas: jnp.ndarray
    alphas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    sigmas: jnp.ndarray
    log_snr: jnp.ndarray

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]


def _betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine (Glide / improved DDPM) betas from abar(s) = cos^2((s + 0.008) / 1.008 * pi/2)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = np.arange(num_train_timesteps)
    return np.array(
        [
            min(
                1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps),
                max_beta,
            )
            for i in steps
        ]
    )


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shifts and scales sqrt(abar) so that abar_{T-1} = 0 and abar_0 is unchanged."""
    sqrt_alphas_cumprod = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alphas_cumprod[0], sqrt_alphas_cumprod[-1]
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * first / (first - last)
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


def _make_betas(name: str, num_train_timesteps: int, beta_start: float, beta_end: float):
    if name == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    if name == "squaredcos_cap_v2":
        return _betas_for_alpha_bar(num_train_timesteps)
    if name == "sigmoid":
        x = np.linspace(-6.0, 6.0, num_train_timesteps)
        return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start
    raise unknown_name("noise schedule", name, SCHEDULE_NAMES)


SCHEDULE_NAMES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def make_schedule(
    name: str = "squaredcos_cap_v2",
    num_train_timesteps: int = 100,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    rescale_betas_zero_snr: bool = False,
) -> NoiseSchedule:
    """Builds a schedule by diffusers' `beta_schedule` name.

    The default (cosine, T=100) is Diffusion Policy's. With `rescale_betas_zero_snr`, the
    terminal abar is set to 2**-24 rather than exactly 0 so sigmas stay finite.
    """
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ConfigError(f"num_train_timesteps must be a positive int, got {num_train_timesteps}")
    if name not in SCHEDULE_NAMES:
        raise unknown_name("noise schedule", name, SCHEDULE_NAMES)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = _make_betas(name, num_train_timesteps, beta_start, beta_end)
    # diffusers builds float32 betas; rounding once here keeps abar within float32 eps of it.
    betas = betas.astype(np.float32).astype(np.float64)
    if rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = ZERO_SNR_ALPHA_CUMPROD
    return schedule_from_alphas_cumprod(alphas_cumprod, betas=betas)


def schedule_from_alphas_cumprod(alphas_cumprod, betas=None) -> NoiseSchedule:
    """A schedule from any strictly decreasing abar in (0, 1], shape (T,)."""
    alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
    if alphas_cumprod.ndim != 1 or not np.all((alphas_cumprod > 0) & (alphas_cumprod <= 1)):
        raise ConfigError("alphas_cumprod must be a 1-D array with values in (0, 1]")
    if betas is None:
        alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
        betas = 1.0 - alphas
    alphas = 1.0 - np.asarray(betas, np.float64)
    sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    log_snr = np.log(alphas_cumprod) - np.log1p(-np.minimum(alphas_cumprod, 1 - 1e-12))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return NoiseSchedule(
        betas=f32(betas),
        alphas=f32(alphas),
        alphas_cumprod=f32(alphas_cumprod),
        sigmas=f32(sigmas),
        log_snr=f32(log_snr),
    )


def _per_example(values: jnp.ndarray, t: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
    """values[t] (B,) reshaped to broadcast against `like` (B, ...)."""
    v = values[jnp.asarray(t)]
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)).astype(like.dtype)


def q_sample(schedule: NoiseSchedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray):
    """The forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    x0, noise: (B, ...); t: (B,) int training timesteps. Returns (B, ...).
    """
    abar = _per_example(schedule.alphas_cumprod, t, x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def velocity(schedule: NoiseSchedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray):
    """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
    abar = _per_example(schedule.alphas_cumprod, t, x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def training_target(schedule: NoiseSchedule, prediction_type: str, x0, t, noise) -> jnp.ndarray:
    """What a denoiser of `prediction_type` should output for x_t = q_sample(x0, t, noise)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return velocity(schedule, x0, t, noise)
    raise unknown_name("prediction type", prediction_type, PREDICTION_TYPES)


def x0_and_eps_from_output(
    model_output: jnp.ndarray,
    x_t: jnp.ndarray,
    sqrt_alpha_cumprod: jnp.ndarray,
    sqrt_one_minus_alpha_cumprod: jnp.ndarray,
    prediction_type: str,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Converts a denoiser output of any prediction type to (x0, eps).

    The coefficients are sqrt(abar_t) and sqrt(1 - abar_t), scalars or broadcastable to x_t.
    """
    a, s = sqrt_alpha_cumprod, sqrt_one_minus_alpha_cumprod
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    elif prediction_type == "v_prediction":
        x0 = a * x_t - s * model_output
        eps = a * model_output + s * x_t
    else:
        raise unknown_name("prediction type", prediction_type, PREDICTION_TYPES)
    return x0, eps


def convert_output(
    schedule: NoiseSchedule, model_output, x_t, t, prediction_type: str
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(x0, eps) from a denoiser output at training timesteps t (B,)."""
    abar = _per_example(schedule.alphas_cumprod, t, x_t)
    return x0_and_eps_from_output(
        model_output, x_t, jnp.sqrt(abar), jnp.sqrt(1.0 - abar), prediction_type
    )


def snr(schedule: NoiseSchedule, t: jnp.ndarray) -> jnp.ndarray:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at timesteps t."""
    return jnp.exp(schedule.log_snr[jnp.asarray(t)])
