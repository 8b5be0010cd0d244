"""Demonstration datasets: RLDS episodes stored as TFDS array_record, windows, normalizer.

    write_dataset(episodes, out_dir, name=...)   episodes -> TFDS dataset dir (atomic)
    load_dataset(dir)                            -> EpisodeDataset (dpjax or any RLDS/TFDS dir)
    DatasetStats / Normalizer                    per-dimension stats; min-max to [-1, 1]
    make_window_index / sample_windows           Diffusion Policy windows; pure, jit-able
    InMemoryLoader / StreamingLoader             batches {"observation": {k: (B, To, ...)},
                                                          "action": (B, Tp, A)}
    import_zarr                                  Diffusion Policy replay buffer -> dataset

Nothing here imports TensorFlow; TFDS itself is imported only when a dataset is opened.
"""

from dpjax.data.dataset import EpisodeDataset, collection_task, decode_episode, load_dataset
from dpjax.data.importers import import_zarr
from dpjax.data.loaders import InMemoryLoader, StreamingLoader
from dpjax.data.normalizer import Normalizer
from dpjax.data.stats import STATS_FILENAME, ArrayStats, DatasetStats, compute_stats
from dpjax.data.windows import (
    WindowData,
    gather_windows,
    make_window_data,
    make_window_index,
    sample_windows,
    window_step_indices,
)
from dpjax.data.writer import write_dataset

__all__ = [
    "STATS_FILENAME",
    "ArrayStats",
    "DatasetStats",
    "EpisodeDataset",
    "InMemoryLoader",
    "Normalizer",
    "StreamingLoader",
    "WindowData",
    "collection_task",
    "compute_stats",
    "decode_episode",
    "gather_windows",
    "import_zarr",
    "load_dataset",
    "make_window_data",
    "make_window_index",
    "sample_windows",
    "window_step_indices",
    "write_dataset",
]
