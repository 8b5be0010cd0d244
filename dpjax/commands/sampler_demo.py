"""`dpjax sampler-demo`: every sampler on the seed's three-approach cup example, with an exact denoiser.

The data is the seed's multimodal grasp: approach from north (45%), east (40%) or south
(15%), as a 2-D Gaussian mixture whose exact epsilon-prediction is closed-form
(`dpjax.oracles`). Each sampler runs the whole reverse process as one compiled program; the
table shows how well it reproduces the three modes at each step count, and how long a batch
takes. Writes summary.json (and samplers.png with the `plot` extra) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_STEPS = (1, 2, 5, 10, 20, 100)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sampler-demo",
        help="every sampler on the seed's multimodal example, with an exact denoiser",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="dpjax_sampler_demo", help="directory for results")
    parser.add_argument("--samples", type=int, default=4000, help="samples per sampler and step")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--quick", action="store_true", help="a small size for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def mixture_error(mixture, x0) -> dict:
    """Mode frequencies and distances of the samples to what the mixture says."""
    import numpy as np

    from dpjax import oracles

    freqs = oracles.mode_frequencies(mixture, x0)
    modes = np.asarray(oracles.assign_modes(mixture, x0))
    x0 = np.asarray(x0)
    stds = [
        float(x0[modes == k].std(axis=0).mean()) if np.sum(modes == k) > 1 else float("nan")
        for k in range(3)
    ]
    return {
        "mode_frequencies": dict(zip(oracles.CUP_MODE_NAMES, map(float, freqs), strict=True)),
        "max_frequency_error": float(np.abs(freqs - np.asarray(mixture.weights)).max()),
        "mean_within_mode_std": float(np.nanmean(stds)),
    }


def run(args) -> int:
    import jax
    from tqdm import tqdm

    from dpjax import oracles, samplers, schedules

    if args.quick:
        args.samples, args.steps = 1000, [1, 10, 50]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = schedules.make_schedule("squaredcos_cap_v2", 100)
    mixture = oracles.cup_mixture()
    denoise = oracles.oracle_denoiser(mixture, schedule)
    key_noise, key_sampler = jax.random.split(jax.random.key(args.seed))
    x_T = jax.random.normal(key_noise, (args.samples, 2))
    methods = samplers.sampler_names()
    results, finals = [], {}
    cases = [(m, n) for m in methods for n in args.steps]
    for method, steps in tqdm(cases, desc="sampling", unit="case"):
        fn = jax.jit(
            lambda k, x, method=method, steps=steps: samplers.sample(
                denoise, x, schedule, sampler=method, num_inference_steps=steps, key=k
            )
        )
        x0 = jax.block_until_ready(fn(key_sampler, x_T))  # compiles
        t0 = time.perf_counter()
        x0 = jax.block_until_ready(fn(key_sampler, x_T))
        latency_ms = (time.perf_counter() - t0) * 1e3
        row = {"method": method, "steps": steps, "latency_ms": latency_ms}
        row.update(mixture_error(mixture, x0))
        results.append(row)
        finals[method, steps] = x0
    print_table(results, args.samples)
    summary = {
        "what": "samplers on the seed's cup mixture (exact denoiser), T=100 cosine schedule",
        "expert_mode_frequencies": dict(
            zip(oracles.CUP_MODE_NAMES, oracles.CUP_MODE_WEIGHTS, strict=True)
        ),
        "samples": args.samples,
        "results": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot = write_plot(finals, out / "samplers.png", methods, args.steps)
    print(f"\nwrote {out / 'summary.json'}" + (f" and {plot}" if plot else ""))
    return 0


def print_table(results: list[dict], num_samples: int) -> None:
    print(f"\nSeed's cup example: north/east/south = 0.45/0.40/0.15, {num_samples} samples each")
    print("| sampler | steps | north | east | south | max err | within-mode std | ms/batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f = r["mode_frequencies"]
        print(
            f"| {r['method']} | {r['steps']} | {f['north']:.3f} | {f['east']:.3f} | "
            f"{f['south']:.3f} | {r['max_frequency_error']:.3f} | "
            f"{r['mean_within_mode_std']:.3f} (0.250) | {r['latency_ms']:.1f} |"
        )


def write_plot(finals: dict, path: Path, methods, steps_list) -> Path | None:
    """A grid of scatter plots, sampler x step count; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(install the `plot` extra for samplers.png: pip install 'dpjax[plot]')")
        return None
    fig, axes = plt.subplots(
        len(methods),
        len(steps_list),
        figsize=(2.2 * len(steps_list), 2.2 * len(methods)),
        squeeze=False,
    )
    for i, method in enumerate(methods):
        for j, steps in enumerate(steps_list):
            ax = axes[i][j]
            x0 = finals[method, steps]
            ax.scatter(x0[:, 0], x0[:, 1], s=1, alpha=0.3)
            ax.set_xlim(-3.5, 3.5)
            ax.set_ylim(-3.5, 3.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{steps} steps")
            if j == 0:
                ax.set_ylabel(method)
    fig.suptitle("Samples of the cup mixture (N 45% / E 40% / S 15%) by sampler and steps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
