"""`dpjax data import-lerobot`: LeRobot datasets (v3.0 and v2.1 layouts, written here by the
format's documented layout since no hub is reachable and lerobot itself pins an older torch)
round-trip their actions, states, PNG images and mp4 frames into a dataset dpjax trains on."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dpjax import cli
from dpjax.data import load_dataset
from dpjax.data.importers import import_lerobot
from dpjax.errors import DataError

FPS = 10
LENGTHS = (7, 5)
H = W = 32


def frames_of(episode: int, n: int) -> np.ndarray:
    """(n, H, W, 3) uint8 frames with big flat blocks (video codecs keep them nearly exact)."""
    t = np.arange(n)[:, None, None]
    y, x = (np.mgrid[0:H, 0:W] // 8)[:, None]
    r = (40 * (y + t) + 60 * episode) % 256
    g = (50 * x + 20 * t) % 256
    b = np.full_like(r, 128 + 40 * episode)
    return np.stack([r, g, b], -1).astype(np.uint8)


def episode_arrays(episode: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(episode)
    return {
        "state": rng.normal(size=(n, 2)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "frames": frames_of(episode, n),
        "wrist": np.roll(frames_of(episode + 5, n), 3, axis=2),
        "reward": np.linspace(0, 1, n).astype(np.float32),
    }


def write_mp4(path, frames: np.ndarray) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        stream.options = {"crf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def png(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def table_of(episodes: list[int], first_index: int) -> pa.Table:
    columns = {k: [] for k in ("observation.state", "action", "observation.images.wrist",
                               "timestamp", "frame_index", "episode_index", "index",
                               "task_index", "next.reward", "next.done")}  # fmt: skip
    index = first_index
    for e in episodes:
        a = episode_arrays(e, LENGTHS[e])
        for i in range(LENGTHS[e]):
            columns["observation.state"].append(a["state"][i].tolist())
            columns["action"].append(a["action"][i].tolist())
            columns["observation.images.wrist"].append(png(a["wrist"][i]))
            columns["timestamp"].append(np.float32(i / FPS))
            columns["frame_index"].append(i)
            columns["episode_index"].append(e)
            columns["index"].append(index)
            columns["task_index"].append(0)
            columns["next.reward"].append(float(a["reward"][i]))
            columns["next.done"].append(i == LENGTHS[e] - 1)
            index += 1
    schema = pa.schema([
        ("observation.state", pa.list_(pa.float32(), 2)), ("action", pa.list_(pa.float32(), 2)),
        ("observation.images.wrist", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
        ("index", pa.int64()), ("task_index", pa.int64()), ("next.reward", pa.float32()),
        ("next.done", pa.bool_()),
    ])  # fmt: skip
    return pa.table(columns, schema=schema)


def info_json(version: str) -> dict:
    video = {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    v3 = version == "v3.0"
    return {
        "codebase_version": version, "fps": FPS, "chunks_size": 1000, "robot_type": "test",
        "total_episodes": len(LENGTHS), "total_frames": sum(LENGTHS),
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3
        else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3
        else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
            "action": {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
            "observation.images.top": video,
            "observation.images.wrist": {"dtype": "image", "shape": [H, W, 3]},
            "timestamp": {"dtype": "float32", "shape": [1]},
            "frame_index": {"dtype": "int64", "shape": [1]},
            "episode_index": {"dtype": "int64", "shape": [1]},
            "index": {"dtype": "int64", "shape": [1]},
            "task_index": {"dtype": "int64", "shape": [1]},
            "next.reward": {"dtype": "float32", "shape": [1]},
            "next.done": {"dtype": "bool", "shape": [1]},
        },
    }  # fmt: skip


def write_v3(root) -> None:
    """Both episodes in one data file and one video file, located by meta/episodes."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v3.0")))
    data = root / "data" / "chunk-000" / "file-000.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(table_of([0, 1], 0), data)
    write_mp4(root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4",
              np.concatenate([frames_of(e, n) for e, n in enumerate(LENGTHS)]))  # fmt: skip
    starts = np.cumsum([0, *LENGTHS]) / FPS
    episodes = pa.table({
        "episode_index": [0, 1], "length": list(LENGTHS), "tasks": [["push"], ["push"]],
        "data/chunk_index": [0, 0], "data/file_index": [0, 0],
        "dataset_from_index": [0, LENGTHS[0]], "dataset_to_index": [LENGTHS[0], sum(LENGTHS)],
        "videos/observation.images.top/chunk_index": [0, 0],
        "videos/observation.images.top/file_index": [0, 0],
        "videos/observation.images.top/from_timestamp": [starts[0], starts[1]],
        "videos/observation.images.top/to_timestamp": [starts[1], starts[2]],
    })  # fmt: skip
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(episodes, path)
    pq.write_table(pa.table({"task_index": [0], "task": ["push"]}), root / "meta" / "tasks.parquet")


def write_v21(root) -> None:
    """One parquet and one mp4 per episode."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v2.1")))
    index = 0
    for e, n in enumerate(LENGTHS):
        path = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table_of([e], index), path)
        index += n
        write_mp4(root / "videos" / "chunk-000" / "observation.images.top" / f"episode_{e:06d}.mp4",
                  frames_of(e, n))  # fmt: skip


@pytest.mark.parametrize("write", [write_v3, write_v21])
def test_lerobot_dataset_round_trips_through_the_cli(tmp_path, write, capsys):
    root = tmp_path / "lerobot_pusht"
    write(root)
    out = tmp_path / "imported"
    assert cli.main(["data", "import-lerobot", str(root), "--out", str(out)]) == 0
    assert "imported 2 episodes, 12 steps" in capsys.readouterr().out
    dataset = load_dataset(out)
    assert dataset.spec["observation/state"] == ((2,), "float32")
    assert dataset.spec["observation/top"] == ((H, W, 3), "uint8")
    assert dataset.spec["observation/wrist"] == ((H, W, 3), "uint8")
    assert (
        "observation/timestamp" not in dataset.spec and "observation/next.done" not in dataset.spec
    )
    for e, episode in enumerate(dataset):
        a = episode_arrays(e, LENGTHS[e])
        steps = episode["steps"]
        np.testing.assert_array_equal(steps["action"], a["action"])
        np.testing.assert_array_equal(steps["observation"]["state"], a["state"])
        np.testing.assert_array_equal(steps["observation"]["wrist"], a["wrist"])  # PNG: exact
        np.testing.assert_allclose(steps["reward"], a["reward"], rtol=1e-6)
        # The mp4's frames, found by timestamp (v3: after the episode's offset in the file):
        # the right frame is within rounding of the colour conversion, a neighbour is not.
        error = np.abs(steps["observation"]["top"].astype(int) - a["frames"].astype(int))
        assert error.mean() < 2.0, error.mean()
        shifted = np.abs(steps["observation"]["top"][1:].astype(int) - a["frames"][:-1].astype(int))
        assert shifted.mean() > 10
    assert (
        dataset.stats.info["source_format"]
        == f"lerobot_{info_json('v3.0' if write is write_v3 else 'v2.1')['codebase_version']}"
    )


def test_broken_lerobot_datasets_are_named_and_leave_the_target_alone(tmp_path):
    root = tmp_path / "broken"
    with pytest.raises(DataError, match="no meta/info.json"):
        import_lerobot(root, tmp_path / "out")
    write_v3(root)
    video = root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    video.write_bytes(video.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match="cannot decode|no frames|no frame within"):
        import_lerobot(root, tmp_path / "out")
    video.unlink()
    with pytest.raises(DataError, match="is missing"):
        import_lerobot(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="v1.6 is not supported"):
        import_lerobot(root, tmp_path / "out")


def test_an_imported_lerobot_dataset_trains(tmp_path):
    from dpjax.config import MLPConfig, PolicyConfig, TrainConfig
    from dpjax.training.loop import train

    write_v3(tmp_path / "lerobot")
    data = import_lerobot(tmp_path / "lerobot", tmp_path / "data")
    # State only: training on image keys is the PushT pixel recipe's test.
    policy = PolicyConfig(action_dim=2, low_dim_keys=("state",), obs_horizon=2, pred_horizon=4,
                          action_horizon=2, denoiser=MLPConfig(hidden_dims=(16,)),
                          low_dim_features=8)  # fmt: skip
    config = TrainConfig(dataset=str(data), policy=policy, batch_size=4, num_steps=2,
                         log_every=1, eval_every=2, checkpoint_every=2, val_fraction=0.5)  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged[-1]["step"] == 2 and np.isfinite(logged[-1]["loss"])
