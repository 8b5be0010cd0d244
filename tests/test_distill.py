"""Distillation: the consistency student on an exact teacher, `dpjax distill` end to end, and
the fallback policy (non-finite, out of bounds, late)."""

import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import cli, oracles, samplers, schedules
from dpjax.distill.students import consistency_regression, gate_fit
from dpjax.envs.collect import collect_demos
from dpjax.errors import ConfigError, DpjaxError
from dpjax.nets import NoiseGate
from dpjax.policy import load_policy
from dpjax.policy.fallback import FallbackPolicy

sys.path.insert(0, os.path.dirname(__file__))
from test_evaluate_cli import tiny_run  # noqa: E402


class Student(nn.Module):
    """(x_t (B, 2), t (B,)) -> x_0 estimate (B, 2)."""

    @nn.compact
    def __call__(self, x, t):
        h = jnp.concatenate([x, (t[:, None].astype(jnp.float32) / 100.0)], -1)
        for width in (128, 128, 128):
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(2)(h)


def _exact_teacher(mixture):
    """(schedule, the exact denoiser of `mixture`, its DDIM 12 options)."""
    schedule = schedules.make_schedule("squaredcos_cap_v2", 100)
    options = samplers.SamplerOptions(sampler="ddim", num_inference_steps=12)
    return schedule, oracles.oracle_denoiser(mixture, schedule), options


def _fit_to_teacher(loss_fn, params, mixture, steps: int):
    """Adam (cosine from 3e-3) on `loss_fn(params, x_T, x0, inputs, ts, key)` over `steps`
    batches of 256 noises x_T (B, 2) and the exact teacher's trajectories from them (end x0,
    points `inputs` at times `ts`); (the last params, the losses)."""
    schedule, teacher, options = _exact_teacher(mixture)
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

    @jax.jit
    def step(carry, key):
        params, opt_state = carry
        key_noise, key_pick = jax.random.split(key)
        x_T = jax.random.normal(key_noise, (256, 2))
        x0, inputs, ts = samplers.sample_trajectory(teacher, x_T, schedule, options)
        loss, grads = jax.value_and_grad(loss_fn)(params, x_T, x0, inputs, ts, key_pick)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.key(1), steps)
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), keys)
    return params, losses


def test_consistency_student_draws_the_teachers_modes_in_one_step():
    """Teacher: the exact denoiser of the cup mixture, sampled with 12 DDIM steps. A student
    trained by `consistency_regression` on its trajectories draws the teacher's mode
    frequencies in one call (within 4 points); one DDIM step of the teacher itself puts
    everything in one mode."""
    mixture = oracles.cup_mixture()
    schedule, teacher, options = _exact_teacher(mixture)
    student = Student()
    params = student.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))

    def loss_fn(p, x_T, x0, inputs, ts, key):
        estimate = lambda x, t: student.apply(p, x, t)
        return consistency_regression(estimate, x0, inputs, ts, key)[0]

    params, losses = _fit_to_teacher(loss_fn, params, mixture, 1500)
    assert float(losses[-100:].mean()) < 0.2 * float(losses[:100].mean())
    x_T = jax.random.normal(jax.random.key(2), (4000, 2))
    reference = samplers.sample_with_options(teacher, x_T, schedule, options)
    one_call = student.apply(params, x_T, jnp.full((4000,), 99))
    naive = samplers.sample(teacher, x_T, schedule, sampler="ddim", num_inference_steps=1)
    teacher_freqs = oracles.mode_frequencies(mixture, reference)
    student_error = np.abs(oracles.mode_frequencies(mixture, one_call) - teacher_freqs).max()
    naive_error = np.abs(oracles.mode_frequencies(mixture, naive) - teacher_freqs).max()
    assert student_error < 0.04, (student_error, oracles.mode_frequencies(mixture, one_call))
    assert naive_error > 0.3, naive_error
    # and the student's samples sit on the modes (not between them, as a regressor's would)
    spread = np.linalg.norm(
        one_call - mixture.means[oracles.assign_modes(mixture, one_call)], axis=-1
    )
    assert float(np.median(spread)) < 0.4, float(np.median(spread))


class CodedStudent(nn.Module):
    """(x_t (B, 2), t (B,), code (B, 8)) -> x_0 estimate (B, 2): the code shifts layer one."""

    @nn.compact
    def __call__(self, x, t, cond):
        h = jnp.concatenate([x, (t[:, None].astype(jnp.float32) / 100.0)], -1)
        h = nn.Dense(128)(h) + nn.Dense(128)(cond)
        for width in (128, 128):
            h = nn.Dense(width)(nn.silu(h))
        return nn.Dense(2)(nn.silu(h))


def _one_step_student(num_modes: int, mixture, steps: int = 400):
    """A consistency student of the exact cup-mixture teacher (DDIM 12) with a mode gate of
    `num_modes` codes (1: none, as `consistency_loss` trains it); (its one-call samples,
    the teacher's) from the same 4000 noises."""
    student, gate = CodedStudent(), NoiseGate(num_modes, 1, 2, code_dim=8)
    zeros = lambda b: jnp.zeros((b, 8))
    params = {
        "student": student.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)), zeros(1)),
        "gate": gate.init(jax.random.key(3), jnp.zeros((1, 1, 2)), zeros(1)),
    }
    g = lambda p, method, *args: gate.apply(p["gate"], *args, method=method)

    def coded(p, x_T, mode=None):
        """The conditioning (B, 8) of noises x_T (B, 2): zeros plus the picked mode's code."""
        cond = zeros(x_T.shape[0])
        if num_modes == 1:
            return cond
        if mode is None:
            mode = jnp.argmax(g(p, NoiseGate.logits, x_T[:, None], cond), -1)
        return g(p, NoiseGate.condition, cond, mode)

    def loss_fn(p, x_T, x0, inputs, ts, key):
        gate_loss, mode = 0.0, None
        if num_modes > 1:
            cond = zeros(x_T.shape[0])
            mode, gate_loss, _ = gate_fit(g(p, NoiseGate.centroids, cond),
                                          g(p, NoiseGate.logits, x_T[:, None], cond),
                                          x0[:, None])  # fmt: skip
        cond = coded(p, x_T, mode)
        estimate = lambda x, t: student.apply(p["student"], x, t, cond)
        return consistency_regression(estimate, x0, inputs, ts, key)[0] + gate_loss

    params, _ = _fit_to_teacher(loss_fn, params, mixture, steps)
    schedule, teacher, options = _exact_teacher(mixture)
    x_T = jax.random.normal(jax.random.key(2), (4000, 2))
    one_call = student.apply(params["student"], x_T, jnp.full((4000,), 99), coded(params, x_T))
    return one_call, samplers.sample_with_options(teacher, x_T, schedule, options)


def test_a_mode_gate_keeps_one_step_samples_on_the_modes():
    """Narrow modes (std 0.1, 2 apart): a smooth one-step map from noise onto them must cross
    the gaps between them, so the ungated student puts several percent of its samples more
    than 3 std from every mode; with a gate of 4 codes (one spare) the jump is the gate's
    argmax and the student is off the modes no more often than the exact teacher is, at the
    teacher's mode frequencies."""
    mixture = oracles.cup_mixture(std=0.1)

    def off_mode(x):
        distance = np.linalg.norm(x - mixture.means[oracles.assign_modes(mixture, x)], axis=-1)
        return float(np.mean(distance > 0.3))

    plain, reference = _one_step_student(1, mixture)
    gated, _ = _one_step_student(4, mixture)
    teacher_freqs = oracles.mode_frequencies(mixture, reference)
    assert off_mode(reference) < 0.005
    assert off_mode(plain) > 0.03, off_mode(plain)
    assert off_mode(gated) < 0.01, off_mode(gated)
    error = np.abs(oracles.mode_frequencies(mixture, gated) - teacher_freqs).max()
    assert error < 0.03, (error, oracles.mode_frequencies(mixture, gated))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = collect_demos(root / "data", 6, 0, progress=False)
    return tiny_run(data, root / "teacher")


def test_dpjax_distill_writes_students_that_load_and_evaluate(teacher, tmp_path, capsys):
    consistency, bc = tmp_path / "cd", tmp_path / "bc"
    assert cli.main(["distill", str(teacher), "--method", "consistency", "--out",
                     str(consistency), "--steps", "3", "--teacher-steps", "4"]) == 0  # fmt: skip
    assert cli.main(["distill", str(teacher), "--method", "bc", "--out", str(bc),
                     "--steps", "3", "--hidden-dims", "32,32"]) == 0  # fmt: skip
    assert "dpjax eval" in capsys.readouterr().out
    student, _, meta = load_policy(consistency)
    c = student.config
    assert (c.kind, c.prediction_type, c.sampler, c.num_inference_steps) == (
        "diffusion", "sample", "ddim", 1)  # fmt: skip
    assert meta["distillation"]["method"] == "consistency"
    assert meta["distillation"]["denoiser_evaluations_per_chunk"] == 4
    assert meta["step"] == 3
    bc_policy, _, bc_meta = load_policy(bc)
    assert bc_policy.config.kind == "bc" and bc_policy.config.bc_head.hidden_dims == (32, 32)
    assert bc_meta["distillation"]["method"] == "bc"
    assert cli.main(["eval", str(consistency), "--episodes", "3"]) == 0
    result = json.loads(next((consistency / "eval").glob("eval_*.json")).read_text())
    assert result["num_inference_steps"] == 1 and len(result["per_episode"]["success"]) == 3


def test_dpjax_distill_rejects_bad_teachers_and_options(teacher, tmp_path, capsys):
    assert cli.main(["distill", str(tmp_path / "nothing"), "--method", "bc",
                     "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "no checkpoint" in capsys.readouterr().err
    assert cli.main(["distill", str(teacher), "--method", "consistency", "--out",
                     str(tmp_path / "y"), "--teacher-sampler", "ddpm"]) == 2  # fmt: skip
    assert "stochastic" in capsys.readouterr().err
    assert cli.main(["distill", str(teacher), "--method", "bc", "--out", str(tmp_path / "z"),
                     "--hidden-dims", "wide"]) == 2  # fmt: skip
    assert "--hidden-dims" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() or not (tmp_path / "y" / "checkpoints").exists()


def test_dpjax_distill_with_a_mode_gate(teacher, tmp_path, capsys):
    """`--gate-modes K`: the student loads and evaluates with its gate; it starts as its
    teacher's network (zero codes: the gate's pick changes nothing) and afterwards each
    chunk is sampled with the code the gate picks from its noise."""
    from dpjax.data import load_dataset
    from dpjax.distill.students import starting_params, student_config
    from dpjax.policy.loading import build_policy, load_run_config
    from dpjax.policy.policies import PolicyNetwork

    out = tmp_path / "cd_gate"
    assert cli.main(["distill", str(teacher), "--method", "consistency", "--out", str(out),
                     "--steps", "3", "--teacher-steps", "4", "--gate-modes", "3"]) == 0  # fmt: skip
    student, params, meta = load_policy(out)
    assert student.config.gate_modes == 3 and meta["distillation"]["gate_modes"] == 3
    assert params["params"]["noise_gate"]["codes"].shape[0] == 3
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["gate_accuracy"] <= 1 and m["gate_cross_entropy"] > 0 for m in metrics)
    assert cli.main(["eval", str(out), "--episodes", "2"]) == 0

    config = student_config(load_run_config(teacher), "consistency", num_steps=1, gate_modes=3)
    gated, _, _ = build_policy(config, load_dataset(config.dataset))
    plain, _, _ = build_policy(student_config(load_run_config(teacher), "consistency",
                                              num_steps=1), load_dataset(config.dataset))  # fmt: skip
    _, teacher_params, _ = load_policy(teacher)
    start = starting_params(gated, teacher_params, jax.random.key(0))
    obs, key = _observation(gated, batch=8), jax.random.key(1)
    options = gated.config.sampler_options()
    np.testing.assert_allclose(gated.predict_action_chunk(start, obs, key, options),
                               plain.predict_action_chunk(teacher_params, obs, key, options),
                               atol=1e-5)  # fmt: skip
    codes = 3.0 * jax.random.normal(jax.random.key(2), (3, gated.network.cond_dim))
    start["params"]["noise_gate"]["codes"] = codes
    cond = gated._encode(start, obs, False)
    x_T = jax.random.normal(jax.random.key(3), (8, config.policy.pred_horizon, 2))
    logits = gated.apply(start, x_T, cond, method=PolicyNetwork.mode_logits)
    np.testing.assert_allclose(gated.gated(start, x_T, cond),
                               cond + codes[jnp.argmax(logits, -1)], rtol=1e-6)  # fmt: skip
    moved = gated.predict_action_chunk(start, obs, key, options)
    assert float(jnp.abs(moved - plain.predict_action_chunk(teacher_params, obs, key,
                                                            options)).max()) > 1e-3  # fmt: skip

    _assert_distill_refuses(teacher, tmp_path, capsys, (
        (["--gate-modes", "0"], "gate_modes must be an integer >= 1"),
        (["--method", "bc", "--gate-modes", "2"], "takes none"),
    ))  # fmt: skip
    with pytest.raises(ConfigError, match="distillation only"):
        tiny_run(load_run_config(teacher).dataset, tmp_path / "gated_run", "policy.gate_modes=2")


@pytest.fixture(scope="module")
def bc_student(teacher, tmp_path_factory):
    bc = tmp_path_factory.mktemp("fallback") / "bc"
    assert cli.main(["distill", str(teacher), "--method", "bc", "--out", str(bc),
                     "--steps", "2"]) == 0  # fmt: skip
    return bc


@pytest.fixture(scope="module")
def pair(teacher, bc_student):
    primary, primary_params, _ = load_policy(teacher)
    backup, backup_params, _ = load_policy(bc_student)
    return primary, primary_params, backup, backup_params


def _observation(policy, batch=3):
    rng = np.random.default_rng(0)
    return {k: rng.uniform(-1, 1, v.shape).astype(np.float32)
            for k, v in policy.example_observation(batch).items()}  # fmt: skip


def test_fallback_on_non_finite_and_out_of_bounds_chunks(pair):
    primary, primary_params, backup, backup_params = pair
    policy = FallbackPolicy(primary, backup)
    obs, key = _observation(primary), jax.random.key(0)
    actions, reasons = policy.act((primary_params, backup_params), obs, key)
    expected = np.asarray(primary.act(primary_params, obs, key))
    assert reasons == ["primary"] * 3
    np.testing.assert_array_equal(actions, expected)
    broken = jax.tree.map(lambda a: a * np.nan, primary_params)  # an injected NaN
    actions, reasons = policy.act((broken, backup_params), obs, key)
    assert reasons == ["non_finite"] * 3
    np.testing.assert_allclose(actions, backup.act(backup_params, obs, key), atol=1e-6)
    assert policy.counts == {"primary": 3, "non_finite": 3, "out_of_bounds": 0, "late": 0}
    assert policy.fallback_rate() == 0.5
    # bounds: the data's range maps to [-1, 1]; 1.2 is out by more than the 0.05 margin
    n = primary.normalizer
    inside = n.unnormalize("action", jnp.full((1, 4, 2), 0.99))
    outside = n.unnormalize("action", jnp.full((1, 4, 2), 0.99).at[0, 2, 1].set(1.2))
    np.testing.assert_array_equal(policy.reasons(jnp.concatenate([inside, outside])), [0, 2])
    # the jitted form (for rollouts and servers) applies the same selection
    fn = policy.inference_fn()
    np.testing.assert_allclose(fn((broken, backup_params), obs, key),
                               backup.act(backup_params, obs, key), atol=1e-6)  # fmt: skip


class _SlowPolicy:
    """The primary with an injected delay inside its program."""

    def __init__(self, policy, delay_s):
        self._policy, self._delay = policy, delay_s
        self.config, self.normalizer = policy.config, policy.normalizer
        self.observation_keys = policy.observation_keys
        self.check_observation = policy.check_observation

    def inference_fn(self, **options):
        fast = self._policy.inference_fn(**options)

        def slow(params, obs, key):
            chunk = fast(params, obs, key)
            wait = lambda c: (time.sleep(self._delay), c)[1]
            return jax.pure_callback(wait, jax.ShapeDtypeStruct(chunk.shape, chunk.dtype), chunk)

        return jax.jit(slow)


def test_fallback_on_an_injected_delay(pair):
    primary, primary_params, backup, backup_params = pair
    obs, key = _observation(primary, 2), jax.random.key(1)
    slow = _SlowPolicy(primary, 0.5)
    late = FallbackPolicy(slow, backup, latency_budget_ms=50)
    late.act((primary_params, backup_params), obs, key)  # compiles
    start = time.perf_counter()
    actions, reasons = late.act((primary_params, backup_params), obs, key)
    assert reasons == ["late", "late"] and time.perf_counter() - start < 0.45
    np.testing.assert_allclose(actions, backup.act(backup_params, obs, key), atol=1e-6)
    patient = FallbackPolicy(slow, backup, latency_budget_ms=5000)
    _, reasons = patient.act((primary_params, backup_params), obs, key)
    assert reasons == ["primary", "primary"]
    with pytest.raises(ConfigError, match="latency_budget_ms"):
        FallbackPolicy(primary, backup, latency_budget_ms=0)


def test_a_server_with_a_fallback_serves_the_backup_and_counts_it(teacher, bc_student, pair):
    """`dpjax serve --fallback` as the server builds it: a broken primary (NaN weights) is
    replaced by the backup's chunk for every request, and /stats counts why."""
    from dpjax.client import PolicyClient
    from dpjax.server import PolicyServer

    primary, primary_params, backup, backup_params = pair
    bc_dir = bc_student
    server = PolicyServer.from_run(teacher, fallback=bc_dir, latency_budget_ms=5000)
    assert server.metadata()["fallback"]["run_dir"] == str(bc_dir)
    server.warm_up()
    broken = jax.tree.map(lambda a: a * np.nan, primary_params)
    obs = _observation(primary, 1)
    with server.start_in_thread() as thread, PolicyClient("127.0.0.1", thread.port) as client:
        served = client.act(obs, seed=3)
        server.params = (broken, backup_params)
        fallen = client.act(obs, seed=3)
        stats = client.stats()
    np.testing.assert_allclose(served, primary.act(primary_params, obs, jax.random.key(3)),
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(fallen, backup.act(backup_params, obs, jax.random.key(3)),
                               atol=1e-5)  # fmt: skip
    assert stats["fallback"] == {"primary": 1, "non_finite": 1, "out_of_bounds": 0, "late": 0}
    assert stats["fallback_rate"] == 0.5
    with pytest.raises(DpjaxError, match="needs a --fallback"):
        PolicyServer.from_run(teacher, latency_budget_ms=10)


@pytest.mark.parametrize("process", ["vp", "flow"])
def test_mode_seeking_pull_moves_chunks_between_modes_onto_the_nearer_mode(process):
    """Descending ModeSeeking.pull on the samples themselves (exact teacher of the cup mixture)
    takes points between north and east onto the nearer of the two, and leaves points on a
    mode there; the mean (0, 0) of the modes, where a one-step regression would land, is no
    resting point. Without the stop-gradient target (or with a sign error) they stay or drift."""
    from dpjax.distill import ModeSeeking

    mixture = oracles.cup_mixture()
    T = 100
    schedule = schedules.make_schedule("squaredcos_cap_v2", T)
    if process == "flow":
        teacher = oracles.oracle_flow_denoiser(mixture, T)
        prediction_type = "velocity"
    else:
        teacher = oracles.oracle_denoiser(mixture, schedule)
        prediction_type = "epsilon"

    def teacher_clean(x_t, t):
        return samplers.clean_estimate(teacher(x_t, t), x_t, t, schedule, process,
                                       prediction_type)  # fmt: skip

    def renoise(x, t, noise):
        return samplers.noised(x, t, noise, schedule, process)

    term = ModeSeeking(weight=1.0, max_time=0.2)
    north, east = np.asarray(mixture.means[0]), np.asarray(mixture.means[1])
    # between the two modes, 0.3 of the way from the nearer one's side of the midpoint
    side = np.linspace(0.3, 0.7, 9)
    between = np.concatenate([(1 - side)[:, None] * north + side[:, None] * east,
                              np.zeros((1, 2))])  # fmt: skip
    start = jnp.asarray(np.concatenate([between, mixture.means]), jnp.float32)

    @jax.jit
    def descend(x, key):
        value, grad = jax.value_and_grad(
            lambda x: term.pull(x, teacher_clean, renoise, key, T, continuous=process == "flow")
        )(x)
        return x - 0.5 * x.shape[0] * grad, value

    end, values = jax.lax.scan(descend, start, jax.random.split(jax.random.key(0), 400))
    nearest = np.asarray(oracles.assign_modes(mixture, end))
    distance = np.linalg.norm(np.asarray(end) - np.asarray(mixture.means)[nearest], axis=-1)
    assert distance.max() < 0.5, distance
    # each between-point ends on its nearer mode (near the midpoint, noise may decide)
    expected = np.where(side < 0.5, 0, 1)
    off_center = np.abs(side - 0.5) >= 0.1
    assert (nearest[:9][off_center] == expected[off_center]).all(), nearest
    assert (nearest[-3:] == np.arange(3)).all(), nearest  # points on a mode stay on it
    start_distance = np.linalg.norm(between - np.asarray(mixture.means)[
        np.asarray(oracles.assign_modes(mixture, jnp.asarray(between)))], axis=-1)  # fmt: skip
    assert start_distance.min() > 0.8  # they did start between the modes


def test_dpjax_distill_with_mode_seeking(teacher, tmp_path, capsys):
    out = tmp_path / "cd_ms"
    assert cli.main(["distill", str(teacher), "--method", "consistency", "--out", str(out),
                     "--steps", "3", "--teacher-steps", "4", "--mode-seeking", "2",
                     "--mode-seeking-max-time", "0.3"]) == 0  # fmt: skip
    _, _, meta = load_policy(out)
    assert meta["distillation"]["mode_seeking"] == {"weight": 2.0, "max_time": 0.3}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("mode_seeking" in m and m["mode_seeking"] > 0 for m in metrics), metrics
    _assert_distill_refuses(teacher, tmp_path, capsys, (
        (["--mode-seeking", "0"], "weight must be > 0"),
        (["--mode-seeking", "1", "--mode-seeking-max-time", "2"], "max time"),
        (["--mode-seeking-max-time", "0.1"], "pass the weight too"),
        (["--method", "bc", "--mode-seeking", "1"], "takes none"),
    ))  # fmt: skip


def _assert_distill_refuses(teacher, tmp_path, capsys, cases):
    """`dpjax distill` (consistency, 1 step, unless the options name another method) exits
    with 2 and prints the message for each (options, message) case."""
    for bad, message in cases:
        args = ["distill", str(teacher), "--out", str(tmp_path / "bad"), "--steps", "1", *bad]
        if "--method" not in bad:
            args += ["--method", "consistency"]
        assert cli.main(args) == 2
        assert message in capsys.readouterr().err
