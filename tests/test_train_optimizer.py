"""The optimizer: dpjax's gradient clipping (optax's maths in a form XLA:CPU runs twice as
fast), the EMA warmup and the learning-rate schedule against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import config as C
from dpjax.errors import ConfigError
from dpjax.training import step as T


def _tree(scale: float):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "kernel": scale * jax.random.normal(keys[0], (4, 5, 3)),
        "bias": scale * jax.random.normal(keys[1], (3,)),
        "dense": {"w": scale * jax.random.normal(keys[2], (7, 2))},
    }


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_clip_matches_optax(scale):
    grads = _tree(scale)
    ours, state = T.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    ref, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
    norm = float(optax.tree.norm(ours))
    assert norm == pytest.approx(min(1.0, float(optax.tree.norm(grads))), rel=1e-5)
    if float(optax.tree.norm(grads)) < 1.0:  # below the limit gradients pass unchanged
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), ours, grads)
    assert state == optax.clip_by_global_norm(1.0).init(grads)  # same (empty) state


def test_clip_propagates_nan_and_rejects_a_non_positive_limit():
    grads = _tree(1.0)
    grads["bias"] = grads["bias"].at[0].set(jnp.nan)
    ours, _ = T.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert all(bool(jnp.isnan(a).all()) for a in jax.tree.leaves(ours))
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="max_grad_norm"):
            T.clip_by_global_norm(bad)


def test_optimizer_trajectory_matches_the_optax_chain():
    """Six AdamW steps, gradients alternately above and below the limit, equal optax's chain.

    Alternating matters: Adam is invariant to a constant gradient scale, so only a mix of
    clipped and unclipped steps makes the trajectory depend on the clip being right."""
    config = C.OptimConfig(learning_rate=1e-2, warmup_steps=2, max_grad_norm=0.5)
    ours = T.make_optimizer(config, 10)
    ref = T.make_optimizer(config, 10, clip=optax.clip_by_global_norm)
    params = _tree(1.0)
    p_ours, p_ref = params, params
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)  # checkpoints stay compatible
    for step in range(6):
        grads = _tree(3.0 + step if step % 2 else 0.01)  # clipped, then passed unchanged
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    deltas = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), p_ref, params)
    moved = max(jax.tree.leaves(deltas))
    assert moved > 1e-3  # the trajectory really moved
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_ours, p_ref)


def test_ema_decay_follows_diffusion_policys_warmup_formula():
    """EMAModel.get_decay of Diffusion Policy (update_after_step 0): with s = step - 1,
    0 for s <= 0, else min(1 - (1 + s / inv_gamma)^-power, max_decay)."""
    config = C.OptimConfig()  # power 0.75, inv_gamma 1, max 0.9999

    def formula(step: int) -> float:
        s = step - 1
        return 0.0 if s <= 0 else min(1.0 - (1.0 + s) ** -0.75, 0.9999)

    steps = [0, 1, 2, 3, 10, 100, 1000, 10_000, 300_000]
    ours = [float(T.ema_decay(config, jnp.asarray(s))) for s in steps]
    np.testing.assert_allclose(ours, [formula(s) for s in steps], rtol=1e-6, atol=1e-7)
    assert ours[-1] == pytest.approx(0.9999)  # capped
    slower = C.OptimConfig(ema_power=2 / 3, ema_inv_gamma=2.0)
    assert float(T.ema_decay(slower, jnp.asarray(11))) == pytest.approx(1 - 6.0 ** (-2 / 3))


def test_learning_rate_is_linear_warmup_then_cosine_to_zero():
    config = C.OptimConfig(learning_rate=3e-4, warmup_steps=100)
    schedule = T.learning_rate_schedule(config, 1000)

    def formula(s: int) -> float:
        if s < 100:
            return 3e-4 * s / 100
        return 3e-4 * 0.5 * (1 + np.cos(np.pi * (s - 100) / 900))

    steps = [0, 1, 50, 99, 100, 101, 400, 550, 999, 1000]
    np.testing.assert_allclose([float(schedule(s)) for s in steps],
                               [formula(s) for s in steps], rtol=1e-5, atol=1e-9)  # fmt: skip
    # A run shorter than its warmup still reaches its peak learning rate before it ends.
    short = T.learning_rate_schedule(config, 10)
    assert float(short(9)) == pytest.approx(3e-4)
