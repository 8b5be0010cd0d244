"""`dpjax export`: a jax.export file that runs with jax alone and gives load_policy's actions."""

import json
import os
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from dpjax import cli
from dpjax.envs.collect import collect_demos
from dpjax.export import load_exported
from dpjax.policy import load_policy

sys.path.insert(0, os.path.dirname(__file__))
from test_evaluate_cli import tiny_run  # noqa: E402

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return collect_demos(tmp_path_factory.mktemp("export") / "data", 6, 0, progress=False)


def observation(policy, batch, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape).astype(np.float32)
            for k, v in policy.example_observation(batch).items()}  # fmt: skip


# The UNet's few-rows matmul form is chosen at run time under a symbolic batch: batch 1 and 8
# take different forms, and both must match the jitted policy bit for bit.
@pytest.mark.parametrize("denoiser", ["mlp", "unet1d"])
def test_exported_policy_runs_with_jax_alone_and_matches_load_policy(data, tmp_path, denoiser):
    overrides = (
        ["policy.denoiser=unet1d", "policy.denoiser.down_dims=(8,16)"]
        if denoiser == "unet1d"
        else []
    )
    run = tiny_run(data, tmp_path / "run", *overrides)
    out = tmp_path / "policy.dpjax"
    assert cli.main(["export", str(run), "--out", str(out), "--steps", "3"]) == 0
    policy, params, _ = load_policy(run)
    cases = []
    for batch in (1, 8):
        obs = observation(policy, batch, batch)
        key = jax.random.key(batch)
        expected = np.asarray(policy.act(params, obs, key, num_inference_steps=3))
        cases.append(({k: v.tolist() for k, v in obs.items()},
                      np.asarray(jax.random.key_data(key)).tolist(), expected.tolist()))  # fmt: skip
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    # A fresh interpreter: the loader pulls in neither flax, orbax nor dpjax's training code.
    code = f"""
import json, sys, numpy as np
from dpjax.export import load_exported
policy = load_exported({str(out)!r})
for obs, key, expected in json.load(open({str(tmp_path / "cases.json")!r})):
    actions = policy({{k: np.asarray(v, np.float32) for k, v in obs.items()}}, key)
    assert np.array_equal(actions, np.asarray(expected, np.float32)), np.abs(actions - expected).max()
bad = [m for m in ("flax", "orbax", "optax", "dpjax.training", "dpjax.policy") if m in sys.modules]
assert not bad, bad
print("ok", policy.metadata["num_inference_steps"], policy.metadata["batch"])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", "3", "None"]


def test_fixed_batch_bad_input_and_corrupt_files_are_named(data, tmp_path, capsys):
    run = tiny_run(data, tmp_path / "run")
    out = tmp_path / "policy.dpjax"
    assert cli.main(["export", str(run), "--out", str(out), "--batch", "2"]) == 0
    policy = load_exported(out)
    key = np.zeros(2, np.uint32)
    assert policy(observation_like(policy, 2), key).shape == (
        2,
        policy.metadata["action_horizon"],
        2,
    )
    with pytest.raises(ValueError, match=r"expected shape \(2, 2, 6\), got \(3, 2, 6\)"):
        policy(observation_like(policy, 3), key)
    with pytest.raises(ValueError, match=r"missing keys \['state'\]"):
        policy({}, key)
    # A truncated file, a zip of something else: named, and an export never half-replaces one.
    good = out.read_bytes()
    (tmp_path / "cut.dpjax").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a dpjax exported policy"):
        load_exported(tmp_path / "cut.dpjax")
    with zipfile.ZipFile(tmp_path / "other.dpjax", "w") as z:
        z.writestr("metadata.json", json.dumps({"format": "something"}))
        z.writestr("policy.stablehlo", b"")
        z.writestr("params.npz", b"")
    with pytest.raises(ValueError, match="not a dpjax exported policy"):
        load_exported(tmp_path / "other.dpjax")
    assert cli.main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "dpjax export: error:" in capsys.readouterr().err and out.read_bytes() == good
    # The latency benchmark reads the file with jax alone and prints its table.
    sys.path.insert(0, BENCHMARKS)
    import exported_latency

    assert exported_latency.main([str(out), "--seconds", "0.05"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 2 |")]
    assert len(rows) == 1 and float(rows[0].split("|")[3]) > 0


def observation_like(policy, batch):
    spec = policy.metadata["observation_spec"]
    horizon = policy.metadata["obs_horizon"]
    return {k: np.zeros((batch, horizon, *s["shape"]), np.float32) for k, s in spec.items()}
