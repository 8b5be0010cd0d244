"""Exact denoisers for Gaussian-mixture data: ground truth for testing and comparing samplers.

For data x0 ~ sum_k w_k N(mu_k, s_k^2 I), the noisy marginal at timestep t is
sum_k w_k N(sqrt(abar_t) mu_k, (abar_t s_k^2 + 1 - abar_t) I), so the optimal epsilon-prediction
eps*(x_t, t) = -sqrt(1 - abar_t) * grad log p_t(x_t) is closed-form. A sampler fed this oracle
must reproduce the mixture; any error is the sampler's.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.schedules import NoiseSchedule

# The seed's cup example: approach from north (45%), east (40%) or south (15%).
CUP_MODE_NAMES: tuple[str, ...] = ("north", "east", "south")
CUP_MODE_WEIGHTS: tuple[float, ...] = (0.45, 0.40, 0.15)
CUP_MODE_MEANS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 0.0), (0.0, -1.0))


@flax.struct.dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture over vectors of dim D: weights (K,), means (K, D), stds (K,)."""

    weights: jnp.ndarray
    means: jnp.ndarray
    stds: jnp.ndarray


def make_mixture(weights: Sequence[float], means, stds) -> GaussianMixture:
    weights = np.asarray(weights, np.float64)
    means = np.asarray(means, np.float64)
    stds = np.broadcast_to(np.asarray(stds, np.float64), weights.shape)
    return GaussianMixture(
        weights=jnp.asarray(weights / weights.sum(), jnp.float32),
        means=jnp.asarray(means, jnp.float32),
        stds=jnp.asarray(stds, jnp.float32),
    )


def cup_mixture(radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    """The seed's three-approach example as a 2-D mixture (north/east/south of the cup)."""
    return make_mixture(CUP_MODE_WEIGHTS, np.asarray(CUP_MODE_MEANS) * radius, std)


def _responsibilities(mixture: GaussianMixture, diff: jnp.ndarray, var: jnp.ndarray):
    """(B, K) posterior of each component given x, from diff = x - center_k (B, K, D) and the
    components' isotropic variances var (B, K) at that noise level."""
    dim = diff.shape[-1]
    log_resp = (
        jnp.log(mixture.weights)[None] - 0.5 * jnp.sum(diff**2, -1) / var - 0.5 * dim * jnp.log(var)
    )
    return jax.nn.softmax(log_resp, axis=-1)


def oracle_epsilon(
    mixture: GaussianMixture, schedule: NoiseSchedule, x_t: jnp.ndarray, t: jnp.ndarray
) -> jnp.ndarray:
    """The exact epsilon-prediction for x_t (B, D) at training timesteps t (B,)."""
    abar = schedule.alphas_cumprod[t][:, None, None]  # (B, 1, 1)
    centers = jnp.sqrt(abar) * mixture.means[None]  # (B, K, D)
    var = abar[..., 0] * mixture.stds[None] ** 2 + 1.0 - abar[..., 0]  # (B, K)
    diff = x_t[:, None, :] - centers
    resp = _responsibilities(mixture, diff, var)
    score = -jnp.sum(resp[..., None] * diff / var[..., None], axis=1)  # (B, D)
    return -jnp.sqrt(1.0 - abar[:, 0]) * score


def oracle_denoiser(mixture: GaussianMixture, schedule: NoiseSchedule, prediction_type="epsilon"):
    """`denoise_fn(x_t, t)` for samplers, for x_t of shape (B, D) or (B, H, D) (flattened)."""
    from dpjax.schedules import training_target

    def denoise(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        flat = x_t.reshape(x_t.shape[0], -1).astype(jnp.float32)
        eps = oracle_epsilon(mixture, schedule, flat, t)
        if prediction_type == "epsilon":
            return eps.reshape(x_t.shape)
        abar = schedule.alphas_cumprod[t][:, None]
        x0 = (flat - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)
        return training_target(schedule, prediction_type, x0, t, eps).reshape(x_t.shape)

    return denoise


def oracle_velocity(mixture: GaussianMixture, x_s: jnp.ndarray, s: jnp.ndarray) -> jnp.ndarray:
    """The exact flow-matching velocity E[eps - x0 | x_s] for x_s (B, D) on the straight path
    x_s = (1 - s) x0 + s eps at times s (B,) in (0, 1]: (x_s - E[x0 | x_s]) / s, with
    x_s | component k ~ N((1 - s) mu_k, ((1 - s)^2 s_k^2 + s^2) I)."""
    a = (1.0 - s)[:, None, None]  # (B, 1, 1)
    sig = s[:, None]  # (B, 1)
    centers = a * mixture.means[None]  # (B, K, D)
    var = a[..., 0] ** 2 * mixture.stds[None] ** 2 + sig**2  # (B, K)
    diff = x_s[:, None, :] - centers
    resp = _responsibilities(mixture, diff, var)
    gain = (a[..., 0] * mixture.stds[None] ** 2 / var)[..., None]  # (B, K, 1)
    x0_k = mixture.means[None] + gain * diff  # E[x0 | x_s, k]
    x0 = jnp.sum(resp[..., None] * x0_k, axis=1)
    return (x_s - x0) / sig


def oracle_flow_denoiser(mixture: GaussianMixture, num_train_timesteps: int):
    """`denoise_fn(x_s, t)` with t = s * T (float) for the flow samplers; x_s (B, D) or (B, H, D)."""

    def denoise(x_s: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        flat = x_s.reshape(x_s.shape[0], -1).astype(jnp.float32)
        v = oracle_velocity(mixture, flat, t.astype(jnp.float32) / num_train_timesteps)
        return v.reshape(x_s.shape)

    return denoise


def assign_modes(mixture: GaussianMixture, x0: jnp.ndarray) -> jnp.ndarray:
    """Index (B,) of the component whose mean is nearest to each sample x0 (B, D)."""
    return jnp.argmin(jnp.sum((x0[:, None, :] - mixture.means[None]) ** 2, -1), axis=-1)


def mode_frequencies(mixture: GaussianMixture, x0: jnp.ndarray) -> np.ndarray:
    """Fraction (K,) of samples assigned to each component."""
    modes = np.asarray(assign_modes(mixture, x0))
    return np.bincount(modes, minlength=mixture.weights.shape[0]) / len(modes)
