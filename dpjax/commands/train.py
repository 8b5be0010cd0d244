"""`dpjax train CONFIG [--set field=value ...] [--out RUN_DIR] [--resume | --overwrite]`.

CONFIG is a Python file defining `CONFIG = TrainConfig(...)`, or the name of one shipped in
dpjax/configs/; NAME:ATTR takes another config the file defines (`pusht_keypoints:PAPER`). Any field can be overridden: `--set policy.denoiser=mlp --set num_steps=200`.
`dpjax train --resume RUN_DIR` continues a run from its last checkpoint with its saved config.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a policy from a config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="config file or shipped config name")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field (repeatable)",
    )
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        nargs="?",
        const=True,
        help="continue the run in RUN_DIR (or --out) from its last checkpoint",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    group = parser.add_argument_group(
        "multi-process runs (jax.distributed.initialize's arguments; TPU pods and SLURM are "
        "detected without them); every process runs the same command with its own --process-id"
    )
    group.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N")
    group.add_argument("--process-id", type=int, metavar="I")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpjax import config as config_lib
    from dpjax.config import TrainConfig
    from dpjax.errors import ConfigError
    from dpjax.policy import load_run_config
    from dpjax.training.distributed import maybe_initialize_distributed
    from dpjax.training.loop import describe, train

    # first: jax.distributed must start before anything else touches a JAX backend
    maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    resume = bool(args.resume)
    if isinstance(args.resume, str):
        run_dir = Path(args.resume)
    elif args.config is None:
        raise ConfigError("give a CONFIG (file or shipped config name), or --resume RUN_DIR")
    else:
        name, _, variant = args.config.partition(":")
        run_dir = Path(
            args.out or Path("runs") / (Path(name).stem + (f"_{variant}" if variant else ""))
        )
    if resume:
        # The run's saved config is authoritative; --set overrides apply on top of it and
        # `train` records the result in config.json.
        config = load_run_config(run_dir)
    else:
        config = config_lib.load_config_file(args.config)
        if not isinstance(config, TrainConfig):
            raise ConfigError(
                f"{args.config}: CONFIG is a {type(config).__name__}, not a TrainConfig"
            )
    config = config_lib.apply_overrides(config, args.set)
    if args.print_config:
        print(describe(config))
        return 0
    summary = train(config, run_dir, resume=resume, overwrite=args.overwrite)
    import jax

    if jax.process_index() != 0:
        return 0
    print(
        f"trained to step {summary.get('final_step', summary['start_step'])}: "
        f"loss {summary.get('loss', float('nan')):.4f}"
        + (f", val loss {summary['val_loss']:.4f}" if "val_loss" in summary else "")
        + f"\nrun directory: {run_dir} (continue with: dpjax train --resume {run_dir})"
    )
    return 0
