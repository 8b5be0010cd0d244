"""A dataset built by plain TFDS (not dpjax), Open X-Embodiment style, read as a source."""

import numpy as np
import pytest

from dpjax.data import InMemoryLoader, StreamingLoader, load_dataset

tfds = pytest.importorskip("tensorflow_datasets")

LENGTHS = (4, 5, 6)


def _builder_class():
    # Tensor features: TFDS encodes Image (PNG) features with TensorFlow, absent here.
    class OxeStyle(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("0.1.0")
        code_path = None  # no checksums file next to a class defined in a test

        def _info(self):
            step = {
                "observation": {
                    "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
                    "state": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                },
                "action": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "reward": tfds.features.Scalar(dtype=np.float32),
                "is_first": np.bool_,
                "is_last": np.bool_,
                "is_terminal": np.bool_,
                "language_instruction": tfds.features.Text(),
            }
            return tfds.core.DatasetInfo(
                builder=self,
                description="an Open X-Embodiment-style dataset",
                features=tfds.features.FeaturesDict(
                    {
                        "steps": tfds.features.Dataset(step),
                        "episode_metadata": {"file_path": tfds.features.Text()},
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, length in enumerate(LENGTHS):
                steps = [
                    {
                        "observation": {
                            "image": np.full((8, 8, 3), 10 * i + t, np.uint8),
                            "state": np.float32([i, t, 0]),
                        },
                        "action": np.float32([i, t]),
                        "reward": float(t == length - 1),
                        "is_first": t == 0,
                        "is_last": t == length - 1,
                        "is_terminal": t == length - 1,
                        "language_instruction": "pick up the cup",
                    }
                    for t in range(length)
                ]
                yield i, {"steps": steps, "episode_metadata": {"file_path": f"episode_{i}"}}

    return OxeStyle


def test_foreign_array_record_dataset_is_a_read_only_source(tmp_path):
    _builder_class()(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    dataset = load_dataset(tmp_path)  # found below the TFDS data_dir: oxe_style/0.1.0
    assert not dataset.is_dpjax and dataset.stats is None and len(dataset) == 3
    assert dataset.spec["observation/image"] == ((8, 8, 3), "uint8")
    episode = dataset[1]
    np.testing.assert_array_equal(episode["steps"]["action"][:, 1], np.arange(LENGTHS[1]))
    assert episode["steps"]["observation"]["image"].dtype == np.uint8
    assert episode["episode_metadata"] == {"file_path": "episode_1"}
    assert dataset.episode_lengths() == LENGTHS

    stats = dataset.compute_stats()
    np.testing.assert_array_equal(stats.arrays["action"].max, [2, max(LENGTHS) - 1])
    horizons = dict(obs_horizon=2, pred_horizon=4, action_horizon=2)
    for loader in (
        InMemoryLoader(dataset, batch_size=4, **horizons),
        StreamingLoader(dataset, batch_size=4, num_epochs=1, **horizons),
    ):
        batch = next(iter(loader))
        assert batch["observation"]["image"].shape == (4, 2, 8, 8, 3)
        assert batch["observation"]["image"].dtype == np.uint8
        assert batch["action"].shape == (4, 4, 2)
