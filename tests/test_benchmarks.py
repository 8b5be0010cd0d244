"""The performance benchmarks run end to end at a tiny size, so they cannot rot.

Each benchmark's `main(argv)` prints a Markdown table and writes JSON; here with the seed MLP,
one or two steps and no timing budget (seconds, not minutes). The UNet sizes are what the
benchmarks exist for, but compiling them takes longer than this whole file may.
"""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from dpjax.commands import bench

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_test_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, argv: list[str], tmp_path, capsys) -> tuple[dict, str]:
    out = tmp_path / f"{name}.json"
    assert load(name).main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "# machine:" in table and "cores" in table and "jax" in table
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name and payload["machine"]["jax"]
    return payload, table


def test_dpjax_bench_lists_the_performance_benchmarks():
    assert {"sampling", "training", "roofline", "vs_lerobot"} <= set(bench.available())
    assert "_common" not in bench.available()


def test_sampling(tmp_path, capsys):
    argv = ["--denoisers", "mlp", "--methods", "ddim", "--steps", "1", "2",
            "--dtypes", "float32", "bfloat16", "--seconds", "0"]  # fmt: skip
    payload, table = run("sampling", argv, tmp_path, capsys)
    rows = payload["rows"]
    assert [(r["steps"], r["dtype"]) for r in rows] == [
        (1, "float32"), (1, "bfloat16"), (2, "float32"), (2, "bfloat16")
    ]  # fmt: skip
    for r in rows:
        assert r["latency_ms"] > 0 and r["min_ms"] <= r["latency_ms"] and r["compile_s"] >= 0
        assert r["evaluations"] == r["steps"] and r["batch"] == 1
    assert rows[1]["max_abs_err"] < 0.1 and "max_abs_err" not in rows[0]
    assert "| mlp | ddim | 2 | 2 | 1 | bfloat16 |" in table


def test_training(tmp_path, capsys):
    argv = ["--denoisers", "mlp", "--batches", "8", "--seconds", "0", "--clips", "dpjax", "optax",
            "--precisions", "bfloat16-matmul"]  # fmt: skip
    payload, table = run("training", argv, tmp_path, capsys)
    assert [(r["clip"], r["precision"]) for r in payload["rows"]] == [
        ("dpjax", "bfloat16-matmul"), ("optax", "bfloat16-matmul"),
    ]  # fmt: skip
    for row in payload["rows"]:
        assert row["batch"] == 8 and row["devices"] == 1 and row["steps_per_s"] > 0
        assert row["samples_per_s"] == pytest.approx(8 * row["steps_per_s"])
    assert "| mlp |" in table and "samples/s" in table and "| optax | bfloat16-matmul |" in table


def test_training_update_only(tmp_path, capsys):
    argv = ["--denoisers", "mlp", "--seconds", "0", "--clips", "dpjax", "optax", "--update-only"]
    payload, table = run("training", argv, tmp_path, capsys)
    assert [r["clip"] for r in payload["rows"]] == ["dpjax", "optax"]
    assert all(0 < r["min_update_ms"] <= r["update_ms"] for r in payload["rows"])
    assert "clip + AdamW + EMA" in table


def test_matmul_table_times_each_form_and_names_the_one_dpjax_uses():
    module = load("nets_primitives")
    rows = list(module.matmul_rows(0.0, weights=[(64, 32)], row_counts=[4, 200]))
    assert [(k, co, m) for k, co, m, _, _ in rows] == [(64, 32, 4), (64, 32, 200)]
    for _, _, _, ms, _ in rows:
        assert set(ms) == set(module._matmul_forms()) and min(ms.values()) > 0
    assert [used for *_, used in rows] == ["(W x rows^T)^T", "rows x W^T"]


def test_roofline(tmp_path, capsys):
    argv = ["--denoisers", "mlp", "--batches", "1", "--train-batches", "--steps", "1", "2",
            "--seconds", "0", "--bandwidth-mb", "8"]  # fmt: skip
    payload, table = run("roofline", argv, tmp_path, capsys)
    assert payload["peaks"]["peak_gflops_float32"] > 0 and payload["peaks"]["bandwidth_gbs"] > 0
    (row,) = payload["rows"]
    assert row["gflop"] > 0 and row["weight_mb"] > 0
    assert row["bound"] in ("weights", "FLOPs", "weights (in cache)")
    assert (row["of_limit"] is None) == (row["bound"] == "weights (in cache)")
    assert "GFLOP/s" in table


def test_roofline_leaves_cached_weights_without_a_dram_limit():
    module = load("roofline")
    peaks = {"peak_gflops_float32": 100.0, "bandwidth_gbs": 10.0, "cache_bytes": 32 << 20}
    args = ("sample", "x", 1, 1e6, 0.0)  # 1 MFLOP: 10 us of arithmetic
    big = module._row(*args, 100e6, 0.02, peaks, bound_by_memory=True)  # 10 ms to read
    assert big["bound"] == "weights" and big["of_limit"] == pytest.approx(0.5)
    small = module._row(*args, 2e6, 0.0001, peaks, bound_by_memory=True)
    assert small["bound"] == "weights (in cache)" and small["of_limit"] is None
    unknown = module._row(*args, 2e6, 0.0004, {**peaks, "cache_bytes": None}, True)
    assert unknown["bound"] == "weights" and unknown["of_limit"] == pytest.approx(0.5)


def test_vs_lerobot_without_lerobot_says_how_to_install(monkeypatch, capsys):
    module = load("vs_lerobot")
    monkeypatch.setattr(module, "import_lerobot", lambda: (None, "ImportError: no lerobot"))
    assert module.main(["--sample", "1x10"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'dpjax[lerobot]'" in err and len(err.strip().splitlines()) == 1


def test_vs_lerobot_rejects_unmatched_cases():
    with pytest.raises(SystemExit):
        load("vs_lerobot").main(["--sample", "1x7"])


def _tiny_unet_params(down_dims=(16, 32)):
    """A dpjax ConditionalUnet1D parameter tree in the PushT shape, as numpy (nothing compiled)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dpjax.nets.unet1d import ConditionalUnet1D

    model = ConditionalUnet1D(action_dim=2, cond_dim=36, down_dims=down_dims)
    args = (jnp.zeros((1, 16, 2)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 36)))
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype("f4"), shapes)


def _leaf_count(tree) -> int:
    import jax

    return len(jax.tree.leaves(tree))


def test_vs_lerobot_unet_names_reject_a_missing_or_extra_leaf():
    """The dpjax -> LeRobot UNet conversion names what does not match (needs neither LeRobot
    nor torch: it checks the names before it imports torch)."""
    module = load("vs_lerobot")
    params = _tiny_unet_params()
    names = module.lerobot_unet_names(params)
    assert len(names) == _leaf_count(params)
    assert names[("Upsample1D_0", "kernel")] == ("up_modules.0.2.weight", "conv_transpose")
    assert names[("ConditionalResidualBlock1D_0", "Dense_0", "kernel")][0] == (
        "down_modules.0.0.cond_encoder.1.weight"
    )
    assert names[("ConditionalResidualBlock1D_6", "Conv1D_0", "bias")][0] == (
        "up_modules.0.0.residual_conv.bias"
    )

    del params["params"]["Upsample1D_0"]["bias"]
    with pytest.raises(ValueError, match=r"missing \(LeRobot needs them\): Upsample1D_0/bias"):
        module.dpjax_unet_to_lerobot_state_dict(params)

    tree = _tiny_unet_params()["params"]  # without the "params" collection: also accepted
    residual = tree["ConditionalResidualBlock1D_0"]["Conv1D_0"]
    tree["ConditionalResidualBlock1D_1"]["Conv1D_0"] = residual  # block 1 keeps its width
    extra = ", ".join(
        f"ConditionalResidualBlock1D_1/Conv1D_0/{leaf}" for leaf in ("bias", "kernel")
    )
    with pytest.raises(ValueError, match=f"no LeRobot counterpart: {extra}$"):
        module.lerobot_unet_names(tree)
    with pytest.raises(ValueError, match="no LeRobot counterpart"):
        module.dpjax_unet_to_lerobot_state_dict(tree)


def test_vs_lerobot_state_dict_moves_the_axes_as_torch_lays_them_out():
    pytest.importorskip("torch")
    module = load("vs_lerobot")
    params = _tiny_unet_params()
    state = module.dpjax_unet_to_lerobot_state_dict(params)
    p = params["params"]
    assert len(state) == _leaf_count(params)
    dense = p["TimestepEmbedding_0"]["Dense_0"]["kernel"]  # (in, out) -> Linear (out, in)
    assert (state["diffusion_step_encoder.1.weight"].numpy() == dense.T).all()
    conv = p["ConditionalResidualBlock1D_0"]["Conv1DBlock_0"]["Conv1D_0"]["kernel"]  # (o, k, i)
    torch_conv = state["down_modules.0.0.conv1.block.0.weight"].numpy()  # Conv1d (o, i, k)
    assert torch_conv.shape == (16, 2, 5) and (torch_conv == conv.transpose(0, 2, 1)).all()
    up = p["Upsample1D_0"]["kernel"]  # (o, k, i), PyTorch's taps -> ConvTranspose1d (i, o, k)
    assert (state["up_modules.0.2.weight"].numpy() == up.transpose(2, 0, 1)).all()
    scale = p["Conv1DBlock_0"]["GroupNorm_0"]["scale"]
    assert (state["final_conv.0.block.1.weight"].numpy() == scale).all()


def test_vs_lerobot_parity_unet_matches_lerobot_with_the_same_weights(capsys):
    """`dpjax bench vs_lerobot --parity` at a tiny width: dpjax's UNet (both conv paths) and
    LeRobot's, with the same weights, agree to float32 precision. Skips without LeRobot."""
    module = load("vs_lerobot")
    lr, reason = module.import_lerobot()
    if lr is None:
        pytest.skip(f"LeRobot does not import ({reason}); pip install 'dpjax[lerobot]'")
    from dpjax.cli import main as cli_main

    # n_groups 4: the residual blocks' groups, while the final block keeps the reference's 8
    argv = ["bench", "vs_lerobot", "--parity", "--down-dims", "16", "32", "--n-groups", "4",
            "--parity-batches", "2"]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    summary = re.search(r"^# max relative error (\S+), tolerance (\S+): PASS$", out, re.M)
    assert summary, out[-2000:]
    assert float(summary.group(2)) == module.PARITY_TOLERANCE
    assert float(summary.group(1)) < module.PARITY_TOLERANCE
    rows = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| ")]
    assert rows[0][-1] == "relative error" and len(rows) == 1 + 2 * 3
    assert {row[1] for row in rows[1:]} == {"matmul", "lax"}
    assert all(float(row[-1]) < module.PARITY_TOLERANCE for row in rows[1:])


@pytest.mark.parametrize(
    "name, argv, expected",
    [
        ("collect_datasets", ["--tasks", "multimodal", "--episodes", "2"], "multimodal"),
        ("expert_success", ["--tasks", "multimodal", "--episodes", "2"], "multimodal"),
        ("pusht_expert", ["--episodes", "1"], "success rate"),
        ("checkpoint", ["--denoisers", "mlp", "--repeats", "1"], "| mlp |"),
        ("sampler_latency", ["--methods", "ddim", "--steps", "1", "--batches", "1"], "ddim"),
        ("nets_primitives", ["--matmul", "--batches", "1", "--budget", "0.01"], "matmul"),
        (
            "nets_primitives",
            ["--encoders", "small_cnn_pool2", "--batches", "1", "--budget", "0.01"],
            "small_cnn_pool2",
        ),
    ],
)
def test_every_other_benchmark_runs_through_the_cli_at_a_tiny_size(name, argv, expected, capsys):
    """`dpjax bench NAME` for the benchmarks the tests above do not time (reliability's
    scenarios are tests/test_reliability_train.py's)."""
    if name == "pusht_expert":
        pytest.importorskip("gym_pusht")
    from dpjax.cli import main as cli_main

    assert cli_main(["bench", name, *argv]) == 0
    out = capsys.readouterr().out
    assert expected in out.lower(), out[-2000:]


def test_loader(tmp_path, capsys):
    argv = ["--configs", "tiny", "--episodes", "3", "--batch", "8", "--threads", "1", "2",
            "--steps", "1", "--loader-batches", "2", "--repeats", "1"]  # fmt: skip
    payload, table = run("loader", argv, tmp_path, capsys)
    rows = payload["rows"]
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loader_batches_per_s"] > 0 and r["stream_steps_per_s"] > 0
        assert r["memory_steps_per_s"] > 0 and 0 <= r["input_wait"] <= 1
        assert r["headroom"] == r["loader_batches_per_s"] / r["stream_steps_per_s"]
    assert "| tiny | 8 | 2 |" in table


def test_scaling(tmp_path, capsys):
    argv = ["--layouts", "1x2", "--steps", "1", "--batch", "8"]  # one run: a subprocess each
    payload, table = run("scaling", argv, tmp_path, capsys)
    rows = payload["rows"]
    assert [(r["processes"], r["devices"]) for r in rows] == [(1, 2)]
    assert all(r["steps_per_s"] > 0 and r["samples_per_s"] == 8 * r["steps_per_s"] for r in rows)
    assert rows[0]["relative"] == 1.0 and "| 1 x 2 | 2 |" in table
    with pytest.raises(SystemExit):  # a malformed layout is an argparse error, not a traceback
        load("scaling").main(["--layouts", "2by4"])
