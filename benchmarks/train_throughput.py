"""Training throughput: steps/s and samples/s of the full train step for each denoiser.

The step is dpjax's real one (`dpjax.train.make_train_step`): sample windows on device,
encode observations, diffusion loss, AdamW, EMA, over a mesh of `--devices` devices. Data is
the synthetic three-mode dataset (state 3-D, actions 2-D). Run:
`python benchmarks/train_throughput.py [--batch 64] [--devices 1] [--denoisers mlp unet1d ...]`
(for 8 simulated CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from dpjax import policy as policy_lib
from dpjax import train as train_lib
from dpjax.data import Normalizer, compute_stats, make_window_data
from dpjax.data.synthetic import three_mode_episodes
from dpjax.nets import count_params

# Diffusion Policy's PushT state setting: obs_horizon 2, pred_horizon 16, action_horizon 8.
CASES = {
    "mlp": dict(denoiser="mlp"),
    "unet1d": dict(denoiser="unet1d", down_dims=(256, 512, 1024)),
    "unet1d-small": dict(denoiser="unet1d", down_dims=(64, 128, 256)),
    "transformer": dict(denoiser="transformer", width=256, num_layers=4, num_heads=4),
}


def machine() -> str:
    import platform

    return (f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s), "
            f"{platform.machine()}; jax {jax.__version__}")  # fmt: skip


def bench(name: str, batch_size: int, devices: int, seconds: float) -> dict:
    episodes = three_mode_episodes(200, seed=0, length=32)
    stats = compute_stats(episodes)
    normalizer = Normalizer.from_stats(stats, ["action", "observation/state"])
    config = policy_lib.PolicyConfig(action_dim=2, **CASES[name])
    policy = policy_lib.make_policy(
        config, normalizer, policy_lib.observation_spec_from_stats(stats, ["state"])
    )
    mesh = train_lib.make_mesh(devices)
    optim = train_lib.OptimConfig()
    tx = train_lib.make_optimizer(optim, 10_000)
    params = policy.init(jax.random.key(0))
    state = train_lib.put_replicated(
        train_lib.init_train_state(params, tx, jax.random.key(1)), mesh
    )
    data = train_lib.put_replicated(
        make_window_data(episodes, obs_horizon=2, pred_horizon=16, action_horizon=8), mesh
    )
    step = train_lib.make_train_step(policy.loss, tx, optim, mesh, batch_size, 10_000)
    t0 = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    count, t0 = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - t0 < seconds:
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        count += 1
    per_step = (time.perf_counter() - t0) / count
    return {
        "denoiser": name,
        "params": count_params(params),
        "batch": batch_size,
        "devices": devices,
        "step_s": per_step,
        "steps_per_s": 1 / per_step,
        "samples_per_s": batch_size / per_step,
        "compile_s": compile_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--denoisers", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per case")
    args = parser.parse_args(argv)
    print(f"# train step throughput; machine: {machine()}")
    print("| denoiser | params | batch | devices | s/step | steps/s | samples/s | compile (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.denoisers:
        for batch in args.batch:
            r = bench(name, batch, args.devices, args.seconds)
            print(f"| {r['denoiser']} | {r['params']:,} | {r['batch']} | {r['devices']} | "
                  f"{r['step_s']:.3f} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.0f} | "
                  f"{r['compile_s']:.1f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
