"""Importing a Diffusion Policy zarr replay buffer (written here with zarr itself)."""

import numpy as np
import pytest

from dpjax.data import import_zarr, load_dataset
from dpjax.errors import DataError

zarr = pytest.importorskip("zarr")

EPISODE_ENDS = [5, 12, 20]


def _create(group, name, data):
    try:  # zarr >= 3
        group.create_array(name, data=data)
    except (AttributeError, TypeError):  # zarr 2
        group.create_dataset(name, data=data)


def _open_for_writing(path):
    try:  # Diffusion Policy's buffers are zarr format 2
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    except TypeError:
        return zarr.open_group(str(path), mode="w")


def write_replay_buffer(path, with_ends=True):
    rng = np.random.default_rng(0)
    num_steps = EPISODE_ENDS[-1]
    root = _open_for_writing(path)
    data = root.create_group("data")
    arrays = {
        "action": rng.uniform(0, 512, (num_steps, 2)).astype(np.float32),
        "state": rng.uniform(0, 512, (num_steps, 5)).astype(np.float32),
        # Diffusion Policy stores images as float32 holding 0..255.
        "img": rng.integers(0, 256, (num_steps, 8, 8, 3)).astype(np.float32),
        "keypoint": rng.normal(size=(num_steps, 9, 2)).astype(np.float32),
    }
    for name, value in arrays.items():
        _create(data, name, value)
    meta = root.create_group("meta")
    if with_ends:
        _create(meta, "episode_ends", np.asarray(EPISODE_ENDS, np.int64))
    return arrays


def test_import_zarr_replay_buffer(tmp_path):
    arrays = write_replay_buffer(tmp_path / "replay.zarr")
    out = import_zarr(tmp_path / "replay.zarr", tmp_path / "pusht", name="pusht")
    dataset = load_dataset(out)
    assert len(dataset) == 3
    assert dataset.episode_lengths() == (5, 7, 8)
    episode = dataset[1]
    obs = episode["steps"]["observation"]
    assert sorted(obs) == ["image", "keypoint", "state"]
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(obs["image"], arrays["img"][5:12].astype(np.uint8))
    np.testing.assert_array_equal(obs["keypoint"], arrays["keypoint"][5:12])
    np.testing.assert_array_equal(episode["steps"]["action"], arrays["action"][5:12])
    assert episode["steps"]["is_first"].tolist() == [True] + [False] * 6
    assert episode["steps"]["is_last"].tolist() == [False] * 6 + [True]
    assert episode["episode_metadata"]["task"] == "pusht"
    stats = dataset.stats
    np.testing.assert_allclose(stats.arrays["action"].max, arrays["action"].max(0))
    assert stats.arrays["observation/keypoint"].min.shape == (9, 2)
    assert stats.info["source_format"] == "diffusion_policy_zarr"


def test_import_zarr_errors(tmp_path):
    write_replay_buffer(tmp_path / "no_ends.zarr", with_ends=False)
    with pytest.raises(DataError, match="episode_ends"):
        import_zarr(tmp_path / "no_ends.zarr", tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        import_zarr(tmp_path / "missing.zarr", tmp_path / "out")
    assert not (tmp_path / "out").exists()
