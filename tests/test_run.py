"""Training runs end to end: configs, run directory, checkpoints, resume, devices, CLI."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import config as config_lib
from dpjax.cli import main as cli_main
from dpjax.config import OptimConfig, PolicyConfig, TrainConfig
from dpjax.data import write_dataset
from dpjax.data.synthetic import three_mode_episodes
from dpjax.errors import ConfigError, UnknownNameError
from dpjax.policy import load_policy
from dpjax.training.logs import read_metrics
from dpjax.training.loop import train


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "three_modes"
    write_dataset(three_mode_episodes(40, seed=1), path, name="three_modes")
    return path


def tiny_config(dataset_dir, **overrides) -> TrainConfig:
    policy = PolicyConfig(
        action_dim=2,
        obs_horizon=2,
        pred_horizon=4,
        action_horizon=2,
        denoiser=config_lib.MLPConfig(hidden_dims=(64, 64)),
        low_dim_features=8,
        num_inference_steps=4,
    )
    base = TrainConfig(
        dataset=str(dataset_dir),
        policy=policy,
        optim=OptimConfig(warmup_steps=2),
        batch_size=16,
        num_steps=12,
        log_every=4,
        eval_every=6,
        checkpoint_every=6,
        val_fraction=0.1,
        val_batches=2,
    )
    return dataclasses.replace(base, **overrides)


def params_equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_overrides_parse_by_field_type(dataset_dir):
    config = tiny_config(dataset_dir)
    new = config_lib.apply_overrides(
        config,
        [
            "num_steps=7",
            "policy.denoiser=unet1d",
            "policy.denoiser.down_dims=(8, 16)",
            "policy.clip_sample=none",
            "optim.learning_rate=3e-4",
            "policy.bc_head.num_hypotheses=3",
            "num_devices=2",
        ],
    )
    assert new.num_steps == 7 and new.policy.denoiser == config_lib.UNet1DConfig(down_dims=(8, 16))
    assert new.policy.clip_sample is None and new.policy.bc_head.num_hypotheses == 3
    assert new.optim.learning_rate == 3e-4 and new.num_devices == 2
    # Naming the denoiser it already is keeps its sizes; another name takes that one's defaults.
    assert config_lib.apply_overrides(new, ["policy.denoiser=unet1d"]) == new
    tf = config_lib.apply_overrides(new, ["policy.denoiser=transformer",
                                          "policy.denoiser.causal=true"])  # fmt: skip
    assert tf.policy.denoiser == config_lib.TransformerConfig(causal=True)
    with pytest.raises(ConfigError, match=r"'policy.denoiser.causal'; valid fields here: "
                       r"down_dims, .*unet1d denoiser's; set policy.denoiser=NAME"):  # fmt: skip
        config_lib.apply_overrides(new, ["policy.denoiser.causal=true"])
    with pytest.raises(UnknownNameError, match="unknown denoiser 'mpl'; valid: mlp"):
        config_lib.apply_overrides(new, ["policy.denoiser=mpl"])
    with pytest.raises(ConfigError, match="unknown config field 'policy.denoisr'.*denoiser"):
        config_lib.apply_overrides(config, ["policy.denoisr=mlp"])
    with pytest.raises(ConfigError, match="expected int"):
        config_lib.apply_overrides(config, ["num_steps=ten"])
    with pytest.raises(ConfigError, match="field=value"):
        config_lib.apply_overrides(config, ["num_steps"])
    round_trip = config_lib.from_dict(TrainConfig, json.loads(json.dumps(config_lib.to_dict(new))))
    assert round_trip == new


def test_a_flat_policy_config_of_an_older_run_loads_nested():
    """Runs written before the per-denoiser configs stored the sizes flat beside the denoiser's
    name: each goes to the denoiser that reads it, the BC head keeps its own."""
    flat = config_lib.to_dict(PolicyConfig())
    flat.pop("bc_head")
    flat.update(denoiser="transformer", width=64, num_layers=2, num_heads=2, causal=True,
                hidden_dims=[32, 32], down_dims=[8, 16], kernel_size=3, n_groups=4,
                step_embed_dim=16, num_hypotheses=3)  # fmt: skip
    policy = config_lib.from_dict(PolicyConfig, flat)
    assert policy.denoiser == config_lib.TransformerConfig(64, 2, 2, True)
    assert policy.bc_head == config_lib.BCHeadConfig((32, 32), 3)
    flat["denoiser"] = "mlp"
    assert config_lib.from_dict(PolicyConfig, flat).denoiser == config_lib.MLPConfig((32, 32), 16)
    flat["denoiser"] = "unet1d"
    unet = config_lib.from_dict(PolicyConfig, flat).denoiser
    assert unet == config_lib.UNet1DConfig((8, 16), 3, 4, 16)
    with pytest.raises(UnknownNameError, match="unknown denoiser 'resnet'"):
        config_lib.from_dict(PolicyConfig, {**flat, "denoiser": "resnet"})
    nested = config_lib.to_dict(PolicyConfig())
    with pytest.raises(UnknownNameError, match="unknown PolicyConfig.denoiser 'mpl'"):
        config_lib.from_dict(PolicyConfig, {**nested, "denoiser": {"name": "mpl"}})


def test_each_denoiser_config_names_its_network_and_its_fields():
    """Every denoiser of dpjax.nets has a config of the same name whose fields it takes."""
    from dpjax.nets import DENOISERS

    assert set(config_lib.DENOISER_CONFIGS) == set(DENOISERS)
    for name, cls in config_lib.DENOISER_CONFIGS.items():
        module_fields = {f.name for f in dataclasses.fields(DENOISERS[name])}
        assert {f.name for f in dataclasses.fields(cls)} <= module_fields, name


def test_train_writes_run_and_restores_identical_policy(dataset_dir, tmp_path):
    run_dir = tmp_path / "run"
    summary = train(tiny_config(dataset_dir), run_dir, progress=False)
    assert summary["final_step"] == 12 and np.isfinite(summary["loss"])
    assert (run_dir / "config.json").exists()
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        6,
        12,
    ]
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [4, 6, 8, 12]
    assert "val_loss" in metrics[-1] and "learning_rate" in metrics[0]

    policy, params, metadata = load_policy(run_dir)
    observation = {"state": np.zeros((5, 2, 3), np.float32)}
    first = policy.act(params, observation, jax.random.key(0))
    policy2, params2, _ = load_policy(run_dir)
    np.testing.assert_array_equal(first, policy2.act(params2, observation, jax.random.key(0)))
    assert metadata["config"]["num_steps"] == 12


def test_resume_matches_uninterrupted_run(dataset_dir, tmp_path):
    config = tiny_config(dataset_dir, checkpoint_every=4)
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "interrupted", progress=False, stop_at_step=5)
    summary = train(config, tmp_path / "interrupted", resume=True, progress=False)
    assert summary["start_step"] == 5 and summary["final_step"] == 12
    _, a, _ = load_policy(tmp_path / "straight")
    _, b, _ = load_policy(tmp_path / "interrupted")
    assert params_equal(a, b)


def test_existing_run_is_refused_and_cli_errors_are_one_line(dataset_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        textwrap.dedent(f"""
        from dpjax.config import TrainConfig
        from dpjax.config import MLPConfig, PolicyConfig
        CONFIG = TrainConfig(dataset={str(dataset_dir)!r}, policy=PolicyConfig(
            action_dim=2, obs_horizon=1, pred_horizon=2, action_horizon=2,
            denoiser=MLPConfig(hidden_dims=(16,)), low_dim_features=None, num_inference_steps=2),
            batch_size=8, num_steps=2, log_every=1, eval_every=2, checkpoint_every=2)
    """)
    )
    args = ["train", str(config_file), "--out", str(run_dir)]
    assert cli_main(args) == 0
    assert cli_main(args) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert cli_main([*args, "--set", "batch_sizes=4"]) == 2
    err = capsys.readouterr().err
    assert "unknown config field 'batch_sizes'" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["train", str(tmp_path / "nope.py")]) == 2
    assert cli_main(["train", "--resume", str(run_dir), "--set", "num_steps=3"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["num_steps"] == 3


EQUIVALENCE_SCRIPT = """
import dataclasses, jax, jax.numpy as jnp, numpy as np
assert jax.device_count() == 8, jax.devices()
from dpjax import config as C
from dpjax import policy as P
from dpjax.training import step as T
from dpjax.data import Normalizer, compute_stats, make_window_data
from dpjax.data.synthetic import three_mode_episodes
episodes = three_mode_episodes(30, seed=0)
stats = compute_stats(episodes)
normalizer = Normalizer.from_stats(stats, ["action", "observation/state"])
config = C.PolicyConfig(action_dim=2, obs_horizon=2, pred_horizon=8, action_horizon=4,
                        denoiser=C.MLPConfig(hidden_dims=(64, 64)), low_dim_features=8)
policy = P.make_policy(config, normalizer, P.observation_spec_from_stats(stats, ["state"]))
host_data = make_window_data(episodes, obs_horizon=2, pred_horizon=8, action_horizon=4)
optim = C.OptimConfig(learning_rate=1e-3, warmup_steps=2)
results = []
for devices in (1, 8):
    mesh = T.make_mesh(devices)
    tx = T.make_optimizer(optim, 6)
    state = T.init_train_state(policy.init(jax.random.key(0)), tx, jax.random.key(1))
    state, data = T.put_replicated(state, mesh), T.put_replicated(host_data, mesh)
    step = T.make_train_step(policy.loss, tx, optim, mesh, 32, 6)
    if devices == 8:  # the compiled program really splits the batch and sums the gradients
        hlo = step.lower(state, data).compile().as_text()
        print("ALLREDUCE", hlo.count("all-reduce("), "LOCALBATCH", hlo.count("f32[4,8,2]"),
              "GLOBALBATCH", hlo.count("f32[32,8,2]"))
    for _ in range(6):
        state, metrics = step(state, data)
    results.append(jax.device_get(state.params))
diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), *results))
scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(results[0]))
moved = jax.tree.leaves(jax.tree.map(
    lambda a, b: float(np.abs(a - b).max()), results[0], jax.device_get(policy.init(jax.random.key(0)))))
print("MAXDIFF", max(diffs), "SCALE", scale, "MOVED", max(moved))
"""


def test_8_devices_match_1_device():
    """Same global batch on a 1-device and an 8-device mesh -> the same parameters."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run(
        [sys.executable, "-c", EQUIVALENCE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("MAXDIFF"))
    _, maxdiff, _, scale, _, moved = line.split()
    assert float(moved) > 1e-3  # training really changed the parameters
    assert float(maxdiff) < 1e-5 * max(1.0, float(scale)), line
    # Equal parameters would also come from a step that never shards: the 8-device program
    # holds per-device batches of 32 / 8 windows (actions (4, 8, 2)) and all-reduces.
    line = next(x for x in out.stdout.splitlines() if x.startswith("ALLREDUCE"))
    _, all_reduces, _, local, _, global_ = line.split()
    assert int(all_reduces) > 0 and int(local) > 0, line


def test_unknown_config_lists_the_shipped_configs():
    names = config_lib.config_names()
    assert names == ["multimodal_bc", "multimodal_diffusion", "pusht_image", "pusht_keypoints"]
    with pytest.raises(ConfigError, match="shipped configs: multimodal_bc, multimodal_diffusion"):
        config_lib.load_config_file("no_such_experiment")
