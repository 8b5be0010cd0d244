"""Streaming input against the train step: does the step ever wait for its data?

Writes a dataset in the PushT image shape (96 x 96 x 3 uint8 frames + a 2-D position per
step, 2-D actions, episodes of 120-200 steps; synthetic pixels: the loader copies raw bytes,
so their content does not matter), then, for the PushT image recipe (`dpjax.configs.
pusht_image`, or its PAPER size with --configs paper):

- loader alone: batches per second that `StreamedBatches` (grain threads over
  `WindowReader`) delivers for the rows of the coming train steps, at each --threads count;
- the real training loop (`dpjax.training.train`, 2 x --steps steps, the second half timed)
  with the data on the device (data_loader=memory) and streamed from disk
  (data_loader=stream), alternated, the best of --repeats runs each, and the share of the
  streamed run's time spent waiting for a batch (`input_wait` in metrics.jsonl).

headroom = loader batches/s / streamed train steps/s: above 1 the step never waits.

    python benchmarks/loader.py                       # CPU recipe, ~4 minutes here
    python benchmarks/loader.py --configs cpu paper --episodes 100 --json loader.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

COLUMNS = [
    ("config", "s"),
    ("batch", "d"),
    ("threads", "d"),
    ("loader_batches_per_s|loader batches/s", ".1f"),
    ("loader_windows_per_s|loader windows/s", ",.0f"),
    ("memory_steps_per_s|train steps/s, memory", ".2f"),
    ("stream_steps_per_s|train steps/s, streamed", ".2f"),
    ("input_wait|streamed: time waiting for data", ".1%"),
    ("headroom", ".1f"),
]


def write_pusht_image_like(path: Path, episodes: int) -> Path:
    from dpjax.data import write_dataset
    from dpjax.data.synthetic import synthetic_episodes

    data = synthetic_episodes(episodes, seed=0, min_length=120, max_length=200, state_dim=2,
                              image_size=96)  # fmt: skip
    return write_dataset(data, path, name="pusht_image_like")


def recipe(name: str, dataset: Path, batch: int):
    from dpjax.config import MLPConfig, load_config_file

    config = load_config_file("pusht_image:PAPER" if name == "paper" else "pusht_image")
    policy = dataclasses.replace(config.policy, low_dim_keys=("state",))
    if name == "tiny":  # a train step cheap to compile (tests): state only, a small MLP
        policy = dataclasses.replace(policy, denoiser=MLPConfig(hidden_dims=(32,)),
                                     image_keys=(), crop_hw=None)  # fmt: skip
    return dataclasses.replace(
        config,
        dataset=str(dataset),
        policy=policy,
        batch_size=batch,
        val_fraction=0.0,
        rollout_every=0,
    )


def loader_rate(config, threads: int, num_batches: int) -> float:
    """Batches per second from StreamedBatches over the rows of the first train steps."""
    import jax

    from dpjax.data import load_dataset
    from dpjax.data.loaders import StreamedBatches, WindowReader
    from dpjax.training import step as step_lib

    dataset = load_dataset(config.dataset)
    pc = config.policy
    reader = WindowReader(dataset, range(len(dataset)), obs_horizon=pc.obs_horizon,
                          pred_horizon=pc.pred_horizon, action_horizon=pc.action_horizon,
                          observation_keys=[*pc.low_dim_keys, *pc.image_keys])  # fmt: skip
    rows = step_lib.StepRows(jax.random.key(0), num_batches + 2, config.batch_size,
                             reader.num_windows)  # fmt: skip
    batches = iter(StreamedBatches(reader, rows, num_threads=threads))
    next(batches), next(batches)  # threads started, first rows drawn
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches / (time.perf_counter() - t0)


def train_rate(config, loader: str, steps: int, work: Path) -> dict:
    """steps/s (and input wait) of the second half of a 2 x `steps` training run."""
    from dpjax.training.logs import read_metrics
    from dpjax.training.loop import train

    config = dataclasses.replace(config, data_loader=loader, num_steps=2 * steps,
                                 log_every=steps, checkpoint_every=10 * steps)  # fmt: skip
    train(config, work / loader, progress=False, overwrite=True)
    return read_metrics(work / loader)[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cpu"], choices=["cpu", "paper", "tiny"])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=10, help="timed train steps per run")
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2, help="training runs per loader")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    print(_common.header("streaming loader against the train step (PushT image shape)"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = write_pusht_image_like(work / "data", args.episodes)
        for name in args.configs:
            config = recipe(name, dataset, args.batch)
            # alternated, best of --repeats each: a process's first run is slower (warm-up)
            runs = {"memory": [], "stream": []}
            for _ in range(args.repeats):
                for loader in runs:
                    runs[loader].append(train_rate(config, loader, args.steps, work / name))
            memory, stream = (max(r, key=lambda m: m["steps_per_sec"]) for r in runs.values())
            for threads in args.threads:
                rate = loader_rate(config, threads, args.loader_batches)
                rows.append({
                    "config": {"cpu": "pusht_image", "paper": "pusht_image:PAPER"}.get(name, name),
                    "batch": args.batch,
                    "threads": threads,
                    "loader_batches_per_s": rate,
                    "loader_windows_per_s": rate * args.batch,
                    "memory_steps_per_s": memory["steps_per_sec"],
                    "stream_steps_per_s": stream["steps_per_sec"],
                    "input_wait": stream["input_wait"],
                    "headroom": rate / stream["steps_per_sec"],
                })  # fmt: skip
    print(_common.markdown_table(COLUMNS, rows))
    print(
        "# the training runs' loader used StreamedBatches' default: one thread per two cores, "
        "at most 4"
    )
    _common.write_json(args.json, "loader", args, rows, episodes=args.episodes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
