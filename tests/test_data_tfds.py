"""Episodes through TFDS array_record and back, without TensorFlow; atomic writes; errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dpjax.data import STATS_FILENAME, DatasetStats, decode_episode, load_dataset, write_dataset
from dpjax.data.synthetic import synthetic_episodes
from dpjax.errors import DataError, ShapeError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def episodes():
    return synthetic_episodes(6, image_size=8, language=True)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, episodes):
    return write_dataset(episodes, tmp_path_factory.mktemp("ds") / "demo", name="demo-task")


def assert_same_episode(got, want):
    assert got["episode_metadata"] == want["episode_metadata"]
    flat_got, flat_want = _flat(got["steps"]), _flat(want["steps"])
    assert sorted(flat_got) == sorted(flat_want)
    for key, value in flat_want.items():
        assert flat_got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(flat_got[key], value, err_msg=key)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_round_trip_with_images_and_language(dataset_dir, episodes):
    dataset = load_dataset(dataset_dir)
    assert len(dataset) == len(episodes) and dataset.is_dpjax
    for i, want in enumerate(episodes):
        assert_same_episode(dataset[i], want)
    assert dataset[2]["episode_metadata"]["language_instruction"] == "push block 2 to the goal"
    assert dataset[0]["steps"]["observation"]["image"].dtype == np.uint8
    assert dataset.episode_lengths() == tuple(len(e["steps"]["action"]) for e in episodes)
    # The column-wise fast path decodes exactly what TFDS' step-by-step decoding gives.
    assert_same_episode(decode_episode(dataset.source[4]), episodes[4])
    dataset[0]["steps"]["observation"]["image"][0, 0, 0, 0] = 1  # writable, not a buffer view


def test_is_a_genuine_tfds_dataset(dataset_dir, episodes):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(dataset_dir))
    assert builder.info.file_format.value == "array_record"
    source = builder.as_data_source(split="train")
    assert len(source) == len(episodes)
    steps = list(source[1]["steps"])
    assert len(steps) == len(episodes[1]["steps"]["action"])
    np.testing.assert_array_equal(steps[0]["action"], episodes[1]["steps"]["action"][0])


def test_stats_match_numpy(dataset_dir, episodes):
    stats = load_dataset(dataset_dir).stats
    actions = np.concatenate([e["steps"]["action"] for e in episodes]).astype(np.float64)
    a = stats.arrays["action"]
    np.testing.assert_allclose(a.min, actions.min(0))
    np.testing.assert_allclose(a.max, actions.max(0))
    np.testing.assert_allclose(a.mean, actions.mean(0), atol=1e-12)
    np.testing.assert_allclose(a.std, actions.std(0), rtol=1e-10)
    assert "observation/state" in stats.arrays and "observation/image" not in stats.arrays
    assert stats.num_steps == len(actions)


def test_no_tensorflow_anywhere(tmp_path):
    """Writing, reading, both loaders and the CLI never import TensorFlow."""
    script = textwrap.dedent(
        f"""
        import sys
        import jax
        from dpjax.data import (InMemoryLoader, StreamingLoader, load_dataset, write_dataset)
        from dpjax.data.synthetic import synthetic_episodes
        from dpjax import cli
        episodes = synthetic_episodes(3, image_size=4, language=True)
        out = write_dataset(episodes, {str(tmp_path / "d")!r})
        ds = load_dataset(out)
        list(ds)
        h = dict(obs_horizon=2, pred_horizon=4, action_horizon=2)
        next(iter(StreamingLoader(ds, batch_size=4, num_epochs=1, **h)))
        next(iter(InMemoryLoader(ds, batch_size=4, **h)))
        cli.COMMAND_MODULES = ("dpjax.commands.data",)
        assert cli.main(["data", "info", str(out)]) == 0
        # etils probes importlib.util.find_spec("tensorflow"); only an actual import counts.
        imported = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]
        assert not imported, f"tensorflow was imported: {{imported[:5]}}"
        print("NO-TF-OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "NO-TF-OK" in result.stdout, result.stderr[-3000:]


def test_interrupted_write_leaves_nothing_and_keeps_existing(tmp_path, episodes):
    out = write_dataset(episodes[:2], tmp_path / "d")

    def failing():
        yield from episodes[2:4]
        raise RuntimeError("robot fell over")

    with pytest.raises(RuntimeError, match="fell over"):
        write_dataset(failing(), out, overwrite=True)
    assert len(load_dataset(out)) == 2
    with pytest.raises(RuntimeError):
        write_dataset(failing(), tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_killed_writer_keeps_existing_dataset(tmp_path, episodes):
    out = write_dataset(episodes[:2], tmp_path / "d")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = textwrap.dedent(
        f"""
        import time
        from dpjax.data import write_dataset
        from dpjax.data.synthetic import synthetic_episodes
        def slow():
            for e in synthetic_episodes(50):
                print("episode", flush=True)
                time.sleep(0.05)
                yield e
        write_dataset(slow(), {str(out)!r}, overwrite=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(5):  # let it get well into writing before killing it
            assert proc.stdout.readline().startswith("episode")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    leftovers = [p for p in tmp_path.iterdir() if p.name != "d"]
    assert leftovers and all(".incomplete-" in p.name for p in leftovers)
    with pytest.raises(DataError, match="half-written"):
        load_dataset(leftovers[0])


def test_existing_target_needs_overwrite(tmp_path, episodes):
    out = write_dataset(episodes[:1], tmp_path / "d")
    consumed = []
    with pytest.raises(DataError, match="already exists"):  # before running any expert
        write_dataset((consumed.append(e) or e for e in episodes), out)
    assert not consumed
    write_dataset(episodes[:3], out, overwrite=True)
    assert len(load_dataset(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_bad_episodes_are_named(tmp_path, episodes):
    bad = synthetic_episodes(3)
    bad[1]["steps"]["action"][2, 1] = np.nan
    with pytest.raises(DataError, match=r"episode 1 \(seed 1\).*action.*NaN"):
        write_dataset(bad, tmp_path / "nan")
    bad = synthetic_episodes(3)
    bad[2]["steps"]["observation"]["state"][0, 0] = np.inf
    with pytest.raises(DataError, match=r"episode 2.*observation/state"):
        write_dataset(bad, tmp_path / "inf")
    bad = synthetic_episodes(2)
    del bad[1]["steps"]["observation"]["state"]
    with pytest.raises(DataError, match="missing=\\['observation/state'\\]"):
        write_dataset(bad, tmp_path / "missing")
    bad = synthetic_episodes(2, state_dim=3) + synthetic_episodes(1, state_dim=4)
    with pytest.raises(ShapeError, match="observation/state"):
        write_dataset(bad, tmp_path / "shape")
    with pytest.raises(DataError, match="no episodes"):
        write_dataset([], tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []


def test_errors_for_things_that_are_not_datasets(tmp_path, dataset_dir):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a dpjax or RLDS"):
        load_dataset(tmp_path / "random")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_errors_for_damaged_datasets(tmp_path, dataset_dir):
    no_shard = _copy(dataset_dir, tmp_path / "no_shard")
    next(no_shard.glob("*.array_record-*")).unlink()
    with pytest.raises(DataError, match="half-written or damaged"):
        load_dataset(no_shard)

    no_stats = _copy(dataset_dir, tmp_path / "no_stats")
    (no_stats / STATS_FILENAME).unlink()
    with pytest.raises(DataError, match="missing"):
        load_dataset(no_stats)

    corrupt = _copy(dataset_dir, tmp_path / "corrupt")
    (corrupt / STATS_FILENAME).write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(corrupt)
    stats = json.loads((dataset_dir / STATS_FILENAME).read_text())
    stats["arrays"]["action"]["max"] = [1.0]  # wrong shape
    (corrupt / STATS_FILENAME).write_text(json.dumps(stats))
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(corrupt)

    bad_info = _copy(dataset_dir, tmp_path / "bad_info")
    (bad_info / "dataset_info.json").write_text("[]")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(bad_info)


def test_finds_dataset_below_a_tfds_data_dir(tmp_path, dataset_dir):
    version_dir = tmp_path / "data_dir" / "demo_task" / "1.0.0"
    version_dir.parent.mkdir(parents=True)
    _copy(dataset_dir, version_dir)
    assert load_dataset(tmp_path / "data_dir").path == version_dir


def test_tfrecord_dataset_needs_tensorflow_extra(tmp_path, dataset_dir):
    from dpjax.errors import MissingExtraError

    if "tensorflow" in sys.modules or _has_tensorflow():
        pytest.skip("TensorFlow is installed")
    foreign = _copy(dataset_dir, tmp_path / "oxe")
    info = json.loads((foreign / "dataset_info.json").read_text())
    info["fileFormat"], info["description"] = "tfrecord", "some Open X-Embodiment dataset"
    for shard in foreign.glob("*.array_record-*"):
        shard.rename(foreign / shard.name.replace("array_record", "tfrecord"))
    (foreign / STATS_FILENAME).unlink()
    (foreign / "dataset_info.json").write_text(json.dumps(info))
    dataset = load_dataset(foreign)
    assert not dataset.is_dpjax and dataset.stats is None
    with pytest.raises(MissingExtraError, match=r"dpjax\[tensorflow\]"):
        next(iter(dataset))


def _has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def test_stats_json_round_trip(dataset_dir):
    stats = load_dataset(dataset_dir).stats
    again = DatasetStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again.episode_lengths == stats.episode_lengths and again.spec == stats.spec
    np.testing.assert_array_equal(again.arrays["action"].std, stats.arrays["action"].std)


def test_write_speed_is_reasonable(tmp_path):
    episodes = synthetic_episodes(20, min_length=100, max_length=100, image_size=32)
    start = time.perf_counter()
    out = write_dataset(episodes, tmp_path / "speed")
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    assert sum(len(e["steps"]["action"]) for e in load_dataset(out)) == 2000
    read_s = time.perf_counter() - start
    print(
        f"2000 steps (32x32 images): write {2000 / write_s:.0f} steps/s, read {2000 / read_s:.0f}"
    )
    assert write_s < 30 and read_s < 30
