"""`dpjax export RUN_DIR --out FILE [--sampler S --steps K] [--batch N] [--best | --step N]`.

Writes the policy's inference (normalization, encoder, the sampler's whole scan) as a
`jax.export` StableHLO artifact with its parameters and observation spec, one file that
`dpjax.export.load_exported(FILE)` runs with jax alone (no training code, no orbax). The batch
size stays symbolic unless --batch fixes it. Time it on the target machine with
`python benchmarks/exported_latency.py FILE`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained policy's inference as a jax.export (StableHLO) file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, help="the file to write (e.g. policy.dpjax)")
    parser.add_argument("--sampler", help="sampler (default: the policy's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the policy's)")
    parser.add_argument("--batch", type=int, help="a fixed batch size (default: symbolic)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best-validation checkpoint")
    which.add_argument("--step", type=int, help="the checkpoint of this training step")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpjax.errors import ConfigError
    from dpjax.export import export_policy
    from dpjax.policy import load_policy

    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    policy, params, metadata = load_policy(args.run_dir, best=args.best, step=args.step)
    path = export_policy(
        policy, params, args.out, batch=args.batch, sampler=args.sampler,
        num_inference_steps=args.steps,
        info={"run_dir": str(args.run_dir), "checkpoint_step": metadata["step"]},
    )  # fmt: skip
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB; step {metadata['step']}, batch "
          f"{args.batch or 'symbolic'})")  # fmt: skip
    return 0
