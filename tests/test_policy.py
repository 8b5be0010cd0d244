import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import config as C
from dpjax import oracles
from dpjax import policy as P
from dpjax.data import Normalizer, compute_stats, make_window_data, sample_windows
from dpjax.data.synthetic import three_mode_episodes
from dpjax.errors import ConfigError, DataError, ShapeError, UnknownNameError
from dpjax.training import step as T

SMALL = dict(
    action_dim=2,
    obs_horizon=1,
    pred_horizon=4,
    action_horizon=4,
    denoiser=C.MLPConfig(hidden_dims=(256, 256)),
    bc_head=C.BCHeadConfig(hidden_dims=(256, 256)),
    low_dim_features=None,
)


@pytest.fixture(scope="module")
def three_modes():
    episodes = three_mode_episodes(300, seed=0)
    stats = compute_stats(episodes)
    normalizer = Normalizer.from_stats(stats, ["action", "observation/state"])
    spec = P.observation_spec_from_stats(stats, ["state"])
    return episodes, normalizer, spec


def train_policy(policy, episodes, *, steps=400, batch_size=128, lr=3e-3, seed=0):
    c = policy.config
    mesh = T.make_mesh(1)
    data = T.put_replicated(
        make_window_data(
            episodes,
            obs_horizon=c.obs_horizon,
            pred_horizon=c.pred_horizon,
            action_horizon=c.action_horizon,
        ),
        mesh,
    )
    optim = C.OptimConfig(learning_rate=lr, warmup_steps=30)
    tx = T.make_optimizer(optim, steps)
    state = T.put_replicated(
        T.init_train_state(policy.init(jax.random.key(seed)), tx, jax.random.key(seed + 1)), mesh
    )
    step = T.make_train_step(policy.loss, tx, optim, mesh, batch_size, steps)
    for _ in range(steps):
        state, metrics = step(state, data)
    return state, metrics


def near_mode_fraction(actions, radius=1.0):
    """Fraction of chunks whose mean action is within `radius` of one of the three modes."""
    mixture = oracles.cup_mixture()
    a = np.asarray(actions).mean(1)
    distance = np.linalg.norm(a[:, None] - np.asarray(mixture.means)[None], axis=-1).min(1)
    return float((distance < radius).mean())


def test_diffusion_reproduces_three_modes_and_bc_collapses(three_modes):
    """The seed's central claim, as a learning test: a few hundred CPU steps."""
    episodes, normalizer, spec = three_modes
    observation = {"state": jnp.zeros((2000, 1, 3))}
    results = {}
    for kind in ("diffusion", "bc"):
        policy = P.make_policy(C.PolicyConfig(kind=kind, **SMALL), normalizer, spec)
        state, metrics = train_policy(policy, episodes)
        actions = policy.act(state.ema_params, observation, jax.random.key(5))
        assert actions.shape == (2000, 4, 2)
        freqs = oracles.mode_frequencies(oracles.cup_mixture(), np.asarray(actions).mean(1))
        results[kind] = (freqs, near_mode_fraction(actions))
    diffusion_freqs, diffusion_near = results["diffusion"]
    bc_freqs, bc_near = results["bc"]
    np.testing.assert_allclose(diffusion_freqs, oracles.CUP_MODE_WEIGHTS, atol=0.08)
    assert diffusion_near > 0.8, results
    # BC regresses to the mean of the modes: nowhere near any of them.
    assert bc_near < 0.05, results


def test_multiple_hypothesis_bc_keeps_the_three_modes_apart(three_modes):
    """bc_head.num_hypotheses=4: the head's candidates land on the modes and sampling its categorical
    draws them at the demonstrations' frequencies, where one regressed chunk (the test above)
    sits between them; without a key the most probable candidate (north) is taken."""
    episodes, normalizer, spec = three_modes
    head = C.BCHeadConfig(hidden_dims=(256, 256), num_hypotheses=4)
    config = C.PolicyConfig(**{**SMALL, "kind": "bc", "bc_head": head})
    policy = P.make_policy(config, normalizer, spec)
    state, metrics = train_policy(policy, episodes)
    assert float(metrics["cross_entropy"]) < 1.2  # below log 4 = 1.39: it learned the weights
    observation = {"state": jnp.zeros((2000, 1, 3))}
    actions = policy.act(state.ema_params, observation, jax.random.key(5))
    assert actions.shape == (2000, 4, 2)
    freqs = oracles.mode_frequencies(oracles.cup_mixture(), np.asarray(actions).mean(1))
    np.testing.assert_allclose(freqs, oracles.CUP_MODE_WEIGHTS, atol=0.08)
    assert near_mode_fraction(actions) > 0.9
    greedy = policy.predict_action_chunk(state.ema_params, observation)
    greedy_freqs = oracles.mode_frequencies(oracles.cup_mixture(), np.asarray(greedy).mean(1))
    assert greedy_freqs[0] == 1.0, greedy_freqs


def test_num_hypotheses_is_validated():
    with pytest.raises(ConfigError, match="bc_head.num_hypotheses must be an integer >= 1"):
        C.PolicyConfig(kind="bc", bc_head=C.BCHeadConfig(num_hypotheses=0)).validate()
    with pytest.raises(ConfigError, match="setting of the BC head"):
        C.PolicyConfig(bc_head=C.BCHeadConfig(num_hypotheses=2)).validate()


def test_any_sampler_at_inference_without_retraining(three_modes):
    episodes, normalizer, spec = three_modes
    policy = P.make_policy(C.PolicyConfig(**SMALL), normalizer, spec)
    params = policy.init(jax.random.key(0))
    observation = {"state": jnp.zeros((3, 1, 3))}
    for sampler, steps in (("ddpm", 5), ("dpmsolver++", 3), ("heun", 2), ("euler", 1)):
        actions = policy.act(
            params, observation, jax.random.key(1), sampler=sampler, num_inference_steps=steps
        )
        assert actions.shape == (3, 4, 2) and np.all(np.isfinite(np.asarray(actions)))
    fn = policy.inference_fn(sampler="ddim", num_inference_steps=7)
    assert fn is policy.inference_fn(sampler="ddim", num_inference_steps=7)  # cached
    assert policy.num_denoiser_evaluations("heun", 10) == 19


def test_executed_actions_start_at_current_step(three_modes):
    _, normalizer, spec = three_modes
    config = C.PolicyConfig(
        kind="bc", **{**SMALL, "obs_horizon": 2, "pred_horizon": 8, "action_horizon": 3}
    )
    policy = P.make_policy(config, normalizer, spec)
    chunk = jnp.arange(8.0)[None, :, None] * jnp.ones((2, 8, 2))
    np.testing.assert_array_equal(policy._executed(chunk)[0, :, 0], [1.0, 2.0, 3.0])


def test_bad_observations_name_what_is_wrong(three_modes):
    _, normalizer, spec = three_modes
    policy = P.make_policy(C.PolicyConfig(**SMALL), normalizer, spec)
    params = policy.init(jax.random.key(0))
    key = jax.random.key(0)
    with pytest.raises(ShapeError, match=r"expected shape \(B, 1, 3\)"):
        policy.act(params, {"state": np.zeros((2, 1, 4), np.float32)}, key)
    with pytest.raises(ShapeError, match="missing keys \\['state'\\]"):
        policy.act(params, {"pos": np.zeros((2, 1, 3), np.float32)}, key)
    bad = np.zeros((2, 1, 3), np.float32)
    bad[1, 0, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        policy.act(params, {"state": bad}, key)


def test_bad_configs(three_modes):
    _, normalizer, spec = three_modes
    with pytest.raises(ConfigError, match="obs_horizon - 1 \\+ action_horizon"):
        P.make_policy(
            C.PolicyConfig(**{**SMALL, "obs_horizon": 3, "action_horizon": 4}), normalizer, spec
        )
    with pytest.raises(UnknownNameError, match="unet1d"):
        P.make_policy(C.PolicyConfig(**{**SMALL, "denoiser": "resnet"}), normalizer, spec)
    with pytest.raises(UnknownNameError, match="dpmsolver"):
        P.make_policy(C.PolicyConfig(**{**SMALL, "sampler": "plms"}), normalizer, spec)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        P.make_policy(C.PolicyConfig(**{**SMALL, "num_inference_steps": 101}), normalizer, spec)
    with pytest.raises(ConfigError, match="not in the dataset"):
        P.make_policy(C.PolicyConfig(**{**SMALL, "low_dim_keys": ("joint",)}), normalizer, spec)


@pytest.mark.parametrize("denoiser", ["unet1d", "transformer"])
def test_other_denoisers_train_step(three_modes, denoiser):
    episodes, normalizer, spec = three_modes
    config = C.PolicyConfig(
        **{
            **SMALL,
            "denoiser": {
                "unet1d": C.UNet1DConfig(down_dims=(32, 64)),
                "transformer": C.TransformerConfig(width=32, num_layers=1),
            }[denoiser],
            "obs_horizon": 2,
            "pred_horizon": 8,
            "action_horizon": 4,
            "low_dim_features": 16,
        }
    )
    policy = P.make_policy(config, normalizer, spec)
    state, metrics = train_policy(policy, episodes, steps=3, batch_size=8)
    assert np.isfinite(float(metrics["loss"]))
    actions = policy.act(state.params, {"state": jnp.zeros((2, 2, 3))}, jax.random.key(0))
    assert actions.shape == (2, 4, 2)


@pytest.mark.parametrize("denoiser", ["mlp", "unet1d", "transformer"])
def test_a_mode_gate_conditions_every_denoiser(three_modes, denoiser):
    """gate_modes K: every denoiser (vector or token conditioning) samples with the code the
    gate picks from x_T; different codes give different chunks from the same noise."""
    from dpjax.policy.policies import PolicyNetwork

    _, normalizer, spec = three_modes
    nets = {"mlp": C.MLPConfig(hidden_dims=(32, 32)), "unet1d": C.UNet1DConfig(down_dims=(32, 64)),
            "transformer": C.TransformerConfig(width=32, num_layers=1)}  # fmt: skip
    config = C.PolicyConfig(**{**SMALL, "denoiser": nets[denoiser], "gate_modes": 3,
                               "obs_horizon": 2, "pred_horizon": 8, "action_horizon": 4,
                               "low_dim_features": 16, "prediction_type": "sample",
                               "sampler": "ddim", "num_inference_steps": 1})  # fmt: skip
    policy = P.make_policy(config, normalizer, spec)
    params = policy.init(jax.random.key(0))
    codes = params["params"]["noise_gate"]["codes"]
    assert codes.shape[0] == 3 and not np.any(np.asarray(codes))  # zero: a teacher's start
    params["params"]["noise_gate"]["codes"] = jax.random.normal(jax.random.key(1), codes.shape)
    obs = {"state": jnp.zeros((4, 2, 3))}
    cond = policy._encode(params, obs, False)
    x_T = jax.random.normal(jax.random.key(2), (4, 8, 2))
    chunks = [policy.denoiser(params, policy.gated(params, x_T, cond, jnp.full((4,), m)))(
        x_T, jnp.full((4,), 99)) for m in range(3)]  # fmt: skip
    assert min(float(jnp.abs(a - b).max()) for a, b in
               [(chunks[0], chunks[1]), (chunks[1], chunks[2])]) > 1e-4  # fmt: skip
    picked = jnp.argmax(policy.apply(params, x_T, cond, method=PolicyNetwork.mode_logits), -1)
    np.testing.assert_allclose(
        policy.denoiser(params, policy.gated(params, x_T, cond))(x_T, jnp.full((4,), 99)),
        jnp.stack(chunks)[picked, jnp.arange(4)],
        rtol=1e-5,
        atol=1e-6,
    )
    actions = policy.act(params, obs, jax.random.key(3))
    assert actions.shape == (4, 4, 2) and np.all(np.isfinite(np.asarray(actions)))


def test_bfloat16_compute_trains_and_acts(three_modes):
    episodes, normalizer, spec = three_modes
    config = C.PolicyConfig(**{**SMALL, "dtype": "bfloat16"})
    policy = P.make_policy(config, normalizer, spec)
    state, metrics = train_policy(policy, episodes, steps=3, batch_size=8)
    assert np.isfinite(float(metrics["loss"]))
    leaves = jax.tree.leaves(state.params)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # float32 master weights
    actions = policy.act(state.params, {"state": jnp.zeros((2, 1, 3))}, jax.random.key(0))
    assert actions.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(actions)))


def test_text_and_goal_conditioning_from_the_dataset():
    """A language embedding stored beside the observation (RLDS) and a goal key condition the
    policy like any low-dim key; a different instruction changes the actions."""
    from dpjax.data.synthetic import synthetic_episodes

    episodes = synthetic_episodes(12, seed=0, language=True, min_length=6, max_length=8)
    for e in episodes:
        steps = e["steps"]
        steps["observation"]["goal"] = np.tile(
            steps["observation"]["state"][-1:], (len(steps["action"]), 1)
        )
    stats = compute_stats(episodes)
    normalizer = Normalizer.from_stats(stats, ["action", "observation/state", "observation/goal"])
    keys = ("state", "goal", "language_embedding")
    spec = P.observation_spec_from_stats(stats, keys)
    assert spec["language_embedding"].shape == (4,)
    config = C.PolicyConfig(**{**SMALL, "low_dim_keys": keys, "low_dim_features": 8})
    policy = P.make_policy(config, normalizer, spec)
    data = make_window_data(episodes, obs_horizon=1, pred_horizon=4, action_horizon=4,
                            observation_keys=keys)  # fmt: skip
    assert data.observation["language_embedding"].shape[-1] == 4
    params = policy.init(jax.random.key(0))
    obs = {"state": jnp.zeros((1, 1, 3)), "goal": jnp.zeros((1, 1, 3)),
           "language_embedding": jnp.zeros((1, 1, 4))}  # fmt: skip
    other = {**obs, "language_embedding": jnp.ones((1, 1, 4)) * 5}
    a = policy.act(params, obs, jax.random.key(1))
    b = policy.act(params, other, jax.random.key(1))
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_validation_loss_is_the_standard_objective_whatever_the_training_one(three_modes):
    """Runs trained with logit-normal timesteps or min-SNR weighting report the uniform,
    unweighted loss as validation loss, so their curves compare with a uniform run's."""
    episodes, normalizer, spec = three_modes
    standard = P.make_policy(C.PolicyConfig(**SMALL), normalizer, spec)
    params = standard.init(jax.random.key(0))
    data = make_window_data(episodes[:20], obs_horizon=1, pred_horizon=4, action_horizon=4)
    batch = sample_windows(data, jax.random.key(1), 64)
    key = jax.random.key(2)
    reference, _ = standard.loss(params, batch, key)
    assert float(standard.validation_loss(params, batch, key)[0]) == float(reference)
    for sampling, weighting in (("logit_normal", "none"), ("uniform", "min_snr")):
        config = C.PolicyConfig(**SMALL, timestep_sampling=sampling, loss_weighting=weighting)
        other = P.make_policy(config, normalizer, spec)
        trained_with, _ = other.loss(params, batch, key)
        validated, _ = other.validation_loss(params, batch, key)
        assert float(validated) == pytest.approx(float(reference), rel=1e-6)
        assert abs(float(trained_with) - float(reference)) > 1e-4 * float(reference)


def test_observation_noise_perturbs_normalized_low_dim_keys_in_training_only(three_modes):
    episodes, normalizer, spec = three_modes
    config = C.PolicyConfig(**{**SMALL, "obs_noise_std": 0.1})
    policy = P.make_policy(config, normalizer, spec)
    normalized = {"state": jnp.zeros((4096, 1, 3)), "language_embedding": jnp.ones((4096, 3))}
    noisy = policy._add_observation_noise(normalized, jax.random.key(0))
    added = np.asarray(noisy["state"])
    # N(0, 0.1^2) per entry, on the normalized scale; keys the normalizer does not know
    # (step-level conditioning such as language embeddings) pass through untouched.
    assert abs(added.std() - 0.1) < 0.005 and abs(added.mean()) < 0.005
    np.testing.assert_array_equal(noisy["language_embedding"], normalized["language_embedding"])
    # The training loss sees it (another key, another loss); inference never does.
    params = policy.init(jax.random.key(1))
    batch = sample_windows(
        make_window_data(episodes[:20], obs_horizon=1, pred_horizon=4, action_horizon=4),
        jax.random.key(2),
        64,
    )
    quiet = P.make_policy(C.PolicyConfig(**SMALL), normalizer, spec)
    assert float(policy.loss(params, batch, jax.random.key(3))[0]) != pytest.approx(
        float(quiet.loss(params, batch, jax.random.key(3))[0]), rel=1e-6
    )
    observation = {"state": np.asarray(batch["observation"]["state"][:2])}
    key = jax.random.key(4)
    np.testing.assert_array_equal(
        policy.act(params, observation, key), quiet.act(params, observation, key)
    )
    with pytest.raises(ConfigError, match="obs_noise_std"):
        C.PolicyConfig(**{**SMALL, "obs_noise_std": -0.1}).validate()


def test_with_action_horizon_executes_a_prefix_of_the_same_chunk(three_modes):
    _, normalizer, spec = three_modes
    policy = P.make_policy(C.PolicyConfig(**{**SMALL, "kind": "bc"}), normalizer, spec)
    params = policy.init(jax.random.key(0))
    observation = {"state": np.zeros((3, 1, 3), np.float32)}
    full = policy.act(params, observation, jax.random.key(1))
    single = P.with_action_horizon(policy, 1).act(params, observation, jax.random.key(1))
    assert full.shape == (3, 4, 2) and single.shape == (3, 1, 2)
    np.testing.assert_allclose(single, full[:, :1], rtol=1e-6)
