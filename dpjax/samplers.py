"""Samplers: the reverse process as one `jax.lax.scan` over precomputed per-step coefficients.

A denoiser is seen only as `denoise_fn(x_t (B, ...), t (B,)) -> model_output (B, ...)`,
where x_t is the noisy sample of the process the denoiser was trained on: for the diffusion
samplers ("vp" process) the variance-preserving x_t at an int32 training timestep; for the
flow-matching samplers ("flow" process: flow_euler, flow_midpoint) the point
x_s = (1 - s) x_0 + s eps of the straight path at float32 time t = s * T, s in (0, 1], where
the model output is the velocity eps - x_0 (`losses.flow_matching_loss`).

Every sampler is a `Sampler`: a function giving the training timesteps at which the
denoiser is evaluated (one evaluation per scan iteration), a function giving a table of
per-iteration coefficients (arrays of shape (S,), S = number of evaluations), and a pure
`update` that advances the scan carry from one denoiser output. `sample` builds the table,
then runs one scan; nothing runs in Python per step, and the step count only changes array
lengths, so compile time does not grow with it. Adding a sampler = writing those three
functions and calling `register_sampler` (see README).

Randomness: the noise of evaluation i is `jax.random.normal(jax.random.split(key, S)[i], x.shape)`;
it is drawn only by stochastic samplers (ddpm, ddim with eta > 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError, unknown_name
from dpjax.schedules import (
    FLOW_PREDICTION_TYPES,
    PREDICTION_TYPES,
    NoiseSchedule,
    x0_and_eps_from_output,
)

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
Carry = dict[str, jnp.ndarray]
Row = Mapping[str, jnp.ndarray]

TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", "fixed_large")


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """Static (compile-time) sampler options; hashable, so compiled samplers can be cached."""

    sampler: str = "ddim"
    num_inference_steps: int = 10
    prediction_type: str = "epsilon"
    clip_sample: float | None = None
    timestep_spacing: str = "trailing"
    eta: float = 0.0
    variance_type: str = "fixed_small"
    # With clip_sample, DDIM re-derives epsilon from the clipped x0, so each step stays on the
    # line through x_t and x0 and |x| cannot grow. False is diffusers' DDIMScheduler (clipped
    # x0 with the model's unclipped epsilon), which an imperfect epsilon-model can drive to
    # overflow over many steps (a learned policy: NaN actions at 100 trailing steps).
    eps_from_clipped_x0: bool = True


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The extension point: one sampler = these functions.

    timesteps(T, N, spacing) -> np.ndarray (S,) int: training timesteps evaluated, in order.
    coefficients(schedule, timesteps, options) -> dict of (S,) arrays: one row per evaluation,
        computed in numpy float64 (the schedule's fields arrive as float64 numpy arrays) and
        cast once to the sample dtype, so tables are exact and cost no XLA work.
    init(x_T, first_row) -> carry (a dict holding at least "x").
    model_input(carry, row) -> the variance-preserving x_t handed to the denoiser.
    update(carry, model_output, row, noise, options) -> carry; `noise` is None unless
        `is_stochastic(options)`.
    """

    timesteps: Callable[[int, int, str], np.ndarray]
    coefficients: Callable[[NoiseSchedule, np.ndarray, SamplerOptions], dict[str, np.ndarray]]
    update: Callable[[Carry, jnp.ndarray, Row, jnp.ndarray | None, SamplerOptions], Carry]
    init: Callable[[jnp.ndarray, Row], Carry] = lambda x_T, row: {"x": x_T}
    model_input: Callable[[Carry, Row], jnp.ndarray] = lambda carry, row: carry["x"]
    is_stochastic: Callable[[SamplerOptions], bool] = lambda options: False
    # The N-step grid `timesteps` is built on, when it repeats timesteps (Heun's stages).
    step_grid: Callable[[int, int, str], np.ndarray] | None = None
    # The noising process the denoiser must have been trained on: "vp" (diffusion, int
    # timesteps in [0, T-1]) or "flow" (flow matching, float times in (0, T]).
    process: str = "vp"


_SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str, sampler: Sampler) -> None:
    """Makes `sampler` available as `sample(..., sampler=name)`."""
    _SAMPLERS[name] = sampler


def sampler_names() -> tuple[str, ...]:
    return tuple(sorted(_SAMPLERS))


def get_sampler(name: str) -> Sampler:
    if name not in _SAMPLERS:
        raise unknown_name("sampler", name, _SAMPLERS)
    return _SAMPLERS[name]


# --------------------------------------------------------------------------- timesteps


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str):
    """N training timesteps, descending, as diffusers' DDPM/DDIM/Euler `set_timesteps` space them.

    linspace: round(linspace(0, T-1, N)); leading: arange(N) * (T // N); trailing:
    round(arange(T, 0, -T/N)) - 1, keeping the first N values: numpy's float `arange` yields
    N + 1 values for some N (e.g. T=100, N=29), where diffusers then visits N + 1 timesteps,
    the last being -1; dpjax always visits N.
    """
    T, N = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(N) * (T // N))[::-1]
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / N)[:N]) - 1
    else:
        raise unknown_name("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    return ts.astype(np.int64)


def multistep_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str):
    """DPM-Solver's spacing: linspace/leading over N + 1 points with the last one dropped."""
    T, N = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(N + 1) * (T // (N + 1)))[::-1][:-1]
    else:
        ts = spaced_timesteps(T, N, spacing)
    return ts.astype(np.int64)


def _check_timesteps(ts: np.ndarray, options: SamplerOptions, T: int) -> None:
    if ts.size == 0 or ts.min() < 0 or ts.max() > T - 1 or np.any(np.diff(ts) >= 0):
        raise ConfigError(
            f"timestep_spacing={options.timestep_spacing!r} with {options.num_inference_steps} "
            f"steps over {T} training timesteps visits {ts.tolist()[:8]}..., which is not "
            "strictly decreasing within [0, T-1]; use timestep_spacing='trailing' or fewer steps"
        )


def timesteps(
    schedule: NoiseSchedule | int,
    sampler: str,
    num_inference_steps: int,
    timestep_spacing: str = "trailing",
) -> np.ndarray:
    """The training timesteps at which `sampler` evaluates the denoiser, in order (int64; the
    flow samplers' float times s * T)."""
    T = schedule if isinstance(schedule, int) else schedule.num_train_timesteps
    flow = get_sampler(sampler).process == "flow"
    options = SamplerOptions(
        sampler=sampler,
        num_inference_steps=num_inference_steps,
        timestep_spacing=timestep_spacing,
        prediction_type="velocity" if flow else "epsilon",
    )
    validate_options(options, T)
    return get_sampler(sampler).timesteps(T, num_inference_steps, timestep_spacing)


def num_denoiser_evaluations(sampler: str, num_inference_steps: int, T: int = 1000) -> int:
    return len(get_sampler(sampler).timesteps(T, num_inference_steps, "trailing"))


MAX_FLOW_STEPS = 10_000


def sampler_names_for(process: str) -> tuple[str, ...]:
    """The registered samplers that integrate `process` ("vp" or "flow")."""
    return tuple(n for n in sampler_names() if _SAMPLERS[n].process == process)


def validate_options(options: SamplerOptions, num_train_timesteps: int) -> None:
    """Raises ConfigError/UnknownNameError for options that cannot work; checks the timesteps."""
    spec = get_sampler(options.sampler)
    n = options.num_inference_steps
    flow = spec.process == "flow"  # continuous time: any step count, no timestep grid
    most = MAX_FLOW_STEPS if flow else num_train_timesteps
    if not isinstance(n, int | np.integer) or not 1 <= n <= most:
        raise ConfigError(
            f"num_inference_steps must be an int in [1, {most}]"
            + ("" if flow else " (the training timesteps)")
            + f", got {n!r}"
        )
    if options.clip_sample is not None and not options.clip_sample > 0:
        raise ConfigError(f"clip_sample must be None or > 0, got {options.clip_sample}")
    if flow:
        if options.prediction_type not in FLOW_PREDICTION_TYPES:
            raise unknown_name(
                f"prediction type of a flow sampler ({options.sampler})",
                options.prediction_type, FLOW_PREDICTION_TYPES,
            )  # fmt: skip
        return
    if options.prediction_type not in PREDICTION_TYPES:
        raise unknown_name("prediction type", options.prediction_type, PREDICTION_TYPES)
    if options.timestep_spacing not in TIMESTEP_SPACINGS:
        raise unknown_name("timestep_spacing", options.timestep_spacing, TIMESTEP_SPACINGS)
    if options.variance_type not in VARIANCE_TYPES:
        raise unknown_name("variance_type", options.variance_type, VARIANCE_TYPES)
    if not 0.0 <= options.eta <= 1.0:
        raise ConfigError(f"eta must be in [0, 1], got {options.eta}")
    grid = spec.step_grid or spec.timesteps
    _check_timesteps(
        grid(num_train_timesteps, n, options.timestep_spacing), options, num_train_timesteps
    )


# --------------------------------------------------------------------------- shared helpers


def _gather(values: np.ndarray, index: np.ndarray, fill: float) -> np.ndarray:
    """values[index] with `fill` where index < 0 (the step that lands on x_0)."""
    picked = values[np.maximum(index, 0)]
    return np.where(np.asarray(index >= 0), picked, np.asarray(fill, values.dtype))


def _next_timesteps(ts: np.ndarray) -> np.ndarray:
    return np.concatenate([ts[1:], [-1]])


def predict_x0_eps(model_output, x_t, row: Row, options: SamplerOptions):
    """(clipped x0, eps) from the output at a VP sample with sqrt(abar) = row['sqrt_abar']."""
    x0, eps = x0_and_eps_from_output(
        model_output, x_t, row["sqrt_abar"], row["sqrt_one_minus_abar"], options.prediction_type
    )
    if options.clip_sample is not None:
        x0 = jnp.clip(x0, -options.clip_sample, options.clip_sample)
    return x0, eps


def _vp_coefficients(alphas_cumprod: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sqrt_abar": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_abar": np.sqrt(1 - alphas_cumprod),
    }


# --------------------------------------------------------------------------- DDPM


def _ddpm_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    """Strided DDPM posterior q(x_prev | x_t, x0) between consecutive visited timesteps."""
    prev = _next_timesteps(ts)
    abar_t = schedule.alphas_cumprod[ts]
    abar_prev = _gather(schedule.alphas_cumprod, prev, 1.0)
    alpha_t = abar_t / abar_prev
    beta_t = 1.0 - alpha_t
    if options.variance_type == "fixed_small":
        variance = np.maximum((1.0 - abar_prev) / (1.0 - abar_t) * beta_t, 1e-20)
    else:
        variance = beta_t
    # No noise on the step that lands on x_0 (diffusers adds fixed_large noise there when t > 0).
    noise_std = np.where(np.asarray(prev >= 0), np.sqrt(variance), 0.0)
    return {
        **_vp_coefficients(abar_t),
        "coef_x0": np.sqrt(abar_prev) * beta_t / (1.0 - abar_t),
        "coef_xt": np.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t),
        "noise_std": noise_std,
    }


def _ddpm_update(carry, model_output, row, noise, options):
    x = carry["x"]
    x0, _ = predict_x0_eps(model_output, x, row, options)
    mean = row["coef_x0"] * x0 + row["coef_xt"] * x
    return {"x": mean + row["noise_std"] * noise}


# --------------------------------------------------------------------------- DDIM


def _ddim_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    """DDIM between consecutive visited timesteps; abar of the final target is 1."""
    abar_t = schedule.alphas_cumprod[ts]
    abar_prev = _gather(schedule.alphas_cumprod, _next_timesteps(ts), 1.0)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    std = options.eta * np.sqrt(variance)
    return {
        **_vp_coefficients(abar_t),
        "coef_x0": np.sqrt(abar_prev),
        "coef_eps": np.sqrt(np.maximum(1.0 - abar_prev - std**2, 0.0)),
        "noise_std": std,
    }


def _ddim_update(carry, model_output, row, noise, options):
    x0, eps = predict_x0_eps(model_output, carry["x"], row, options)
    if options.clip_sample is not None and options.eps_from_clipped_x0:
        # sqrt(1 - abar) > 0 at every visited timestep (abar_0 < 1 for every schedule).
        eps = (carry["x"] - row["sqrt_abar"] * x0) / row["sqrt_one_minus_abar"]
    x = row["coef_x0"] * x0 + row["coef_eps"] * eps
    if noise is not None:
        x = x + row["noise_std"] * noise
    return {"x": x}


# --------------------------------------------------------------------------- DPM-Solver++ (2M)


def _alpha_sigma_lambda(sigma_ve: np.ndarray):
    """VP (alpha, sigma) and half-log-SNR lambda for VE noise levels (sigma_ve = 0 allowed)."""
    alpha = 1.0 / np.sqrt(sigma_ve**2 + 1.0)
    sigma = sigma_ve * alpha
    return alpha, sigma, np.log(alpha) - np.log(sigma)


def _dpmsolver_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    """DPM-Solver++ 2M (midpoint form) in x0 space: first order at the first and last step."""
    num_steps = len(ts)
    sigma_ve = np.concatenate([schedule.sigmas[ts], np.zeros(1)])
    alpha, sigma, lam = _alpha_sigma_lambda(sigma_ve)
    h = lam[1:] - lam[:-1]
    # lambda of the previous step, for r0 = h_prev / h; unused (masked) at step 0.
    h_prev = np.concatenate([h[:1], lam[1:-1] - lam[:-2]])
    second_order = (np.arange(num_steps) > 0) & (np.arange(num_steps) < num_steps - 1)
    coef_x0 = -alpha[1:] * np.expm1(-h)
    coef_diff = np.where(np.asarray(second_order), 0.5 * coef_x0 * h / h_prev, 0.0)
    return {
        **_vp_coefficients(schedule.alphas_cumprod[ts]),
        "coef_x": sigma[1:] / sigma[:-1],
        "coef_x0": coef_x0,
        "coef_diff": coef_diff,
    }


def _dpmsolver_init(x_T, row):
    return {"x": x_T, "prev_x0": jnp.zeros_like(x_T)}


def _dpmsolver_update(carry, model_output, row, noise, options):
    x0, _ = predict_x0_eps(model_output, carry["x"], row, options)
    x = (
        row["coef_x"] * carry["x"]
        + row["coef_x0"] * x0
        + row["coef_diff"] * (x0 - carry["prev_x0"])
    )
    return {"x": x, "prev_x0": x0}


# --------------------------------------------------------------------------- Euler / Heun (VE ODE)


def _euler_like_coefficients(sigma_eval, dt) -> dict[str, np.ndarray]:
    """Rows for a VE-space integrator; the denoiser sees x / sqrt(sigma^2 + 1) (VP x_t)."""
    scale_in = 1.0 / np.sqrt(sigma_eval**2 + 1.0)
    return {
        "sigma": sigma_eval,
        "dt": dt,
        "scale_in": scale_in,
        "sqrt_abar": scale_in,
        "sqrt_one_minus_abar": sigma_eval * scale_in,
    }


def _euler_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    sigmas = np.concatenate([schedule.sigmas[ts], np.zeros(1)])
    return _euler_like_coefficients(sigmas[:-1], sigmas[1:] - sigmas[:-1])


def _ve_init(x_T, row):
    # N(0, I) in VP space is N(0, sigma^2 + 1) in VE space at the first noise level.
    return {"x": x_T / row["scale_in"].astype(x_T.dtype)}


def _ve_model_input(carry, row):
    return carry["x"] * row["scale_in"]


def _derivative(carry, model_output, row, options):
    x0, _ = predict_x0_eps(model_output, carry["x"] * row["scale_in"], row, options)
    return (carry["x"] - x0) / row["sigma"]


def _euler_update(carry, model_output, row, noise, options):
    return {"x": carry["x"] + _derivative(carry, model_output, row, options) * row["dt"]}


def _heun_timesteps(T: int, N: int, spacing: str) -> np.ndarray:
    """[t0, t1, t1, ..., t_{N-1}, t_{N-1}]: a predictor and a corrector per step, Euler last."""
    ts = spaced_timesteps(T, N, spacing)
    return np.concatenate([ts[:1], np.repeat(ts[1:], 2)])


def _heun_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    # Even stages: predictor from sigma_k (Euler when it lands on 0); odd stages: corrector.
    num_steps = len(ts[::2])
    sigmas = np.concatenate([schedule.sigmas[ts[::2]], np.zeros(1)])
    stage = np.arange(len(ts))
    step = stage // 2  # both stages of step k integrate from sigmas[k] to sigmas[k + 1]
    is_corrector = stage % 2 == 1
    sigma_from, sigma_to = sigmas[step], sigmas[np.minimum(step + 1, num_steps)]
    sigma_eval = np.where(np.asarray(is_corrector), sigma_to, sigma_from)
    rows = _euler_like_coefficients(sigma_eval, sigma_to - sigma_from)
    rows["is_corrector"] = np.asarray(is_corrector, np.float32)
    return rows


def _heun_init(x_T, row):
    carry = _ve_init(x_T, row)
    return {**carry, "prev_x": carry["x"], "prev_d": jnp.zeros_like(x_T)}


def _heun_update(carry, model_output, row, noise, options):
    d = _derivative(carry, model_output, row, options)
    corrector = row["is_corrector"] > 0.5
    base = jnp.where(corrector, carry["prev_x"], carry["x"])
    slope = jnp.where(corrector, 0.5 * (carry["prev_d"] + d), d)
    return {
        "x": base + slope * row["dt"],
        "prev_x": jnp.where(corrector, carry["prev_x"], carry["x"]),
        "prev_d": jnp.where(corrector, carry["prev_d"], d),
    }


# --------------------------------------------------------------------------- flow matching ODE
# The straight path x_s = (1 - s) x_0 + s eps, s from 1 (noise) to 0 (data), integrated with
# the learned velocity v = eps - x_0: dx/ds = v. The denoiser's time input is s * T (float).


def _flow_grid(N: int) -> np.ndarray:
    """s_k = 1 - k / N for k = 0..N: N uniform steps from noise (1) to data (0)."""
    return 1.0 - np.arange(N + 1) / N


def _flow_euler_timesteps(T: int, N: int, spacing: str) -> np.ndarray:
    return _flow_grid(N)[:-1] * T


def _flow_euler_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    s = ts / schedule.num_train_timesteps
    return {"s": s, "ds": np.concatenate([s[1:], [0.0]]) - s}


def _flow_midpoint_timesteps(T: int, N: int, spacing: str) -> np.ndarray:
    """[s_0, (s_0 + s_1) / 2, s_1, ...] * T: a slope and a midpoint slope per step."""
    grid = _flow_grid(N)
    stages = np.stack([grid[:-1], 0.5 * (grid[:-1] + grid[1:])], axis=1)
    return stages.reshape(-1) * T


def _flow_midpoint_coefficients(schedule: NoiseSchedule, ts: np.ndarray, options: SamplerOptions):
    s = ts / schedule.num_train_timesteps
    step_from = s[0::2]
    step_to = np.concatenate([step_from[1:], [0.0]])
    ds = np.repeat(step_to - step_from, 2)
    is_midpoint = np.tile([0.0, 1.0], len(step_from))
    return {"s": s, "ds": ds, "is_midpoint": is_midpoint}


def flow_x0(model_output, x_s, s, prediction_type: str) -> jnp.ndarray:
    """The x_0 estimate of a flow denoiser's output at x_s, time s (broadcastable): the
    output itself ("sample"), or where one Euler step to s = 0 lands, x_s - s v ("velocity")."""
    return model_output if prediction_type == "sample" else x_s - s * model_output


def flow_velocity(model_output, x_s, row: Row, options: SamplerOptions) -> jnp.ndarray:
    """The velocity to integrate: the output, or (x_s - x_0) / s for an x_0 prediction
    (prediction_type="sample"). With clip_sample, re-derived from the clipped estimate of
    x_0 = x_s - s v as (x_s - clip(x_0)) / s (DDIM's eps_from_clipped_x0, on this path)."""
    if options.prediction_type != "sample" and options.clip_sample is None:
        return model_output
    x0 = flow_x0(model_output, x_s, row["s"], options.prediction_type)
    if options.clip_sample is not None:
        x0 = jnp.clip(x0, -options.clip_sample, options.clip_sample)
    return (x_s - x0) / row["s"]


def _flow_euler_update(carry, model_output, row, noise, options):
    return {"x": carry["x"] + row["ds"] * flow_velocity(model_output, carry["x"], row, options)}


def _flow_midpoint_init(x_T, row):
    return {"x": x_T, "step_start": x_T}


def _flow_midpoint_update(carry, model_output, row, noise, options):
    v = flow_velocity(model_output, carry["x"], row, options)
    midpoint = row["is_midpoint"] > 0.5
    start = jnp.where(midpoint, carry["step_start"], carry["x"])
    # First stage: half a step to the midpoint; second: the whole step with its slope.
    x = start + jnp.where(midpoint, 1.0, 0.5) * row["ds"] * v
    return {"x": x, "step_start": start}


register_sampler(
    "ddpm",
    Sampler(
        timesteps=spaced_timesteps,
        coefficients=_ddpm_coefficients,
        update=_ddpm_update,
        is_stochastic=lambda options: True,
    ),
)
register_sampler(
    "ddim",
    Sampler(
        timesteps=spaced_timesteps,
        coefficients=_ddim_coefficients,
        update=_ddim_update,
        is_stochastic=lambda options: options.eta > 0,
    ),
)
register_sampler(
    "dpmsolver++",
    Sampler(
        timesteps=multistep_timesteps,
        coefficients=_dpmsolver_coefficients,
        update=_dpmsolver_update,
        init=_dpmsolver_init,
    ),
)
register_sampler(
    "euler",
    Sampler(
        timesteps=spaced_timesteps,
        coefficients=_euler_coefficients,
        update=_euler_update,
        init=_ve_init,
        model_input=_ve_model_input,
    ),
)
register_sampler(
    "heun",
    Sampler(
        timesteps=_heun_timesteps,
        coefficients=_heun_coefficients,
        update=_heun_update,
        init=_heun_init,
        model_input=_ve_model_input,
        step_grid=spaced_timesteps,
    ),
)
register_sampler(
    "flow_euler",
    Sampler(
        timesteps=_flow_euler_timesteps,
        coefficients=_flow_euler_coefficients,
        update=_flow_euler_update,
        process="flow",
    ),
)
register_sampler(
    "flow_midpoint",
    Sampler(
        timesteps=_flow_midpoint_timesteps,
        coefficients=_flow_midpoint_coefficients,
        update=_flow_midpoint_update,
        init=_flow_midpoint_init,
        process="flow",
    ),
)


# --------------------------------------------------------------------------- the entry point


def _concrete_schedule(schedule: NoiseSchedule) -> NoiseSchedule:
    """The schedule as float64 numpy arrays; schedules are static data, not traced values."""
    try:
        return jax.tree.map(lambda a: np.asarray(a, np.float64), schedule)
    except jax.errors.TracerArrayConversionError as e:
        raise ConfigError(
            "the noise schedule must be concrete: close over it (or mark it static) instead "
            "of passing it as a traced argument of jax.jit/vmap"
        ) from e


def coefficient_table(
    schedule: NoiseSchedule, options: SamplerOptions
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(timesteps (S,), {name: (S,) float64}) that `sample_with_options` scans over."""
    T = schedule.num_train_timesteps
    validate_options(options, T)
    spec = get_sampler(options.sampler)
    ts = spec.timesteps(T, options.num_inference_steps, options.timestep_spacing)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rows = spec.coefficients(_concrete_schedule(schedule), ts, options)
    return ts, {k: np.asarray(v, np.float64) for k, v in rows.items()}


def _reverse_process(denoise_fn, x_T, schedule, options, key, keep_inputs: bool):
    spec = get_sampler(options.sampler)
    ts, table = coefficient_table(schedule, options)
    rows: dict[str, Any] = {k: jnp.asarray(v, x_T.dtype) for k, v in table.items()}
    rows["t"] = jnp.asarray(ts, jnp.float32 if spec.process == "flow" else jnp.int32)
    stochastic = spec.is_stochastic(options)
    if stochastic:
        if key is None:
            raise ConfigError(f"sampler {options.sampler!r} with these options needs a PRNG key")
        rows["key"] = jax.random.split(key, len(ts))
    batch = x_T.shape[0]

    def body(carry: Carry, row: Row):
        model_input = spec.model_input(carry, row)
        model_output = denoise_fn(model_input, jnp.full((batch,), row["t"]))
        noise = jax.random.normal(row["key"], x_T.shape, x_T.dtype) if stochastic else None
        new = spec.update(carry, model_output.astype(x_T.dtype), row, noise, options)
        new = jax.tree.map(lambda a, b: a.astype(b.dtype), new, carry)
        return new, (model_input if keep_inputs else None)

    first_row = jax.tree.map(lambda a: a[0], rows)
    carry, inputs = jax.lax.scan(body, spec.init(x_T, first_row), rows)
    return carry["x"], inputs, rows["t"]


def sample_with_options(
    denoise_fn: DenoiseFn,
    x_T: jnp.ndarray,
    schedule: NoiseSchedule,
    options: SamplerOptions,
    key: jax.Array | None = None,
) -> jnp.ndarray:
    """Runs the reverse process from x_T (B, ...) ~ N(0, I) to x_0 (B, ...) in one scan."""
    return _reverse_process(denoise_fn, x_T, schedule, options, key, keep_inputs=False)[0]


def sample_trajectory(
    denoise_fn: DenoiseFn,
    x_T: jnp.ndarray,
    schedule: NoiseSchedule,
    options: SamplerOptions,
    key: jax.Array | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(x_0 (B, ...), inputs (S, B, ...), t (S,)): the sample and every x_t the denoiser was
    handed on the way, with its time; the same scan as `sample_with_options`."""
    return _reverse_process(denoise_fn, x_T, schedule, options, key, keep_inputs=True)


def sample(
    denoise_fn: DenoiseFn,
    x_T: jnp.ndarray,
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddim",
    num_inference_steps: int = 10,
    key: jax.Array | None = None,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    timestep_spacing: str = "trailing",
    eta: float = 0.0,
    variance_type: str = "fixed_small",
    eps_from_clipped_x0: bool = True,
) -> jnp.ndarray:
    """x_0 (B, ...) from x_T (B, ...) ~ N(0, I) with any registered sampler; see module doc.

    Wrap in `jax.jit` (all options are static): the program holds one while loop whatever
    `num_inference_steps` is.
    """
    options = SamplerOptions(
        sampler=sampler,
        num_inference_steps=num_inference_steps,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        timestep_spacing=timestep_spacing,
        eta=eta,
        variance_type=variance_type,
        eps_from_clipped_x0=eps_from_clipped_x0,
    )
    return sample_with_options(denoise_fn, x_T, schedule, options, key)


# --------------------------------------------------------------------------- inpainting guidance


def _signal_and_noise(t: jnp.ndarray, schedule: NoiseSchedule, process: str, dtype):
    """(a, sigma) with x_t = a x_0 + sigma eps at denoiser time t (B,): sqrt(abar_t) and
    sqrt(1 - abar_t) for "vp", (1 - s, s) with s = t / T for "flow"."""
    if process == "flow":
        s = t.astype(dtype) / schedule.num_train_timesteps
        return 1 - s, s
    abar = jnp.asarray(_concrete_schedule(schedule).alphas_cumprod, dtype)[t]
    return jnp.sqrt(abar), jnp.sqrt(1 - abar)


def _x0_from_output(model_output, x_t, a, sigma, process: str, prediction_type: str):
    if process == "flow":
        return flow_x0(model_output, x_t, sigma, prediction_type)
    return x0_and_eps_from_output(model_output, x_t, a, sigma, prediction_type)[0]


def _broadcast_signal_and_noise(t, schedule: NoiseSchedule, process: str, like: jnp.ndarray):
    """(a, sigma) of `_signal_and_noise`, shaped (B, 1, ...) to broadcast against `like`."""
    shape = (-1,) + (1,) * (like.ndim - 1)
    return tuple(c.reshape(shape) for c in _signal_and_noise(t, schedule, process, like.dtype))


def clean_estimate(
    model_output, x_t, t, schedule: NoiseSchedule, process: str, prediction_type: str
) -> jnp.ndarray:
    """The x_0 estimate of a denoiser's `model_output` at x_t (B, ...) and denoiser time t (B,)
    of either process ("vp" or "flow") and any prediction type."""
    a, sigma = _broadcast_signal_and_noise(t, schedule, process, x_t)
    return _x0_from_output(model_output, x_t, a, sigma, process, prediction_type)


def noised(x0, t, noise, schedule: NoiseSchedule, process: str) -> jnp.ndarray:
    """x_t = a_t x_0 + sigma_t noise at denoiser time t (B,) of either process."""
    a, sigma = _broadcast_signal_and_noise(t, schedule, process, x0)
    return a * x0 + sigma * noise


def _output_with_x0_shift(model_output, delta, a, sigma, process: str, prediction_type: str):
    """The model output whose x_0 estimate (at the same x_t) is moved by `delta`."""
    if prediction_type == "sample":
        return model_output + delta
    if prediction_type == "epsilon":
        return model_output - (a / sigma) * delta
    return model_output - delta / sigma  # v_prediction (vp) and velocity (flow) alike


def inpainting_guidance(
    denoise_fn: DenoiseFn,
    schedule: NoiseSchedule,
    options: SamplerOptions,
    target: jnp.ndarray,
    weights: jnp.ndarray,
    max_guidance: float = 5.0,
) -> DenoiseFn:
    """`denoise_fn` steered so that the sample's x_0 agrees with `target` (B, ...) where
    `weights` (broadcastable to it, in [0, 1]) is nonzero: real-time chunking's guided
    inpainting (Black et al. 2025, pseudo-inverse guidance), for any sampler of either process.

    At each evaluation the denoiser's x_0 estimate is moved by
    (1 - tau) * min(max_guidance, 1 / r2 * (1 - tau) / tau) * J^T (weights * (target - x_0)),
    where J is the Jacobian of the x_0 estimate with respect to the (rescaled) input (one
    vector-Jacobian product through the denoiser), tau = a / (a + sigma) is the equivalent
    flow time (1: clean) and r2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2); the output is then
    re-expressed in the denoiser's prediction type, so the sampler's own update is unchanged.
    Costs about three denoiser evaluations per step instead of one."""
    process = get_sampler(options.sampler).process
    prediction_type = options.prediction_type

    def guided(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        a, sigma = _broadcast_signal_and_noise(t, schedule, process, x_t)

        def x0_of(x):
            output = denoise_fn(x, t)
            return _x0_from_output(output, x, a, sigma, process, prediction_type), output

        x0, vjp_fn, output = jax.vjp(x0_of, x_t, has_aux=True)
        (g,) = vjp_fn((weights * (target - x0)).astype(x0.dtype))
        tau = a / (a + sigma)
        # (1 - tau) / (tau r2) = (tau^2 + (1 - tau)^2) / (tau (1 - tau)) >= 2; inf at the ends.
        ratio = (tau**2 + (1 - tau) ** 2) / jnp.maximum(tau * (1 - tau), 1e-12)
        step = (1 - tau) * jnp.minimum(max_guidance, ratio)
        delta = step * (a + sigma) * g  # d x_0 / d x_tau = (a + sigma) d x_0 / d x_t
        return _output_with_x0_shift(output, delta, a, sigma, process, prediction_type)

    return guided
