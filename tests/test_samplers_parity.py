"""Every sampler, step for step (every x_t its denoiser sees, then the sample), against
diffusers' PyTorch schedulers (the `parity` extra).

The same toy denoiser runs in torch (for diffusers) and in JAX (for dpjax); stochastic
samplers get the same noise by patching diffusers' `randn_tensor` to return the noise dpjax
draws at that step. Documented deviations from diffusers are not tested here (see README):
DDIM steps to the next visited timestep (diffusers: t - T//N), Euler/Heun 'linspace' rounds
timesteps to integers, and the first VE sample is x_T * sqrt(sigma_max^2 + 1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import samplers, schedules

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

BATCH, HORIZON, ACTION_DIM = 3, 4, 2


def jax_denoise(T):
    def denoise(x, t):
        w = (0.5 + t.astype(jnp.float32) / T)[:, None, None]
        return jnp.tanh(x * w) + 0.1 * x

    return denoise


def torch_denoise(x, t, T):
    w = 0.5 + float(t) / T
    return torch.tanh(x * w) + 0.1 * x


def make_diffusers_scheduler(method, T, schedule_name, options):
    common = dict(
        num_train_timesteps=T,
        beta_schedule=schedule_name,
        beta_start=1e-4,  # Heun's own defaults differ (0.00085, 0.012)
        beta_end=0.02,
        prediction_type=options.prediction_type,
        timestep_spacing=options.timestep_spacing,
    )
    clip = dict(
        clip_sample=options.clip_sample is not None,
        clip_sample_range=options.clip_sample or 1.0,
    )
    if method == "ddpm":
        return diffusers.DDPMScheduler(**common, **clip, variance_type=options.variance_type)
    if method == "ddim":
        return diffusers.DDIMScheduler(**common, **clip, set_alpha_to_one=True)
    if method == "dpmsolver++":
        return diffusers.DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    if method == "euler":
        return diffusers.EulerDiscreteScheduler(**common)
    if method == "heun":
        return diffusers.HeunDiscreteScheduler(**common, **clip)
    raise AssertionError(method)


def run_diffusers(method, T, schedule_name, options, x_T, noises, monkeypatch):
    scheduler = make_diffusers_scheduler(method, T, schedule_name, options)
    scheduler.set_timesteps(options.num_inference_steps)
    step_index = {"i": 0}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(noises[step_index["i"]]).reshape(shape)

    for module in ("scheduling_ddpm", "scheduling_ddim"):
        monkeypatch.setattr(f"diffusers.schedulers.{module}.randn_tensor", fake_randn)
    x = torch.from_numpy(np.array(x_T))
    if method in ("euler", "heun"):
        x = x * float(np.sqrt(scheduler.sigmas.max().item() ** 2 + 1))
    inputs = []
    for i, t in enumerate(scheduler.timesteps):
        step_index["i"] = i
        model_input = scheduler.scale_model_input(x, t)
        inputs.append(model_input.numpy())
        out = torch_denoise(model_input, t, T)
        kwargs = {"eta": options.eta} if method == "ddim" else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return scheduler.timesteps.numpy(), inputs, x.numpy()


def run_dpjax(T, schedule, options, x_T, key):
    """(timesteps, the x_t handed to the denoiser at every evaluation, the sample)."""
    inputs = []

    def denoise(x, t):
        jax.debug.callback(lambda v: inputs.append(np.asarray(v)), x, ordered=True)
        return jax_denoise(T)(x, t)

    out = jax.jit(lambda k, x: samplers.sample_with_options(denoise, x, schedule, options, k))(
        key, x_T
    )
    jax.effects_barrier()
    ts = samplers.timesteps(
        schedule, options.sampler, options.num_inference_steps, options.timestep_spacing
    )
    return ts, inputs, np.asarray(out)


def dpjax_noises(key, num_evaluations, shape):
    keys = jax.random.split(key, num_evaluations)
    return [np.asarray(jax.random.normal(k, shape, jnp.float32)) for k in keys]


CASES = [
    # method, T, schedule, steps, spacing, prediction type, extra options
    ("ddpm", 100, "squaredcos_cap_v2", 100, "leading", "epsilon", {}),
    ("ddpm", 100, "squaredcos_cap_v2", 10, "leading", "epsilon", {"clip_sample": 1.0}),
    ("ddpm", 100, "linear", 7, "linspace", "sample", {"variance_type": "fixed_large"}),
    ("ddpm", 1000, "linear", 20, "trailing", "v_prediction", {}),
    ("ddpm", 100, "sigmoid", 1, "trailing", "epsilon", {}),
    ("ddim", 100, "squaredcos_cap_v2", 10, "leading", "epsilon", {}),
    (
        "ddim",
        100,
        "squaredcos_cap_v2",
        10,
        "trailing",
        "v_prediction",
        {"clip_sample": 1.5, "eps_from_clipped_x0": False},
    ),  # diffusers' DDIM clipping
    ("ddim", 1000, "scaled_linear", 50, "trailing", "sample", {"eta": 0.5}),
    ("ddim", 100, "linear", 1, "leading", "epsilon", {"eta": 1.0}),
    ("dpmsolver++", 100, "squaredcos_cap_v2", 10, "linspace", "epsilon", {}),
    ("dpmsolver++", 100, "squaredcos_cap_v2", 1, "trailing", "epsilon", {}),
    ("dpmsolver++", 1000, "linear", 20, "leading", "v_prediction", {}),
    ("dpmsolver++", 100, "linear", 2, "trailing", "sample", {}),
    ("dpmsolver++", 1000, "scaled_linear", 25, "trailing", "epsilon", {}),
    ("euler", 100, "squaredcos_cap_v2", 10, "trailing", "epsilon", {}),
    ("euler", 1000, "linear", 30, "leading", "v_prediction", {}),
    ("euler", 100, "linear", 1, "trailing", "sample", {}),
    ("heun", 100, "linear", 10, "trailing", "epsilon", {}),
    ("heun", 1000, "scaled_linear", 8, "leading", "v_prediction", {"clip_sample": 2.0}),
    ("heun", 100, "squaredcos_cap_v2", 1, "trailing", "sample", {}),
]


@pytest.mark.parametrize("method,T,schedule_name,steps,spacing,prediction_type,extra", CASES)
def test_matches_diffusers(
    method, T, schedule_name, steps, spacing, prediction_type, extra, monkeypatch
):
    options = samplers.SamplerOptions(
        sampler=method,
        num_inference_steps=steps,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        **extra,
    )
    schedule = schedules.make_schedule(schedule_name, T)
    key = jax.random.key(7)
    x_T = np.asarray(jax.random.normal(jax.random.key(3), (BATCH, HORIZON, ACTION_DIM)))
    ours_ts, our_inputs, ours = run_dpjax(T, schedule, options, jnp.asarray(x_T), key)
    noises = dpjax_noises(key, len(ours_ts), x_T.shape)
    theirs_ts, their_inputs, theirs = run_diffusers(
        method, T, schedule_name, options, x_T, noises, monkeypatch
    )
    np.testing.assert_array_equal(ours_ts, theirs_ts.astype(np.int64))
    # Step for step: every x_t the denoiser sees (variance-preserving scale), then the sample.
    assert len(our_inputs) == len(their_inputs) == len(ours_ts)
    for i, (a, b) in enumerate(zip(our_inputs, their_inputs, strict=True)):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * scale, err_msg=f"evaluation {i}")
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4 * scale)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T", [100, 1000])
def test_timesteps_match_diffusers_for_every_step_count(spacing, T):
    """Every N in 1..T (where diffusers itself yields N timesteps) visits the same timesteps."""
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    checked = 0
    for n in range(1, T + 1, 1 if T <= 100 else 7):
        ddpm.set_timesteps(n)
        if len(ddpm.timesteps) == n and np.all(np.diff(ddpm.timesteps.numpy()) < 0):
            ours = samplers.spaced_timesteps(T, n, spacing)
            np.testing.assert_array_equal(ours, ddpm.timesteps.numpy(), err_msg=f"N={n}")
            checked += 1
        dpm.set_timesteps(n)
        theirs = dpm.timesteps.numpy()
        if len(theirs) == n and np.all(np.diff(theirs) < 0):
            np.testing.assert_array_equal(samplers.multistep_timesteps(T, n, spacing), theirs)
    assert checked > 10


@pytest.mark.parametrize("name", schedules.SCHEDULE_NAMES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedules_match_diffusers(name, zero_snr):
    theirs = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=name, rescale_betas_zero_snr=zero_snr
    )
    ours = schedules.make_schedule(name, 1000, rescale_betas_zero_snr=zero_snr)
    # Rescaled betas are 1 - abar_t / abar_{t-1}: diffusers' float32 division loses ~1e-6
    # absolute there; dpjax computes it in float64.
    atol = 1e-6 if zero_snr else 1e-7
    np.testing.assert_allclose(ours.betas, theirs.betas.numpy(), rtol=1e-5, atol=atol)
    abar = theirs.alphas_cumprod.numpy()
    if zero_snr:  # diffusers' DDPM keeps abar_{T-1} = 0; we use Euler's 2**-24 (README)
        abar[-1] = schedules.ZERO_SNR_ALPHA_CUMPROD
    np.testing.assert_allclose(ours.alphas_cumprod, abar, rtol=2e-4, atol=1e-7)
