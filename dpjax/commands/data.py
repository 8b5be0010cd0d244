"""`dpjax data info DIR`: what a dpjax or RLDS/TFDS dataset holds.
`dpjax data import-lerobot PATH --out DIR`: a LeRobot dataset directory (v2.x, v3.0; parquet
and mp4 videos) as a dpjax dataset that `dpjax train` reads (extra `dpjax[lerobot-data]`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect datasets")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="episodes, steps, shapes, statistics of a dataset")
    info.add_argument("directory", metavar="DIR")
    info.add_argument("--split", default="train")
    info.set_defaults(func=run_info)
    lerobot = actions.add_parser(
        "import-lerobot", help="convert a LeRobot dataset directory (parquet + mp4) to dpjax's"
    )
    lerobot.add_argument("path", metavar="PATH", help="the LeRobot dataset's root (meta/info.json)")
    lerobot.add_argument("--out", required=True, help="the dpjax dataset directory to write")
    lerobot.add_argument("--name", help="dataset name (default: PATH's last part)")
    lerobot.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    lerobot.set_defaults(func=run_import_lerobot)


def run_import_lerobot(args: argparse.Namespace) -> int:
    from dpjax.data import load_dataset
    from dpjax.data.importers import import_lerobot

    out = import_lerobot(args.path, args.out, name=args.name, overwrite=args.overwrite)
    dataset = load_dataset(out)
    print(f"imported {len(dataset)} episodes, {dataset.stats.num_steps} steps -> {out}")
    for key, (shape, dtype) in dataset.spec.items():
        print(f"  {key}: {tuple(shape)} {dtype}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from dpjax.data import load_dataset

    dataset = load_dataset(args.directory, split=args.split)
    for line in describe(dataset):
        print(line)
    return 0


def describe(dataset) -> list[str]:
    """The lines `dpjax data info` prints."""
    from dpjax.data.stats import format_stats

    stats = dataset.stats
    lines = [
        f"dataset: {dataset.path}",
        f"name: {dataset.name}   format: {dataset.file_format}   split: {dataset.split}"
        f"   {'dpjax' if dataset.is_dpjax else 'foreign RLDS/TFDS'}",
        f"episodes: {len(dataset)}",
    ]
    if stats is not None:
        lengths = stats.episode_lengths
        lines.append(
            f"steps: {stats.num_steps} (episode length min {min(lengths)}, "
            f"mean {stats.num_steps / len(lengths):.1f}, max {max(lengths)})"
        )
    lines.append("step keys (per-step shape, dtype):")
    lines += [f"  {k}: {tuple(shape)} {dtype}" for k, (shape, dtype) in dataset.spec.items()]
    if stats is None:
        lines.append("statistics: none stored (not written by dpjax)")
        return lines
    lines.append("statistics (per dimension):")
    lines += format_stats(stats)
    episodes = stats.info.get("episodes")
    if episodes:
        names = (stats.info.get("collection") or {}).get("modes") or []
        modes = {
            (names[int(k)] if int(k) < len(names) else k): v
            for k, v in episodes["modes"].items()
            if k != "-1"
        }
        lines.append(
            f"successful episodes: {episodes['successful']}/{stats.num_episodes}"
            + (f"   modes (mode: episodes): {modes}" if modes else "")
        )
        if episodes.get("qualities"):
            lines.append(f"demonstrators (quality: episodes): {episodes['qualities']}")
    collection = stats.info.get("collection")
    if collection:
        lines.append(
            f"expert: {collection['expert']}, success rate "
            f"{collection['expert_success_rate']:.1%} "
            f"({collection['episodes_kept']}/{collection['episodes_attempted']} episodes kept), "
            f"expert ran at {collection['steps_per_second']:.0f} steps/s"
        )
        options = collection.get("task_options")
        if options:
            lines.append("task options: " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
    elif "source" in stats.info:
        lines.append(f"imported from: {stats.info['source']}")
    return lines
