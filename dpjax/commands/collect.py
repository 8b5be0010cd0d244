"""`dpjax collect TASK --episodes N --out DIR`: scripted-expert demonstrations -> dataset.

Runs the task's expert on seeds S, S+1, ..., S+N-1, keeps the successful episodes and writes
them with `dpjax.data.write_dataset` (atomically). TASK is a registered task name
(`dpjax.envs.task_names()`) or `package.module:factory` for a task defined elsewhere.
`--task-option KEY=VALUE` (repeatable) passes KEY=VALUE to the task's factory, e.g.
`--task-option obs_type=pixels` for PushT or `--task-option position_split=train` for
Meta-World; VALUE is read as JSON where it parses (numbers, true/false, null, lists, dicts),
as a string otherwise.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record scripted-expert demonstrations into a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", metavar="TASK", help="task name, or module:factory")
    parser.add_argument("--episodes", type=int, required=True, help="episodes to attempt")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise on the expert's actions, executed and recorded",
    )
    parser.add_argument(
        "--execution-noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise on the executed action only; the expert's own action is "
        "recorded (DART: demonstrations of getting back on track)",
    )
    parser.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the task's factory (repeatable), e.g. obs_type=pixels",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpjax.envs.collect import collect, parse_task_options, resolve_task

    options = parse_task_options(args.task_option)
    task = resolve_task(args.task, options)
    path, info = collect(
        task,
        args.out,
        episodes=args.episodes,
        seed=args.seed,
        action_noise=args.action_noise,
        execution_noise=args.execution_noise,
        overwrite=args.overwrite,
        task_options=options,
    )
    print(
        f"kept {info['episodes_kept']}/{info['episodes_attempted']} episodes "
        f"(expert success rate {info['expert_success_rate']:.1%}), {info['expert_steps']} steps, "
        f"expert {info['steps_per_second']:.0f} steps/s, {info['wall_seconds']:.1f} s in all "
        f"-> {path}"
    )
    return 0
