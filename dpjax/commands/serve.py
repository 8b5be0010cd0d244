"""`dpjax serve RUN_DIR [--port P] [--host H] [--sampler S --steps K] [--max-batch N]`.

Serves a trained policy over a websocket (`dpjax.server`): robot programs connect with
`dpjax.client.PolicyClient(host, port)` (numpy, msgpack and websockets; no JAX) and get action
chunks for their observation histories. `GET http://HOST:PORT/stats` reports requests, errors
and latency percentiles. It listens on 127.0.0.1 unless --host says otherwise (0.0.0.0: every
interface; the server has no authentication, so only on a network you trust).

`--fallback BC_RUN [--latency-budget-ms MS]`: a backup policy (usually a BC student from
`dpjax distill RUN --method bc`) whose chunk is sent instead where the primary's is
non-finite, outside the data's action bounds, or not ready within the budget; GET /stats
counts each reason ("fallback", "fallback_rate"). Requests are then served one at a time.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a trained policy to robot clients over a websocket",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument("--sampler", help="sampler (default: the policy's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the policy's)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best-validation checkpoint")
    which.add_argument("--step", type=int, help="the checkpoint of this training step")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="most requests batched into one call (1: no batching)")  # fmt: skip
    parser.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="how long a request waits for others to batch with (default 0)")  # fmt: skip
    parser.add_argument("--control-hz", type=float,
                        help="control rate told to clients (default: the dataset's task's)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the server's own keys")
    parser.add_argument("--fallback", metavar="BC_RUN", help="backup policy's run directory")
    parser.add_argument("--latency-budget-ms", type=float,
                        help="with --fallback: send the backup's chunk past this budget")  # fmt: skip
    parser.set_defaults(func=run)


def run(args) -> int:
    import asyncio

    from dpjax.server import PolicyServer

    server = PolicyServer.from_run(
        args.run_dir, best=args.best, step=args.step, control_hz=args.control_hz,
        sampler=args.sampler, num_inference_steps=args.steps, max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms, seed=args.seed, fallback=args.fallback,
        latency_budget_ms=args.latency_budget_ms,
    )  # fmt: skip
    meta = server.metadata()
    print(f"compiling {meta['policy_kind']} policy ({meta['sampler'] or 'regression'}"
          f"{'' if meta['sampler'] is None else ' ' + str(meta['num_inference_steps'])}, "
          f"batches up to {args.max_batch}) ...", flush=True)  # fmt: skip
    server.warm_up()

    def ready(port: int) -> None:
        print(f"serving {args.run_dir} (step {meta['checkpoint_step']}) on "
              f"ws://{args.host}:{port}  (stats: http://{args.host}:{port}/stats)", flush=True)  # fmt: skip

    try:
        asyncio.run(server.serve(args.host, args.port, ready=ready))
    except OSError as e:
        from dpjax.errors import DpjaxError

        raise DpjaxError(f"cannot listen on {args.host}:{args.port}: {e}") from e
    return 0
