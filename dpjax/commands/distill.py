"""`dpjax distill TEACHER_RUN --method consistency|bc --out STUDENT_RUN [--steps N]`.

Trains a student of a trained diffusion (or flow matching) policy into a run directory that
`dpjax eval`, `dpjax serve` and `load_policy` accept like any other:

  consistency  1-3 denoiser calls a chunk: the student regresses the end of the teacher's
               deterministic sampling trajectory (DDIM / flow Euler, --teacher-steps calls)
               from x_T and from points along it; starts from the teacher's weights.
               Evaluate with `dpjax eval STUDENT_RUN` (1 step) or `--steps 2|3`.
               --mode-seeking W adds score distillation's pull of the one-step chunk
               toward the teacher's modes (re-noised to t <= --mode-seeking-max-time);
               it picks a mode where the regression blurs between them.
               --gate-modes K adds a mode gate: the noise x_T and the observation pick
               one of K learned codes of the conditioning, so that the student's map
               from noise to chunk can jump between the teacher's modes instead of
               blurring across their boundaries (`dpjax.nets.NoiseGate`).
  bc           one forward pass: a regression head fitting the teacher's sampled chunks;
               the backup of a FallbackPolicy (`dpjax serve --fallback STUDENT_RUN`).
               --set policy.bc_head.num_hypotheses=K: K candidate chunks and a categorical over
               them, one drawn per call (keeps a multimodal teacher's modes apart).

The teacher's dataset (from its config) supplies the observations; any student field can be
overridden with --set, as for `dpjax train`. `--resume` continues an interrupted student.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="train a consistency (1-3 step) or BC student of a trained policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("teacher", metavar="TEACHER_RUN", help="the trained policy's run directory")
    parser.add_argument("--method", required=True, choices=("consistency", "bc"))
    parser.add_argument("--out", required=True, help="the student's run directory")
    parser.add_argument("--steps", type=int, help="training steps (default: the teacher's / 2 "
                        "for consistency, / 3 for bc)")  # fmt: skip
    parser.add_argument("--teacher-sampler", help="the teacher's sampler (default: ddim, or "
                        "flow_euler for a flow matching teacher; bc: the teacher's own)")  # fmt: skip
    parser.add_argument("--teacher-steps", type=int,
                        help="the teacher's step count (default: 12; bc: the teacher's own)")  # fmt: skip
    parser.add_argument("--hidden-dims", help="bc: the student's MLP widths, e.g. 256,256")
    parser.add_argument("--mode-seeking", type=float, metavar="W",
                        help="consistency: weight of the mode-seeking (score distillation) "
                        "pull, e.g. 3")  # fmt: skip
    parser.add_argument("--mode-seeking-max-time", type=float, metavar="F",
                        help="consistency: the pull re-noises to times up to F * T "
                        "(default 0.2)")  # fmt: skip
    parser.add_argument("--gate-modes", type=int, default=1, metavar="K",
                        help="consistency: a mode gate with K codes (e.g. 4; default 1: none)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the student's config (repeatable)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the student in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out run")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpjax.distill import ModeSeeking, distill
    from dpjax.errors import ConfigError

    hidden = None
    if args.hidden_dims:
        try:
            hidden = tuple(int(v) for v in args.hidden_dims.split(","))
        except ValueError as e:
            raise ConfigError(f"--hidden-dims: expected widths like 256,256, got "
                              f"{args.hidden_dims!r}") from e  # fmt: skip
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    mode_seeking = None
    if args.mode_seeking is not None:
        times = (
            {} if args.mode_seeking_max_time is None else {"max_time": args.mode_seeking_max_time}
        )
        mode_seeking = ModeSeeking(args.mode_seeking, **times)
    elif args.mode_seeking_max_time is not None:
        raise ConfigError("--mode-seeking-max-time sets the window of --mode-seeking W; "
                          "pass the weight too")  # fmt: skip
    summary = distill(
        args.teacher, args.method, args.out, num_steps=args.steps,
        teacher_sampler=args.teacher_sampler, teacher_steps=args.teacher_steps,
        hidden_dims=hidden, mode_seeking=mode_seeking, gate_modes=args.gate_modes,
        overrides=tuple(args.set), resume=args.resume, overwrite=args.overwrite,
    )  # fmt: skip
    out = Path(args.out)
    print(
        f"distilled ({args.method}) to step {summary.get('final_step', summary['start_step'])}: "
        f"loss {summary.get('loss', float('nan')):.4f}\nstudent run directory: {out} "
        f"(evaluate with: dpjax eval {out})"
    )
    return 0
