"""Chunk execution (`dpjax.policy.execution`) and real-time chunking's guided inpainting.

Guidance is checked on exact denoisers. On a Gaussian chunk prior, where pseudo-inverse
guidance is exact, unclipped guidance must reproduce the committed prefix (to 0.02) with
every sampler family, RTC's clipped default (max_guidance 5) must at least halve the
unguided error. On two chunk-shaped modes ("up" and "down" ramps) that an unguided sampler
picks between at random, guidance towards the first steps of "up" must make most samples
continue as "up" (it is soft: the mode is mostly decided while the guidance is weak). The
executor is checked on hand-made chunks whose actions name their chunk and index.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import oracles, samplers, schedules
from dpjax.config import PolicyConfig
from dpjax.errors import ConfigError
from dpjax.evaluate import rollout_multimodal
from dpjax.policy import execution as ex
from dpjax.policy.execution import Execution

H = 8  # chunk length, one action dimension
UP = 0.5 + np.linspace(0.0, 0.3, H)
SCHEDULE = schedules.make_schedule("squaredcos_cap_v2", 100)
DELAY = 3
WEIGHTS = jnp.asarray(ex.rtc_weights(H, 4, DELAY))[None, :, None]  # (1, H, 1)
FAMILIES = [("ddim", "epsilon"), ("ddim", "sample"), ("dpmsolver++", "v_prediction"),
            ("flow_euler", "velocity")]  # fmt: skip


def _sample(mixture, method, prediction_type, target=None, max_guidance=5.0, steps=10):
    """(256, H) samples; guided towards target (H,) with WEIGHTS unless target is None."""
    options = samplers.SamplerOptions(
        sampler=method, num_inference_steps=steps, prediction_type=prediction_type
    )
    if method.startswith("flow"):
        denoise = oracles.oracle_flow_denoiser(mixture, 100)
    else:
        denoise = oracles.oracle_denoiser(mixture, SCHEDULE, prediction_type)
    if target is not None:
        y = jnp.broadcast_to(jnp.asarray(target, jnp.float32)[None, :, None], (256, H, 1))
        denoise = samplers.inpainting_guidance(denoise, SCHEDULE, options, y, WEIGHTS, max_guidance)
    x_T = jax.random.normal(jax.random.key(0), (256, H, 1))
    run = jax.jit(lambda x: samplers.sample_with_options(denoise, x, SCHEDULE, options))
    return np.asarray(run(x_T))[..., 0]


@pytest.mark.parametrize("method, prediction_type", FAMILIES)
def test_guidance_reproduces_the_committed_prefix(method, prediction_type):
    prior = oracles.make_mixture([1.0], [np.zeros(H)], 0.5)
    target = np.full(H, 0.7)
    error = lambda x: np.abs(x[:, :DELAY] - 0.7)
    free = error(_sample(prior, method, prediction_type, steps=50))
    exact = error(_sample(prior, method, prediction_type, target, float("inf"), steps=50))
    clipped = error(_sample(prior, method, prediction_type, target, steps=50))
    assert free.max() > 0.5
    assert exact.max() < 0.02, exact.max()
    assert clipped.mean() < 0.5 * free.mean(), (clipped.mean(), free.mean())


@pytest.mark.parametrize("method, prediction_type", FAMILIES[::3])
def test_guidance_continues_the_committed_mode(method, prediction_type):
    modes = oracles.make_mixture([0.5, 0.5], [UP, -UP], 0.05)
    free = _sample(modes, method, prediction_type)
    guided = _sample(modes, method, prediction_type, UP)
    assert 0.3 < np.mean(free[:, -1] > 0) < 0.7  # both modes, at random
    follows = np.abs(guided - UP).max(axis=1) < 0.2
    assert follows.mean() > 0.8, follows.mean()


def test_zero_weights_leave_the_denoiser_unchanged():
    options = samplers.SamplerOptions(sampler="ddim", num_inference_steps=5)
    denoise = oracles.oracle_denoiser(oracles.make_mixture([0.5, 0.5], [UP, -UP], 0.05), SCHEDULE)
    target = jnp.ones((256, H, 1))
    guided = samplers.inpainting_guidance(denoise, SCHEDULE, options, target, 0.0 * WEIGHTS)
    x_t = jax.random.normal(jax.random.key(1), (256, H, 1))
    for t in (99, 50, 5):
        ts = jnp.full((256,), t)
        np.testing.assert_allclose(guided(x_t, ts), denoise(x_t, ts), rtol=1e-5, atol=1e-6)


def test_rtc_weights():
    w = np.asarray(ex.rtc_weights(15, 8, 3))
    np.testing.assert_array_equal(w[:3], 1.0)
    np.testing.assert_array_equal(w[7:], 0.0)  # the previous chunk ends at L - s
    assert np.all(np.diff(w[3:8]) < 0) and 0 < w[6] < w[3] < 1


# --------------------------------------------------------------------------- the executor
L, S, B = 6, 2, 3


def _chunk(k):
    """Chunk k: action[b, i] = (100 k + i, b), so an action says where it came from."""
    i = np.arange(L)[None, :, None]
    b = np.arange(B)[:, None, None]
    return jnp.asarray(np.concatenate([100.0 * k + i + 0 * b, b + 0.0 * i], -1))


def _executed(execution, steps=10):
    state = ex.empty_state(B, L, 2, S)
    out = []
    for t in range(steps):
        if t % S == 0:
            state = ex.add_chunk(state, _chunk(t // S), t)
        out.append(np.asarray(ex.action(state, t, execution)))
    return np.stack(out)  # (T, B, 2)


def test_chunked_execution_without_delay_is_the_receding_horizon():
    got = _executed(Execution())
    expected = [100 * (t // S) + t % S for t in range(10)]
    np.testing.assert_array_equal(got[:, 0, 0], expected)
    np.testing.assert_array_equal(got[:, :, 1], np.tile(np.arange(B), (10, 1)))


def test_delay_keeps_the_previous_chunk_until_the_new_one_arrives():
    got = _executed(Execution(delay=2))[:, 0, 0]
    # Chunk 0 (awaited) covers steps 0-3; chunk k, planned at 2k, executes from 2k + 2 on,
    # from its index 2.
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 102, 103, 202, 203, 302, 303])


def test_temporal_ensemble_averages_every_arrived_chunk():
    got = _executed(Execution(mode="temporal_ensemble", ensemble_decay=0.0))[:, 0, 0]
    # At step t the chunks planned at 0, 2, ..., <= t that still cover t (offset < 6).
    want = [np.mean([100 * k + t - S * k for k in range(t // S + 1) if t - S * k < L])
            for t in range(10)]  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-6)
    decayed = _executed(Execution(mode="temporal_ensemble", ensemble_decay=1.0))[:, 0, 0]
    # At step 5: chunks 0 (offset 5), 1 (offset 3), 2 (offset 1) weighted 1, e^-1, e^-2.
    w = np.exp(-np.arange(3.0))
    np.testing.assert_allclose(decayed[5], np.dot(w, [5, 103, 201]) / w.sum(), rtol=1e-6)


def test_guide_targets_what_the_previous_chunk_executes():
    execution = Execution(mode="rtc", delay=2)
    state = ex.add_chunk(ex.empty_state(B, L, 2, S), _chunk(0), 0)
    target, weights = ex.guide(state, 2, execution, S)
    np.testing.assert_array_equal(target[0, :, 0], [2, 3, 4, 5, 5, 5])
    np.testing.assert_allclose(weights, ex.rtc_weights(L, S, 2) * (np.arange(L) < 4))
    _, none = ex.guide(ex.empty_state(B, L, 2, S), 0, execution, S)
    np.testing.assert_array_equal(none, 0.0)  # nothing committed before the first chunk


@pytest.mark.parametrize(
    "execution, message",
    [
        (Execution(delay=5), "delays up to 4 fit"),
        (Execution(mode="smooth"), "execution mode"),
        (Execution(delay=-1), "delay must be"),
        (Execution(ensemble_decay=float("nan")), "decay"),
        (Execution(mode="rtc"), "policy has none"),
    ],  # fmt: skip
)
def test_bad_executions_are_one_line_errors(execution, message):
    with pytest.raises(ConfigError, match=message):
        execution.validate(plan_length=L, action_horizon=S, kind="bc")


def test_rollouts_execute_every_mode_with_delay():
    """The compiled cup rollout (s = 4, L = 12) with a planner whose action at index i is
    0.01 i: each step executes (step - start of the chunk in use) * 0.01, chunked or
    averaged over the arrived chunks; with delay d a chunk planned at 4k is used from 4k + d."""
    config = PolicyConfig(kind="bc", obs_horizon=1, pred_horizon=12, action_horizon=4)

    class Ramp:
        plan_length = 12

        def __init__(self):
            self.config = config

        def plan_fn(self, **options):
            def plan(params, observation, key, guide):
                ramp = jnp.stack([jnp.arange(12) * 0.01, jnp.zeros(12)], -1)
                return jnp.broadcast_to(ramp, (observation["state"].shape[0], 12, 2))

            return plan

    def starts(t, delay):  # the chunks arrived by step t that still cover it
        return [s for s in range(0, t + 1, 4) if (s + delay <= t or s == 0) and t - s < 12]

    for delay in (0, 3, 8):
        for mode in ("chunked", "temporal_ensemble"):
            r = rollout_multimodal(
                Ramp(), None, num_episodes=2, seed=0,
                execution=Execution(mode=mode, delay=delay, ensemble_decay=0.0),
            )  # fmt: skip
            got = np.asarray(r["actions"][0, :20, 0])
            want = [0.01 * (t - max(starts(t, delay))) if mode == "chunked"
                    else 0.01 * np.mean([t - s for s in starts(t, delay)])
                    for t in range(20)]  # fmt: skip
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{mode}, delay {delay}")
    with pytest.raises(ConfigError, match="delays up to 8 fit"):
        rollout_multimodal(Ramp(), None, num_episodes=2, seed=0, execution=Execution(delay=9))
    with pytest.raises(ConfigError, match="policy has none"):
        rollout_multimodal(Ramp(), None, num_episodes=2, seed=0, execution=Execution(mode="rtc"))
