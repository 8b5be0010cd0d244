"""Training throughput: steps/s and samples/s of dpjax's real train step for each denoiser.

The step is `dpjax.training.step.make_train_step` (what `dpjax train` runs): window sampling on device,
observation encoder, diffusion loss, gradients, global-norm clipping, AdamW, EMA, with the
train state donated, over a mesh of `--devices` devices. Policies are in the PushT state shape
(see _common.py); the data are random PushT-shaped episodes. Device counts above the
machine's run in a child process with XLA_FLAGS=--xla_force_host_platform_device_count=N
(simulated CPU devices share the same cores: this checks the data-parallel path, not scaling).

    python benchmarks/training.py                 # batch 64, 1 device, ~2 minutes here
    python benchmarks/training.py --full --json training.json   # batch 64 and 256, 1 and 8 devices
    python benchmarks/training.py --denoisers unet1d --clips dpjax optax   # dpjax's clip vs optax's
    python benchmarks/training.py --denoisers unet1d --clips dpjax optax --update-only
    python benchmarks/training.py --denoisers unet1d --precisions float32 bfloat16-matmul
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

COLUMNS = [
    ("denoiser", "s"),
    ("params", ","),
    ("batch", "d"),
    ("devices", "d"),
    ("clip", "s"),
    ("precision", "s"),
    ("step_s|s/step", ".3f"),
    ("min_step_s|min s/step", ".3f"),
    ("steps_per_s|steps/s", ".2f"),
    ("samples_per_s|samples/s", ".0f"),
    ("compile_s|compile (s)", ".1f"),
]

# Global-norm gradient clipping: dpjax's multiply (what `dpjax train` runs) and optax's select,
# the same maths; `--clips dpjax optax` times the whole train step with each.
CLIPS = ("dpjax", "optax")


def make_optimizer(optim, clip: str):
    """`dpjax.training.step.make_optimizer` (10,000-step schedule) with dpjax's or optax's clipping."""
    import optax

    from dpjax.training import step as train_lib

    clip_fn = optax.clip_by_global_norm if clip == "optax" else train_lib.clip_by_global_norm
    return train_lib.make_optimizer(optim, 10_000, clip=clip_fn)


UPDATE_COLUMNS = [("denoiser", "s"), ("clip", "s"), ("update_ms|ms", ".1f"),
                  ("min_update_ms|min ms", ".1f")]  # fmt: skip


def pusht_episodes(num_episodes: int = 64, length: int = 40, seed: int = 0):
    import numpy as np

    from dpjax.envs.base import make_episode

    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(num_episodes):
        states = rng.uniform(-1, 1, (length, _common.STATE_DIM)).astype(np.float32)
        actions = rng.uniform(-1, 1, (length, _common.ACTION_DIM)).astype(np.float32)
        meta = {"task": "pusht_shape", "seed": e, "expert": "random", "success": False}
        episodes.append(
            make_episode(
                [{"state": s} for s in states],
                list(actions),
                [0.0] * length,
                terminated=True,
                metadata=meta,
            )  # fmt: skip
        )
    return episodes


def make_step(
    denoiser: str, batch_size: int, devices: int, dtype: str = "float32", clip: str = "dpjax"
):
    """(step, state, data, policy): dpjax's jitted train step and its inputs, placed on the mesh.

    `clip`: "dpjax" (dpjax.training.step.clip_by_global_norm, what `dpjax train` runs) or "optax"
    (optax.clip_by_global_norm: same maths, the comparison for CLIPS)."""
    import jax

    from dpjax import config as config_lib
    from dpjax.data import make_window_data
    from dpjax.training import step as train_lib

    policy = _common.make_pusht_policy(denoiser, dtype)
    c = policy.config
    mesh = train_lib.make_mesh(devices)
    optim = config_lib.OptimConfig()
    tx = make_optimizer(optim, clip)
    params = policy.init(jax.random.key(0))
    state = train_lib.put_replicated(
        train_lib.init_train_state(params, tx, jax.random.key(1)), mesh
    )
    windows = make_window_data(
        pusht_episodes(),
        obs_horizon=c.obs_horizon,
        pred_horizon=c.pred_horizon,
        action_horizon=c.action_horizon,
    )
    data = train_lib.put_replicated(windows, mesh)
    step = train_lib.make_train_step(policy.loss, tx, optim, mesh, batch_size, 10_000)
    return step, state, data, policy


def bench(
    denoiser: str, batch_size: int, devices: int, seconds: float, clip: str,
    precision: str = "float32",
) -> dict:  # fmt: skip
    import jax

    from dpjax.nets import count_params

    dtype = "bf16-matmul" if precision == "bfloat16-matmul" else "float32"
    step, state, data, _ = make_step(denoiser, batch_size, devices, dtype, clip=clip)
    n_params = count_params(state.params)
    t0 = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - t0
    holder = {"state": state}

    def one():
        holder["state"], m = step(holder["state"], data)
        jax.block_until_ready(m)

    timing = _common.time_call(one, min_seconds=seconds, min_repeats=3)
    per_step = timing["median_s"]
    return {
        "denoiser": denoiser,
        "params": n_params,
        "batch": batch_size,
        "devices": devices,
        "clip": clip,
        "precision": precision,
        "step_s": per_step,
        "min_step_s": timing["min_s"],
        "repeats": timing["repeats"],
        "steps_per_s": 1 / per_step,
        "samples_per_s": batch_size / per_step,
        "compile_s": max(first_s - per_step, 0.0),
    }


def bench_update(denoiser: str, clip: str, seconds: float) -> dict:
    """The train step's update alone (clip, AdamW, EMA over the denoiser's parameters), donated
    like the step's state; the gradients are fixed arrays passed in, as the step's are."""
    import jax
    import optax

    from dpjax import config as config_lib
    from dpjax.training import step as train_lib

    optim = config_lib.OptimConfig()
    tx = make_optimizer(optim, clip)
    params = _common.make_pusht_policy(denoiser).init(jax.random.key(0))
    grads = jax.tree.map(lambda p: 0.01 * p + 1.0, params)  # norm far above max_grad_norm

    def update(params, ema, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, train_lib.ema_update(ema, params, 0.999), opt_state

    update = jax.jit(update, donate_argnums=(0, 1, 2))
    holder = {"state": update(params, jax.tree.map(jax.numpy.copy, params), tx.init(params), grads)}
    jax.block_until_ready(holder["state"])

    def one():
        holder["state"] = update(*holder["state"], grads)
        jax.block_until_ready(holder["state"])

    timing = _common.time_call(one, min_seconds=seconds, min_repeats=3)
    return {"denoiser": denoiser, "clip": clip, "update_ms": 1e3 * timing["median_s"],
            "min_update_ms": 1e3 * timing["min_s"]}  # fmt: skip


def _run_child(args, devices: int) -> list[dict]:
    """The cases on `devices` simulated devices, in a fresh process (XLA_FLAGS is read once)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--devices", str(devices),
               "--denoisers", *args.denoisers, "--batches", *map(str, args.batches),
               "--seconds", str(args.seconds), "--clips", *args.clips,
               "--precisions", *args.precisions, "--json", out]  # fmt: skip
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["rows"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--denoisers", nargs="+", default=list(_common.DENOISERS),
                        choices=list(_common.DENOISERS))  # fmt: skip
    parser.add_argument("--batches", type=int, nargs="+", default=[64])
    parser.add_argument("--devices", type=int, nargs="+", default=[1])
    parser.add_argument("--seconds", type=float, default=4.0, help="timing budget per case")
    parser.add_argument("--clips", nargs="+", default=["dpjax"], choices=list(CLIPS),
                        help="gradient clipping: dpjax's (default) and/or optax's")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16-matmul"],
                        help="PolicyConfig.precision of the step (dpjax.nets.precision)")  # fmt: skip
    parser.add_argument("--full", action="store_true", help="batch 64 and 256, 1 and 8 devices")
    parser.add_argument("--update-only", action="store_true",
                        help="time only the update after the gradients (clip, AdamW, EMA)")  # fmt: skip
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.full:
        args.batches, args.devices = [64, 256], [1, 8]
    import jax

    info = _common.machine()
    if args.update_only:
        rows = [bench_update(name, clip, args.seconds)
                for name in args.denoisers for clip in args.clips]  # fmt: skip
        print(_common.header("train step update alone: clip + AdamW + EMA", info))
        print(_common.markdown_table(UPDATE_COLUMNS, rows))
        _common.write_json(args.json, "training", args, rows)
        return 0
    rows = []
    for devices in args.devices:
        if devices > jax.device_count():
            rows += _run_child(args, devices)
            continue
        for name in args.denoisers:
            for batch, clip, precision in itertools.product(
                args.batches, args.clips, args.precisions
            ):
                r = bench(name, batch, devices, args.seconds, clip, precision)
                rows.append(r)
                print(f"{name:11s} batch={batch:4d} devices={devices} clip={clip} {precision} "
                      f"{r['step_s']:.3f} s/step "
                      f"(min {r['min_step_s']:.3f}) compile {r['compile_s']:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    print(_common.header("training step throughput (dpjax.training.step.make_train_step)", info))
    print(_common.markdown_table(COLUMNS, rows))
    _common.write_json(args.json, "training", args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
