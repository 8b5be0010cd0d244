import multiprocessing
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.checkpoint import Checkpointer, load_json, save_json_atomic
from dpjax.errors import CheckpointError, ConfigError, DataError


def make_state(step: int = 0):
    """A nested pytree whose values depend on `step`, so a restore can be checked exactly."""
    rng = np.random.default_rng(step)
    return {
        "params": {
            "denoiser": {
                "Dense_0": {
                    "kernel": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(16,)), jnp.bfloat16),
                },
            },
            "layers": [jnp.arange(5, dtype=jnp.int32) + step, jnp.full((2, 3), step, jnp.uint8)],
        },
        "step": jnp.asarray(step, jnp.int32),
        "rng": jax.random.key(step),
        "rngs": jax.random.split(jax.random.key(step + 100), 3),
    }


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _bytes(x):
    return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)


def assert_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(_bytes(x), _bytes(y))


def test_round_trip_is_bitwise_identical_and_keys_still_work(tmp_path):
    state = make_state(7)
    meta = {"config": {"lr": 1e-4, "name": "pusht"}, "normalizer": {"mean": [0.5, 1.0]}}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, state, metadata=meta)
        restored, restored_meta = ckpt.restore(abstract(state))
    assert_bitwise_equal(restored, state)
    assert restored_meta == meta
    assert restored["params"]["denoiser"]["Dense_0"]["bias"].dtype == jnp.bfloat16
    assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.normal(restored["rng"], (4,)), jax.random.normal(state["rng"], (4,))
    )
    np.testing.assert_array_equal(
        jax.random.uniform(jax.random.split(restored["rngs"][1])[0]),
        jax.random.uniform(jax.random.split(state["rngs"][1])[0]),
    )


def test_max_to_keep_best_latest_and_specific_step(tmp_path):
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 1.5, 50: 4.0}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, make_state(step), metadata={"step": step}, val_loss=loss)
        # the latest two, and the best (lowest val_loss) kept beside them, written once
        assert ckpt.all_steps() == [20, 40, 50]
        assert ckpt.latest_step() == 50
        assert ckpt.all_steps(best=True) == [20]
        state, meta = ckpt.restore(abstract(make_state()), step=40)
        assert_bitwise_equal(state, make_state(40))
        assert meta == {"step": 40}
        best, best_meta = ckpt.restore(abstract(make_state()), best=True)
        assert_bitwise_equal(best, make_state(20))
        assert ckpt.restore_metadata(best=True) == {"step": 20}
        assert ckpt.restore_metadata() == {"step": 50}
        with pytest.raises(CheckpointError, match="step 10"):
            ckpt.restore(abstract(make_state()), step=10)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40", "50"]
    # A new Checkpointer on the same directory sees the same steps and the same best loss.
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() == 50 and ckpt.best_val_loss == 1.0
        ckpt.save(60, make_state(60), metadata={"step": 60}, val_loss=1.2)
        ckpt.save(65, make_state(65), metadata={"step": 65})  # no val_loss: never "best"
        assert ckpt.all_steps(best=True) == [20]
        assert ckpt.all_steps() == [20, 60, 65]
        ckpt.save(70, make_state(70), metadata={"step": 70}, val_loss=0.5)
        assert ckpt.all_steps(best=True) == [70]
        assert ckpt.all_steps() == [65, 70]
        assert ckpt.best_val_loss == 0.5
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["65", "70"]
    with Checkpointer(tmp_path, max_to_keep=1, keep_best=False) as ckpt:
        ckpt.save(80, make_state(80), metadata={"step": 80}, val_loss=0.1)
        assert ckpt.all_steps() == [80]


def test_a_run_with_the_older_best_directory_still_restores_its_best(tmp_path):
    """Before orbax's BestN kept the best step among the others, it was a copy in best/."""
    with Checkpointer(tmp_path / "old", max_to_keep=1, keep_best=False) as ckpt:
        ckpt.save(20, make_state(20), metadata={"step": 20}, val_loss=1.0)
    with Checkpointer(tmp_path, max_to_keep=2, keep_best=False) as ckpt:
        ckpt.save(50, make_state(50), metadata={"step": 50})
    shutil.move(tmp_path / "old" / "checkpoints", tmp_path / "best")
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        assert ckpt.all_steps() == [50] and ckpt.all_steps(best=True) == [20]
        best, meta = ckpt.restore(abstract(make_state()), best=True)
        assert_bitwise_equal(best, make_state(20))
        assert meta == {"step": 20} and ckpt.best_val_loss == 1.0
    # Resumed: a worse new step leaves the old best the best; a better one takes over.
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        ckpt.save(60, make_state(60), metadata={"step": 60}, val_loss=1.5)
        assert ckpt.all_steps(best=True) == [20] and ckpt.best_val_loss == 1.0
        ckpt.save(70, make_state(70), metadata={"step": 70}, val_loss=0.5)
        assert ckpt.all_steps(best=True) == [70] and ckpt.best_val_loss == 0.5
        assert_bitwise_equal(ckpt.restore(abstract(make_state()), best=True)[0], make_state(70))


def test_best_without_any_validation_loss_says_so(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, make_state(5), metadata={"step": 5})
        with pytest.raises(CheckpointError, match="no kept checkpoint .* has a validation loss"):
            ckpt.restore(abstract(make_state()), best=True)


def test_empty_or_missing_directory_raises(tmp_path):
    with Checkpointer(tmp_path / "run") as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore(abstract(make_state()))
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore_metadata(best=True)


def test_incompatible_structure_shape_dtype_names_the_leaf(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(1), metadata={})
        target = abstract(make_state())
        target["params"]["denoiser"]["Dense_0"]["kernel"] = jax.ShapeDtypeStruct(
            (4, 16), jnp.float32
        )
        with pytest.raises(CheckpointError) as e:
            ckpt.restore(target)
        assert "params/denoiser/Dense_0/kernel: saved (8, 16) vs expected (4, 16)" in str(e.value)
        assert str(tmp_path / "checkpoints" / "1") in str(e.value)

        target = abstract(make_state())
        target["params"]["denoiser"]["Dense_0"]["bias"] = jax.ShapeDtypeStruct((16,), jnp.float32)
        with pytest.raises(
            CheckpointError, match="Dense_0/bias: saved bfloat16 vs expected float32"
        ):
            ckpt.restore(target)

        target = abstract(make_state())
        target["params"]["denoiser"]["Dense_1"] = {
            "kernel": jax.ShapeDtypeStruct((2,), jnp.float32)
        }
        with pytest.raises(CheckpointError, match="params/denoiser/Dense_1/kernel"):
            ckpt.restore(target)

        target = abstract(make_state())
        del target["params"]["layers"]
        with pytest.raises(CheckpointError, match="params/layers/0"):
            ckpt.restore(target)

        target = abstract(make_state())
        target["rng"] = jax.ShapeDtypeStruct((2,), jnp.uint32)
        with pytest.raises(CheckpointError, match="rng: saved PRNG key"):
            ckpt.restore(target)


# After a failed read orbax may leave an asyncio callback behind ("Event loop is closed").
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["garbage", "truncate", "manifest", "layout"])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, damage):
    state = make_state(3)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, metadata={"a": 1})
    step_dir = tmp_path / "checkpoints" / "3"
    data_files = sorted(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
    )
    assert data_files, "expected orbax/ocdbt data files under state/**/d/"
    if damage == "garbage":
        target = data_files[-1]
        target.write_bytes(np.random.default_rng(0).bytes(target.stat().st_size))
    elif damage == "truncate":
        for p in data_files:
            os.truncate(p, p.stat().st_size // 2)
    elif damage == "manifest":
        for p in (step_dir / "state").rglob("manifest.ocdbt"):
            p.write_bytes(b"\x00" * 7)
    else:
        (step_dir / "layout" / "metadata").write_text('{"leaves": {')
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError) as e:
        ckpt.restore(abstract(state))
    assert str(step_dir) in str(e.value)
    assert "TensorStore({" not in str(e.value)


def test_checksum_catches_silently_wrong_values(tmp_path):
    """The stored data changed under an intact layout (here: another save's valid array data
    with one leaf different, the kind of corruption the storage format itself cannot see)."""
    state = make_state(4)
    other = jax.tree.map(lambda x: x, state)
    other["params"]["layers"][0] = state["params"]["layers"][0] + 1
    with Checkpointer(tmp_path / "a") as ckpt:
        ckpt.save(4, state, metadata={})
    with Checkpointer(tmp_path / "b") as ckpt:
        ckpt.save(4, other, metadata={})
    data = tmp_path / "a" / "checkpoints" / "4" / "state"
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "b" / "checkpoints" / "4" / "state", data)
    with Checkpointer(tmp_path / "a") as ckpt:
        with pytest.raises(CheckpointError, match="params/layers/0 does not match its checksum"):
            ckpt.restore(abstract(state))
    # Without the checksums the wrong values would come back silently.
    with Checkpointer(tmp_path / "a", verify_checksums=False) as ckpt:
        restored, _ = ckpt.restore(abstract(state))
    assert_bitwise_equal(restored, other)


_WRITER = """
import numpy as np
import jax
from dpjax.checkpoint import Checkpointer

base = np.arange(1 << 19, dtype=np.float32)
with Checkpointer(directory, max_to_keep=2) as ckpt:
    for step in range(first, first + 10_000):
        state = {"w": [base + step + i for i in range(6)], "rng": jax.random.key(step)}
        ckpt.save(step, state, metadata={"step": step}, val_loss=1.0 / (1 + step % 7))
        first_save_done.set()
"""


def _expected(step: int):
    base = np.arange(1 << 19, dtype=np.float32)
    return {"w": [base + step + i for i in range(6)], "rng": jax.random.key(step)}


def test_kill_9_mid_save_never_leaves_a_half_written_checkpoint(tmp_path):
    # Writers are forked from a forkserver that has already imported jax and orbax (but not
    # started a backend), so each of the three kills costs no interpreter start-up.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["jax", "orbax.checkpoint", "dpjax.checkpoint"])
    directory = str(tmp_path / "run")
    seed = int(time.time() * 1000) % 100_000
    rng = np.random.default_rng(seed)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _expected(0))
    for attempt in range(3):
        with Checkpointer(directory, max_to_keep=2) as ckpt:
            first = (ckpt.latest_step() or 0) + 1
        first_save_done = ctx.Event()
        env = {"directory": directory, "first": first, "first_save_done": first_save_done}
        proc = ctx.Process(target=exec, args=(_WRITER, env), daemon=True)
        proc.start()
        try:
            assert first_save_done.wait(60), f"writer never saved (seed {seed})"
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            proc.kill()  # SIGKILL
            proc.join()
        assert proc.exitcode == -signal.SIGKILL, f"writer died on its own (seed {seed})"
        with Checkpointer(directory, max_to_keep=2) as ckpt:
            steps = ckpt.all_steps()
            assert steps and steps[-1] >= first, f"attempt {attempt}, seed {seed}: {steps}"
            for step in steps:
                state, meta = ckpt.restore(target, step=step)
                assert meta == {"step": step}
                assert_bitwise_equal(state, _expected(step))
            if ckpt.all_steps(best=True):
                state, meta = ckpt.restore(target, best=True)
                assert_bitwise_equal(state, _expected(meta["step"]))


def test_metadata_must_be_json(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ConfigError, match="JSON"):
            ckpt.save(1, make_state(1), metadata={"x": object()})
        assert ckpt.all_steps() == []


def test_save_json_atomic_and_load_json(tmp_path):
    path = tmp_path / "sub" / "run.json"
    save_json_atomic(path, {"a": [1, 2], "b": "x"})
    assert load_json(path, "run file") == {"a": [1, 2], "b": "x"}
    save_json_atomic(path, {"a": 3})
    assert load_json(path, "run file") == {"a": 3}
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]
    with pytest.raises(DataError, match="run file not found"):
        load_json(tmp_path / "nope.json", "run file")
    path.write_text('{"a": ')
    with pytest.raises(CheckpointError, match="corrupt"):
        load_json(path, "run file", error=CheckpointError)
    with pytest.raises(ConfigError):
        save_json_atomic(path, {"a": object()})
    assert path.read_text() == '{"a": '


def test_loading_a_policy_creates_nothing_on_disk(tmp_path):
    """Reading commands (eval, serve, export) on a missing or empty run leave the disk as it
    was: a clear error, no directories made, no orbax cleanup threads left behind."""
    from dpjax.policy import load_policy

    with pytest.raises(CheckpointError, match="no run directory"):
        load_policy(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_policy(tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["checkpoints"]
    with Checkpointer(tmp_path / "ro", read_only=True) as ckpt:
        assert ckpt.latest_step() is None
    assert not (tmp_path / "ro").exists()
