"""PolicyConfig.precision: "bfloat16-matmul" rounds every matmul's operands of the real
networks to bfloat16 (forward and backward), keeps float32 everywhere else, stays close to
float32, and "auto" picks by backend (on a CPU by measuring both), recorded in the run."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import config as config_lib
from dpjax.data import Normalizer, make_window_data, sample_windows
from dpjax.data.features import ArraySpec
from dpjax.data.synthetic import three_mode_episodes
from dpjax.errors import ConfigError, UnknownNameError
from dpjax.nets import precision as precision_lib
from dpjax.nets.precision import resolve_precision, with_precision
from dpjax.policy import make_policy

DENOISERS = {
    "unet1d": config_lib.UNet1DConfig(down_dims=(16,)),
    "transformer": config_lib.TransformerConfig(width=32, num_layers=2, num_heads=2),
    "mlp": config_lib.MLPConfig(hidden_dims=(32, 32)),
}


def policy_for(denoiser: str, precision: str):
    config = config_lib.PolicyConfig(action_dim=2, obs_horizon=2, pred_horizon=8, action_horizon=4,
                                     denoiser=DENOISERS[denoiser], precision=precision)  # fmt: skip
    normalizer = Normalizer(
        center={"action": jnp.zeros(2), "observation/state": jnp.zeros(3)},
        scale={"action": jnp.ones(2), "observation/state": jnp.ones(3)},
    )
    return make_policy(config, normalizer, {"state": ArraySpec((3,), "float32")})


@pytest.fixture(scope="module")
def batch():
    data = make_window_data(three_mode_episodes(8, seed=0), obs_horizon=2, pred_horizon=8,
                            action_horizon=4)  # fmt: skip
    return sample_windows(jax.tree.map(jnp.asarray, data), jax.random.key(0), 16)


def matmul_operand_dtypes(hlo: str) -> list[str]:
    """The operand element types of every dot / convolution in a lowered program."""
    found = []
    for line in hlo.splitlines():
        if re.search(r"stablehlo\.(dot_general|convolution)", line):
            found += re.findall(r"tensor<[0-9x]*x?(bf16|f32)>", line.split("->")[0])
    return found


@pytest.mark.parametrize("denoiser", ["unet1d", "transformer"])  # mlp: in the tests below
def test_bfloat16_matmul_loss_and_gradients_stay_close_to_float32(denoiser, batch):
    exact, rounded = policy_for(denoiser, "float32"), policy_for(denoiser, "bfloat16-matmul")
    params = exact.init(jax.random.key(1))
    key = jax.random.key(2)

    def lowered_and_value(policy):
        lowered = jax.jit(jax.value_and_grad(lambda p: policy.loss(p, batch, key)[0])).lower(params)
        return lowered.as_text(), lowered.compile()(params)

    (hlo32, (loss32, g32)), (hlo16, (loss16, g16)) = map(lowered_and_value, (exact, rounded))
    # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding, errors partly averaging out
    assert abs(float(loss16 - loss32)) < 2e-2 * abs(float(loss32))
    assert float(loss16) != float(loss32)  # it did compute something else
    flat32, flat16 = jax.tree.leaves(g32), jax.tree.leaves(g16)
    error = max(float(jnp.abs(a - b).max()) for a, b in zip(flat32, flat16, strict=True))
    scale = max(float(jnp.abs(a).max()) for a in flat32)
    assert 0 < error < 5e-2 * scale
    # parameters, gradients and the loss stay float32
    assert all(g.dtype == jnp.float32 for g in flat16) and loss16.dtype == jnp.float32
    # every matmul / conv of the training step (forward and backward) reads bfloat16 operands
    assert set(matmul_operand_dtypes(hlo16)) == {"bf16"}
    assert set(matmul_operand_dtypes(hlo32)) == {"f32"}


@pytest.mark.parametrize("dims, shapes", [
    ((((2,), (0,)), ((), ())), ((3, 5, 8), (8, 4))),  # a Dense on a sequence
    ((((0, 1), (0, 1)), ((), ())), ((3, 5, 8), (3, 5, 4))),  # ... and its weight gradient
    ((((2, 3), (2, 3)), ((0,), (0,))), ((2, 3, 4, 5), (2, 6, 4, 5))),  # batch + 2 contracted
    ((((2,), (3,)), ((0, 1), (0, 2))), ((4, 2, 6, 8), (4, 3, 2, 6))),  # attention's gradients
])  # fmt: skip
def test_bfloat16_matmul_differentiates_products_xla_cpu_lacks(dims, shapes):
    # XLA:CPU has no bf16 x bf16 -> f32 dot over several contracted or non-leading batch
    # axes; with_precision merges them and must compute the same product and gradients
    keys = jax.random.split(jax.random.key(0), len(shapes))
    a, b = (jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True))
    loss = lambda fn: lambda a, b: jnp.sum(jnp.sin(fn(a, b)))
    product = lambda a, b: jax.lax.dot_general(a, b, dims)
    exact = jax.jit(jax.value_and_grad(loss(product), argnums=(0, 1)))(a, b)
    rounded = jax.jit(jax.value_and_grad(loss(with_precision(product, "bfloat16-matmul")),
                                         argnums=(0, 1)))(a, b)  # fmt: skip
    for x, y in zip(jax.tree.leaves(exact), jax.tree.leaves(rounded), strict=True):
        assert x.shape == y.shape and y.dtype == jnp.float32
        assert 0 < float(jnp.abs(x - y).max()) < 0.03 * float(jnp.abs(x).max()) + 0.03


def test_bfloat16_matmul_samples_like_float32():
    exact, rounded = policy_for("mlp", "float32"), policy_for("mlp", "bfloat16-matmul")
    params = exact.init(jax.random.key(1))
    observation = {"state": np.zeros((4, 2, 3), np.float32)}
    a = exact.act(params, observation, jax.random.key(0))
    b = rounded.act(params, observation, jax.random.key(0))
    assert 0 < float(np.abs(a - b).max()) < 0.1 * float(np.abs(a).max())


def test_auto_picks_by_backend_and_bad_names_are_errors(monkeypatch):
    assert resolve_precision("auto", "tpu") == resolve_precision("auto", "gpu") == "bfloat16-matmul"
    # on a CPU the measured speed-up decides, with a margin against noise
    monkeypatch.setattr(precision_lib, "cpu_bfloat16_speedup", lambda: 2.2)
    assert resolve_precision("auto", "cpu") == "bfloat16-matmul"
    monkeypatch.setattr(precision_lib, "cpu_bfloat16_speedup", lambda: 1.1)
    assert resolve_precision("auto", "cpu") == "float32"
    monkeypatch.setattr(precision_lib, "cpu_bfloat16_speedup", lambda: 0.7)
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("float32", "tpu") == "float32"
    with pytest.raises(UnknownNameError, match="precision"):
        resolve_precision("fp8")
    with pytest.raises(UnknownNameError, match="precision"):
        config_lib.PolicyConfig(precision="half").validate()
    with pytest.raises(ConfigError, match="needs dtype='float32'"):
        config_lib.PolicyConfig(dtype="bfloat16", precision="bfloat16-matmul").validate()
    # float32 (resolved) leaves the function itself
    fn = lambda x: x
    assert with_precision(fn, "float32") is fn
    assert precision_lib.PRECISIONS == ("float32", "bfloat16-matmul", "auto")


def test_the_cpu_measurement_times_both_forms_once_per_process(monkeypatch):
    precision_lib.cpu_bfloat16_speedup.cache_clear()
    calls = []
    real = precision_lib.with_precision
    monkeypatch.setattr(precision_lib, "with_precision",
                        lambda fn, p: calls.append(p) or real(fn, p))  # fmt: skip
    speedup = precision_lib.cpu_bfloat16_speedup()
    assert np.isfinite(speedup) and 0.05 < speedup < 50
    assert calls == ["bfloat16-matmul"]  # the bfloat16 form is the one with_precision runs
    assert precision_lib.cpu_bfloat16_speedup() == speedup and calls == ["bfloat16-matmul"]


@pytest.mark.parametrize("speedup, expected", [(2.2, "bfloat16-matmul"), (0.7, "float32")])
def test_auto_is_resolved_once_and_recorded_in_the_run(tmp_path, monkeypatch, speedup, expected):
    from dpjax.data import write_dataset
    from dpjax.policy import load_policy
    from dpjax.training.loop import train

    monkeypatch.setattr(precision_lib, "cpu_bfloat16_speedup", lambda: speedup)
    write_dataset(three_mode_episodes(12, seed=1), tmp_path / "data", name="three_modes")
    policy = config_lib.PolicyConfig(action_dim=2, obs_horizon=2, pred_horizon=4,
                                     action_horizon=2, denoiser=DENOISERS["mlp"],
                                     precision="auto", num_inference_steps=2)  # fmt: skip
    config = config_lib.TrainConfig(dataset=str(tmp_path / "data"), policy=policy, batch_size=8,
                                    num_steps=2, val_fraction=0.0)  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    # a resume or an evaluation on another machine computes what was trained
    monkeypatch.setattr(precision_lib, "cpu_bfloat16_speedup", lambda: 1 / speedup)
    loaded, _, _ = load_policy(tmp_path / "run")
    assert loaded.config.precision == expected


def test_a_run_trains_and_reloads_with_bfloat16_matmul(tmp_path):
    from dpjax.data import write_dataset
    from dpjax.policy import load_policy
    from dpjax.training.loop import train

    write_dataset(three_mode_episodes(20, seed=1), tmp_path / "data", name="three_modes")
    policy = config_lib.PolicyConfig(action_dim=2, obs_horizon=2, pred_horizon=4,
                                     action_horizon=2, denoiser=DENOISERS["mlp"],
                                     precision="bfloat16-matmul", num_inference_steps=4)  # fmt: skip
    config = config_lib.TrainConfig(dataset=str(tmp_path / "data"), policy=policy, batch_size=16,
                                    num_steps=6, val_fraction=0.1, val_batches=1)  # fmt: skip
    summary = train(config, tmp_path / "run", progress=False)
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["val_loss"])
    loaded, params, _ = load_policy(tmp_path / "run")
    assert loaded.config.precision == "bfloat16-matmul"
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(policy)
