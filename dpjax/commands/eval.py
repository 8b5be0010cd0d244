"""`dpjax eval RUN_DIR [--episodes N] [--sampler S --steps K] [--best] [--out DIR]`.

Closed-loop rollouts of a trained policy on the task its dataset was collected on (fixed
seeds, held apart from the demonstration seeds), with any sampler and step count chosen now,
without retraining. Writes eval_<sampler>_<steps>.json / .md (and .png for the multimodal
task) into DIR (default RUN_DIR/eval).

Chunk execution (`dpjax.policy.execution`): --execution chunked (default) |
temporal_ensemble (ACT) | rtc (real-time chunking), with --delay D simulating an inference
that takes D control steps (the previous chunk keeps executing meanwhile), e.g.
`dpjax eval RUN --action-horizon 4 --execution rtc --delay 3`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained policy in closed loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "--episodes",
        type=int,
        help="evaluation episodes (default: 50 on PushT, as Diffusion Policy evaluates, else 100)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the first episode (default: 100000, held out)"
    )
    parser.add_argument("--sampler", help="sampler (default: the policy's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the policy's)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="use the best-validation checkpoint")
    which.add_argument("--step", type=int, help="use the checkpoint of this training step")
    which.add_argument(
        "--best-rollout",
        action="store_true",
        help="use the kept checkpoint with the best in-training rollout score "
        "(runs trained with rollout_every > 0; those rollouts use other seeds)",
    )
    parser.add_argument(
        "--action-horizon",
        type=int,
        help="execute this many actions of each predicted chunk (default: the policy's; "
        "1 replans every step)",
    )
    parser.add_argument(
        "--execution",
        default="chunked",
        help="how chunks become actions: chunked | temporal_ensemble | rtc (default chunked)",
    )
    parser.add_argument(
        "--delay", type=int, default=0, help="simulated inference delay in control steps"
    )
    parser.add_argument(
        "--ensemble-decay", type=float, default=0.01, help="temporal_ensemble: ACT's m"
    )
    parser.add_argument(
        "--max-guidance", type=float, default=5.0, help="rtc: the guidance weight clip (beta)"
    )
    parser.add_argument("--task", help="task name (default: the dataset's)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/eval)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpjax import evaluate
    from dpjax.evaluate import best_rollout_step, evaluate_run, markdown
    from dpjax.policy.execution import Execution

    execution = Execution(
        mode=args.execution,
        delay=args.delay,
        ensemble_decay=args.ensemble_decay,
        max_guidance=args.max_guidance,
    )
    metrics, rollouts, task_name = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        seed=evaluate.EVAL_SEED if args.seed is None else args.seed,
        sampler=args.sampler,
        steps=args.steps,
        best=args.best,
        step=best_rollout_step(args.run_dir) if args.best_rollout else args.step,
        task=args.task,
        action_horizon=args.action_horizon,
        execution=execution,
    )
    out = Path(args.out or Path(args.run_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    if metrics["kind"] == "bc" and (args.sampler or args.steps):
        print("note: a BC policy has no sampler; --sampler/--steps are ignored")
    stem = f"eval_{metrics['sampler'] or 'bc'}_{metrics['num_inference_steps'] or 1}"
    if args.action_horizon is not None:
        stem += f"_ah{args.action_horizon}"
    if execution != Execution():
        stem += f"_{execution.mode}_d{execution.delay}"
    (out / f"{stem}.json").write_text(json.dumps(metrics, indent=1))
    (out / f"{stem}.md").write_text(markdown(metrics))
    print(markdown(metrics))
    written = [out / f"{stem}.json", out / f"{stem}.md"]
    try:
        if task_name == "multimodal":
            written.append(
                evaluate.plot_multimodal({metrics["kind"]: rollouts}, out / f"{stem}.png")
            )
        elif rollouts.get("frames"):
            title = (
                f"{task_name}: first episode ({'success' if rollouts['success'][0] else 'failure'})"
            )
            written.append(evaluate.plot_frames(rollouts["frames"], out / f"{stem}.png", title))
    except ImportError:
        print("(install the `plot` extra for the picture)")
    print("wrote " + ", ".join(map(str, written)))
    return 0
