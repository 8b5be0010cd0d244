import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import oracles, samplers, schedules
from dpjax.errors import ConfigError, UnknownNameError

NUM_SAMPLES = 4000


@pytest.fixture(scope="module")
def cosine100():
    return schedules.make_schedule("squaredcos_cap_v2", 100)


def run(denoise, schedule, shape, *, key=1, impl=None, **kwargs):
    x_T = jax.random.normal(jax.random.key(0), shape)
    fn = jax.jit(lambda k, x: samplers.sample(denoise, x, schedule, key=k, **kwargs))
    return fn(jax.random.key(key, impl=impl), x_T)


@pytest.mark.parametrize(
    "method,steps",
    [("ddpm", 100), ("ddim", 100), ("dpmsolver++", 20), ("euler", 100), ("heun", 50)],
)
def test_reproduces_gaussian(cosine100, method, steps):
    mixture = oracles.make_mixture([1.0], [[1.5, -0.5]], 0.7)
    denoise = oracles.oracle_denoiser(mixture, cosine100)
    x0 = run(denoise, cosine100, (NUM_SAMPLES, 2), sampler=method, num_inference_steps=steps)
    np.testing.assert_allclose(x0.mean(0), [1.5, -0.5], atol=0.05)
    np.testing.assert_allclose(x0.std(0), [0.7, 0.7], rtol=0.06)


@pytest.mark.parametrize(
    "method,steps,prediction_type",
    [
        ("ddpm", 100, "epsilon"),
        ("ddpm", 100, "v_prediction"),
        ("ddim", 50, "sample"),
        ("dpmsolver++", 20, "epsilon"),
        ("euler", 100, "v_prediction"),
        ("heun", 50, "epsilon"),
    ],
)
def test_reproduces_cup_mixture(cosine100, method, steps, prediction_type):
    """The seed's north/east/south mixture: weights within 3 points, modes where they belong."""
    mixture = oracles.cup_mixture()
    denoise = oracles.oracle_denoiser(mixture, cosine100, prediction_type)
    x0 = run(
        denoise,
        cosine100,
        (NUM_SAMPLES, 2),
        sampler=method,
        num_inference_steps=steps,
        prediction_type=prediction_type,
    )
    assert cup_mixture_misses(mixture, x0) == []


def cup_mixture_misses(mixture, x0) -> list[str]:
    """What a sample of the cup mixture gets wrong: mode weights off by > 3 points, a mode's
    mean off by > 0.08, or its spread off by > 20% (the mixture's std is 0.25)."""
    misses = []
    freqs = np.asarray(oracles.mode_frequencies(mixture, x0))
    if np.abs(freqs - oracles.CUP_MODE_WEIGHTS).max() > 0.03:
        misses.append(f"weights {freqs.round(3)}")
    modes = np.asarray(oracles.assign_modes(mixture, x0))
    for k in range(3):
        members = np.asarray(x0)[modes == k]
        if len(members) < 2:
            misses.append(f"mode {k} empty")
            continue
        if np.abs(members.mean(0) - np.asarray(mixture.means[k])).max() > 0.08:
            misses.append(f"mode {k} mean {members.mean(0).round(3)}")
        if np.abs(members.std(0) / 0.25 - 1.0).max() > 0.2:
            misses.append(f"mode {k} std {members.std(0).round(3)}")
    return misses


def test_mixture_check_would_catch_a_broken_update(cosine100):
    """DDIM with a broken update (the noise direction dropped, so every step jumps to the
    current x0 estimate scaled down) fails the very check the samplers pass."""

    def forgetful_update(carry, model_output, row, noise, options):
        x0, _ = samplers.predict_x0_eps(model_output, carry["x"], row, options)
        return {"x": row["coef_x0"] * x0}

    ddim = samplers.get_sampler("ddim")
    samplers.register_sampler(
        "ddim_broken",
        samplers.Sampler(
            timesteps=ddim.timesteps, coefficients=ddim.coefficients, update=forgetful_update
        ),
    )
    try:
        mixture = oracles.cup_mixture()
        denoise = oracles.oracle_denoiser(mixture, cosine100)
        shape = (NUM_SAMPLES, 2)
        good = run(denoise, cosine100, shape, sampler="ddim", num_inference_steps=20)
        bad = run(denoise, cosine100, shape, sampler="ddim_broken", num_inference_steps=20)
    finally:
        samplers._SAMPLERS.pop("ddim_broken")
    assert cup_mixture_misses(mixture, good) == []
    assert cup_mixture_misses(mixture, bad), "a broken update passed the mixture check"


def test_ddim_eta0_is_deterministic(cosine100):
    denoise = oracles.oracle_denoiser(oracles.cup_mixture(), cosine100)
    a = run(denoise, cosine100, (64, 2), key=1, sampler="ddim", num_inference_steps=10)
    b = run(denoise, cosine100, (64, 2), key=2, sampler="ddim", num_inference_steps=10)
    np.testing.assert_array_equal(a, b)
    c = run(denoise, cosine100, (64, 2), key=1, sampler="ddim", num_inference_steps=10, eta=1.0)
    d = run(denoise, cosine100, (64, 2), key=2, sampler="ddim", num_inference_steps=10, eta=1.0)
    assert float(jnp.abs(c - d).max()) > 1e-3
    # DDPM: the key is its only randomness (same key, same sample; another key, another).
    e = run(denoise, cosine100, (64, 2), key=1, sampler="ddpm", num_inference_steps=10)
    f = run(denoise, cosine100, (64, 2), key=1, sampler="ddpm", num_inference_steps=10)
    np.testing.assert_array_equal(e, f)
    g = run(denoise, cosine100, (64, 2), key=2, sampler="ddpm", num_inference_steps=10)
    assert float(jnp.abs(e - g).max()) > 1e-2


def test_dpmsolver_beats_ddim_at_10_steps():
    """Against the 1000-step probability-flow answer from the same x_T."""
    schedule = schedules.make_schedule("linear", 1000)
    denoise = oracles.oracle_denoiser(oracles.cup_mixture(), schedule)
    ref = run(denoise, schedule, (512, 2), sampler="ddim", num_inference_steps=1000)
    errors = {
        m: float(
            jnp.sqrt(
                jnp.mean(
                    (run(denoise, schedule, (512, 2), sampler=m, num_inference_steps=10) - ref) ** 2
                )
            )
        )
        for m in ("dpmsolver++", "ddim", "euler")
    }
    # Measured: dpmsolver++ 0.13, ddim 0.23 (= euler: the same ODE step in another variable).
    assert errors["dpmsolver++"] < 0.75 * errors["ddim"], errors
    np.testing.assert_allclose(errors["euler"], errors["ddim"], rtol=1e-3)


def count_ops(text: str, op: str) -> int:
    return sum(line.count(op) for line in text.splitlines())


@pytest.mark.parametrize(
    "method", ["ddpm", "ddim", "dpmsolver++", "euler", "heun", "flow_euler", "flow_midpoint"]
)
def test_one_while_loop_and_one_trace(method):
    schedule = schedules.make_schedule("linear", 1000)
    texts = {}
    for steps in (100, 1000):
        traces = []

        def denoise(x, t, traces=traces):
            traces.append(1)
            return jnp.tanh(x) * t[:, None].astype(x.dtype)

        flow = samplers.get_sampler(method).process == "flow"

        def fn(k, x, denoise=denoise, steps=steps, flow=flow):
            return samplers.sample(
                denoise, x, schedule, sampler=method, num_inference_steps=steps, key=k,
                prediction_type="velocity" if flow else "epsilon",
            )  # fmt: skip

        texts[steps] = jax.jit(fn).lower(jax.random.key(0), jnp.ones((4, 3))).as_text()
        assert len(traces) == 1, f"denoiser traced {len(traces)} times"
    # One scan; stochastic samplers add the loops of threefry's own implementation (a fixed
    # number, the same for any step count).
    expected_whiles = (
        count_ops(
            jax.jit(lambda k: jax.random.normal(jax.random.split(k, 7)[1], (4, 3)))
            .lower(jax.random.key(0))
            .as_text(),
            "stablehlo.while",
        )
        if method == "ddpm"
        else 0
    )
    for steps, text in texts.items():
        assert count_ops(text, "stablehlo.while") == 1 + expected_whiles, steps
        assert count_ops(text, "stablehlo.tanh") == 1, steps
    # Same program whatever the step count: only the coefficient tables grow.
    assert abs(count_ops(texts[100], "stablehlo.") - count_ops(texts[1000], "stablehlo.")) < 5


def test_batched_over_leading_axis(cosine100):
    """Sampling a batch equals sampling its rows one at a time (deterministic sampler)."""
    denoise = oracles.oracle_denoiser(oracles.cup_mixture(), cosine100)
    x_T = jax.random.normal(jax.random.key(3), (5, 2))
    sample = jax.jit(
        lambda x: samplers.sample(
            denoise, x, cosine100, sampler="dpmsolver++", num_inference_steps=8
        )
    )
    rows = jnp.concatenate([sample(x_T[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(sample(x_T), rows, atol=1e-5)


@pytest.mark.parametrize("schedule_name", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("T", [100, 1000])
def test_coefficients_finite_for_every_step_count(schedule_name, T):
    """Each update is a fixed linear combination with these coefficients: finite => finite."""
    schedule = schedules.make_schedule(schedule_name, T)
    for method in samplers.sampler_names():
        for n in range(1, T + 1):
            flow = samplers.get_sampler(method).process == "flow"
            options = samplers.SamplerOptions(
                sampler=method, num_inference_steps=n, eta=0.5,
                prediction_type="velocity" if flow else "epsilon",
            )  # fmt: skip
            ts, table = samplers.coefficient_table(schedule, options)
            assert len(ts) == samplers.num_denoiser_evaluations(method, n, T)
            for name, values in table.items():
                assert np.all(np.isfinite(values)), (method, n, name)


@pytest.mark.parametrize("schedule_name", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize(
    "method", ["ddpm", "ddim", "dpmsolver++", "euler", "heun", "flow_euler", "flow_midpoint"]
)
def test_outputs_finite(schedule_name, method):
    schedule = schedules.make_schedule(schedule_name, 100)
    denoise = lambda x, t: jnp.tanh(x)  # a bounded, imperfect model
    flow = samplers.get_sampler(method).process == "flow"
    for steps in (1, 2, 3, 17, 99, 100):
        for prediction_type in ("velocity", "sample") if flow else ("epsilon", "v_prediction"):
            x0 = run(
                denoise,
                schedule,
                (8, 4, 2),
                sampler=method,
                num_inference_steps=steps,
                prediction_type=prediction_type,
                clip_sample=None,
            )
            assert np.all(np.isfinite(np.asarray(x0))), (steps, prediction_type)


def test_clip_sample_bounds_x0_prediction(cosine100):
    denoise = lambda x, t: -10.0 * jnp.ones_like(x)  # predicts a huge x0
    for method, prediction_type in [("ddpm", "epsilon"), ("ddim", "epsilon"),
                                    ("dpmsolver++", "epsilon"), ("flow_euler", "velocity"),
                                    ("flow_midpoint", "sample")]:  # fmt: skip
        x0 = run(denoise, cosine100, (4, 2), sampler=method, num_inference_steps=10,
                 clip_sample=1.0, prediction_type=prediction_type)  # fmt: skip
        assert float(jnp.abs(x0).max()) <= 1.0 + 1e-4, method


def test_timesteps_function(cosine100):
    np.testing.assert_array_equal(samplers.timesteps(cosine100, "ddim", 4), [99, 74, 49, 24])
    np.testing.assert_array_equal(
        samplers.timesteps(cosine100, "ddim", 4, "leading"), [75, 50, 25, 0]
    )
    np.testing.assert_array_equal(samplers.timesteps(cosine100, "heun", 3), [99, 66, 66, 32, 32])
    assert samplers.num_denoiser_evaluations("heun", 10) == 19
    # Trailing spacing visits exactly N distinct timesteps, from T-1 down, for any N <= T.
    for n in (1, 3, 7, 10, 33, 99, 100):
        ts = np.asarray(samplers.timesteps(cosine100, "ddim", n))
        assert len(np.unique(ts)) == n and ts[0] == 99 and np.all(np.diff(ts) < 0), (n, ts)


def test_bad_options_raise_clear_errors(cosine100):
    denoise = lambda x, t: x
    x = jnp.zeros((2, 2))
    with pytest.raises(UnknownNameError, match="dpmsolver\\+\\+"):
        samplers.sample(denoise, x, cosine100, sampler="dpm")
    for steps in (0, 101):
        with pytest.raises(ConfigError, match="num_inference_steps"):
            samplers.sample(denoise, x, cosine100, sampler="ddim", num_inference_steps=steps)
    with pytest.raises(ConfigError, match="strictly decreasing"):
        samplers.sample(
            denoise,
            x,
            cosine100,
            sampler="dpmsolver++",
            num_inference_steps=100,
            timestep_spacing="leading",
        )
    with pytest.raises(ConfigError, match="PRNG key"):
        samplers.sample(denoise, x, cosine100, sampler="ddpm", num_inference_steps=5)
    with pytest.raises(UnknownNameError, match="v_prediction"):
        samplers.sample(denoise, x, cosine100, prediction_type="eps")
    with pytest.raises(ConfigError, match="concrete"):
        jax.jit(lambda s: samplers.sample(denoise, x, s, num_inference_steps=5))(cosine100)


def test_register_a_new_sampler(cosine100):
    """The extension point: a 'x0 jump' sampler in a few lines, run through the same scan."""

    def coefficients(schedule, ts, options):
        abar = schedule.alphas_cumprod[ts]
        abar_next = np.concatenate([schedule.alphas_cumprod[ts[1:]], [1.0]])
        return {
            "sqrt_abar": np.sqrt(abar),
            "sqrt_one_minus_abar": np.sqrt(1 - abar),
            "sqrt_abar_next": np.sqrt(abar_next),
        }

    def update(carry, model_output, row, noise, options):
        x0, _ = samplers.predict_x0_eps(model_output, carry["x"], row, options)
        return {"x": row["sqrt_abar_next"] * x0}

    samplers.register_sampler(
        "x0_jump",
        samplers.Sampler(
            timesteps=samplers.spaced_timesteps, coefficients=coefficients, update=update
        ),
    )
    try:
        mixture = oracles.make_mixture([1.0], [[2.0, 2.0]], 0.01)
        denoise = oracles.oracle_denoiser(mixture, cosine100)
        x0 = run(denoise, cosine100, (16, 2), sampler="x0_jump", num_inference_steps=5)
        np.testing.assert_allclose(x0, 2.0, atol=0.05)
    finally:
        samplers._SAMPLERS.pop("x0_jump")


def test_clipped_ddim_stays_bounded_with_an_overconfident_model(cosine100):
    """An epsilon-model that overshoots (10x its input) on the capped cosine schedule:
    diffusers' clipping (clipped x0, raw epsilon) lets |x| grow tenfold a step until it overflows (NaN); re-deriving
    epsilon from the clipped x0 keeps every step between x_t and x0, so the sample stays finite
    and inside the clip range."""
    x_T = jax.random.normal(jax.random.key(0), (16, 8, 2))

    def overshooting(x, t):
        return 10.0 * x

    def run(consistent):
        return samplers.sample(
            overshooting, x_T, cosine100, sampler="ddim", num_inference_steps=100,
            clip_sample=1.0, eps_from_clipped_x0=consistent,
        )  # fmt: skip

    bounded = run(True)
    assert bool(jnp.all(jnp.isfinite(bounded))) and float(jnp.max(jnp.abs(bounded))) <= 1.0 + 1e-5
    diverged = run(False)
    assert not bool(jnp.all(jnp.isfinite(diverged)))


# --------------------------------------------------------------------------- flow matching


@pytest.mark.parametrize("method,steps", [("flow_euler", 20), ("flow_midpoint", 5)])
def test_flow_samplers_reproduce_cup_mixture(cosine100, method, steps):
    """The exact velocity of the straight path (closed form for a Gaussian mixture): the ODE
    samplers reproduce the mixture, and one Euler step (every sample to the mean) does not."""
    mixture = oracles.cup_mixture()
    denoise = oracles.oracle_flow_denoiser(mixture, cosine100.num_train_timesteps)
    flow = dict(prediction_type="velocity")
    x0 = run(
        denoise, cosine100, (NUM_SAMPLES, 2), sampler=method, num_inference_steps=steps, **flow
    )
    assert cup_mixture_misses(mixture, x0) == []
    one_step = run(denoise, cosine100, (NUM_SAMPLES, 2), sampler="flow_euler",
                   num_inference_steps=1, **flow)  # fmt: skip
    assert cup_mixture_misses(mixture, one_step)
    np.testing.assert_allclose(one_step, one_step.mean(0)[None].repeat(NUM_SAMPLES, 0), atol=1e-4)


def test_flow_oracle_velocity_matches_monte_carlo():
    """E[eps - x0 | x_s] of the closed form against a binned Monte-Carlo estimate (1-D)."""
    mixture = oracles.make_mixture([0.3, 0.7], [[-1.0], [2.0]], [0.3, 0.5])
    key_k, key_x, key_e = jax.random.split(jax.random.key(0), 3)
    n, s = 400_000, 0.6
    comp = jax.random.choice(key_k, 2, (n,), p=mixture.weights)
    x0 = mixture.means[comp] + mixture.stds[comp, None] * jax.random.normal(key_x, (n, 1))
    eps = jax.random.normal(key_e, (n, 1))
    x_s = (1 - s) * x0 + s * eps
    bins = np.linspace(-1.0, 2.0, 7)
    which = np.digitize(np.asarray(x_s[:, 0]), bins)
    v = np.asarray(eps - x0)[:, 0]
    for b in range(1, len(bins)):
        inside = which == b
        center = jnp.asarray([[0.5 * (bins[b - 1] + bins[b])]])
        exact = float(oracles.oracle_velocity(mixture, center, jnp.asarray([s]))[0, 0])
        # the bin's mean velocity vs the exact velocity at its center (bins are 0.5 wide)
        assert abs(v[inside].mean() - exact) < 0.15, (b, v[inside].mean(), exact)


def test_flow_midpoint_is_second_order(cosine100):
    """For one Gaussian N(mu, std^2) the straight-path ODE maps x_T to mu + std * x_T exactly;
    the flow is curved (std != 1), so halving the step divides Euler's error by ~2 and the
    midpoint method's by ~4."""
    mixture = oracles.make_mixture([1.0], [[1.5, -0.5]], 0.3)
    denoise = oracles.oracle_flow_denoiser(mixture, 100)
    shape = (256, 2)
    x_T = jax.random.normal(jax.random.key(0), shape)  # the x_T `run` starts from
    reference = jnp.asarray([1.5, -0.5]) + 0.3 * x_T

    def error(method, steps):
        x0 = run(denoise, cosine100, shape, sampler=method, num_inference_steps=steps,
                 prediction_type="velocity")  # fmt: skip
        return float(jnp.abs(x0 - reference).max())

    euler_ratio = error("flow_euler", 8) / error("flow_euler", 16)
    midpoint_ratio = error("flow_midpoint", 8) / error("flow_midpoint", 16)
    assert 1.6 < euler_ratio < 2.5, euler_ratio
    assert midpoint_ratio > 3.2, midpoint_ratio
    assert samplers.num_denoiser_evaluations("flow_midpoint", 8) == 16
    np.testing.assert_allclose(samplers.timesteps(cosine100, "flow_euler", 4), [100, 75, 50, 25])


def test_flow_samplers_are_flow_process():
    assert set(samplers.sampler_names_for("flow")) == {"flow_euler", "flow_midpoint"}
    assert "flow_euler" not in samplers.sampler_names_for("vp")
    with pytest.raises(ConfigError, match="num_inference_steps"):
        samplers.validate_options(
            samplers.SamplerOptions(sampler="flow_euler", num_inference_steps=0), 100
        )
    with pytest.raises(UnknownNameError, match="velocity"):  # epsilon means nothing here
        samplers.validate_options(samplers.SamplerOptions(sampler="flow_euler"), 100)


def test_flow_x0_prediction_equals_velocity(cosine100):
    """An x0-predicting flow denoiser (output x_s - s v) samples what the velocity one does."""
    mixture = oracles.cup_mixture()
    velocity = oracles.oracle_flow_denoiser(mixture, 100)
    x0_model = lambda x, t: x - (t / 100.0)[:, None] * velocity(x, t)
    for method in ("flow_euler", "flow_midpoint"):
        a = run(velocity, cosine100, (256, 2), sampler=method, num_inference_steps=7,
                prediction_type="velocity")  # fmt: skip
        b = run(x0_model, cosine100, (256, 2), sampler=method, num_inference_steps=7,
                prediction_type="sample")  # fmt: skip
        np.testing.assert_allclose(a, b, atol=2e-4)
