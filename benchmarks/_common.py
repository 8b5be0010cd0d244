"""Shared pieces of the performance benchmarks (sampling, training, roofline, vs_lerobot).

The policies are built exactly as `dpjax train` builds them, in Diffusion Policy's state-only
PushT shape: observation history 2, prediction horizon 16, 8 executed actions, 2-D actions and
an 18-D state per step (agent position 2 + keypoints 16, LeRobot's `observation.state` and
`observation.environment_state` side by side), so the UNet's global conditioning is 36-D and it
has 63,497,090 parameters like LeRobot's. Not a `dpjax bench` target (leading underscore).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dpjax.config import MLPConfig, TransformerConfig, UNet1DConfig
from dpjax.machine import cpu_model

STATE_DIM, ACTION_DIM = 18, 2
PUSHT = dict(
    action_dim=ACTION_DIM,
    obs_horizon=2,
    pred_horizon=16,
    action_horizon=8,
    low_dim_keys=("state",),
    low_dim_features=None,  # raw state as conditioning, as LeRobot's state-only policy does
)
# The three denoisers of the issue: the seed's fusion MLP, Diffusion Policy's UNet, a transformer.
DENOISERS: dict[str, Any] = {
    "mlp": MLPConfig(hidden_dims=(512, 512, 256)),
    "unet1d": UNet1DConfig(down_dims=(256, 512, 1024)),
    "transformer": TransformerConfig(width=256, num_layers=4, num_heads=4),
}
# float32; bfloat16 = bfloat16 weights and activations (PolicyConfig.dtype); bf16-weights =
# float32 activations with the temporal-conv kernels stored in bfloat16 (matmuls read half the
# bytes and accumulate in float32, see dpjax.nets.conv1d); bf16-matmul = PolicyConfig.precision
# "bfloat16-matmul" (float32 parameters, every matmul from bfloat16 operands).
DTYPES = ("float32", "bfloat16", "bf16-weights", "bf16-matmul")


def machine() -> dict[str, Any]:
    import jax

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    m = info or machine()
    flags = f", XLA_FLAGS={m['xla_flags']}" if m["xla_flags"] else ""
    return (
        f"{m['cpu']}, {m['cores']} cores; {m['backend']} ({m['device_kind']}) x {m['devices']}; "
        f"jax {m['jax']}, python {m['python']}{flags}"
    )


def load_average() -> str:
    """The 1-minute load: other processes on a shared machine are the main source of noise."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def time_call(
    fn: Callable[[], Any], *, min_seconds: float = 1.0, min_repeats: int = 3, max_repeats: int = 50
) -> dict[str, float]:
    """Wall times of `fn()` (already compiled; it must block until its result is ready).

    Returns median and min seconds and the number of calls; min is the least disturbed by other
    processes, the median what a user sees, and their ratio shows the noise.
    """
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (
        time.perf_counter() - start < min_seconds and len(times) < max_repeats
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def make_normalizer(keys: Sequence[str] = ("state",)):
    """Identity normalization (center 0, scale 1): timing does not depend on the statistics."""
    import jax.numpy as jnp

    from dpjax.data import Normalizer

    center = {"action": jnp.zeros((ACTION_DIM,))}
    scale = {"action": jnp.ones((ACTION_DIM,))}
    for key in keys:
        center[f"observation/{key}"] = jnp.zeros((STATE_DIM,))
        scale[f"observation/{key}"] = jnp.ones((STATE_DIM,))
    return Normalizer(center=center, scale=scale)


def make_pusht_policy(denoiser: str, dtype: str = "float32", **overrides):
    """A `DiffusionPolicy` in the PushT state shape with `denoiser`'s sizes (see DENOISERS)."""
    from dpjax import config as config_lib
    from dpjax import policy as policy_lib
    from dpjax.data.features import ArraySpec

    config_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    precision = "bfloat16-matmul" if dtype == "bf16-matmul" else "float32"
    config = config_lib.PolicyConfig(
        **PUSHT, denoiser=DENOISERS[denoiser], dtype=config_dtype, precision=precision,
        **overrides,
    )  # fmt: skip
    spec = {"state": ArraySpec((STATE_DIM,), "float32")}
    return policy_lib.make_policy(config, make_normalizer(), spec)


def cast_params(params, dtype: str):
    """Weights stored once, outside the sampler, as `dtype` (see DTYPES) asks."""
    import jax
    import jax.numpy as jnp

    if dtype in ("float32", "bf16-matmul"):  # bf16-matmul rounds inside the computation
        return params
    if dtype == "bfloat16":
        return jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    from dpjax.nets.conv1d import cast_conv_kernels

    return cast_conv_kernels(params, jnp.bfloat16)


def observation(batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"state": rng.uniform(-1, 1, (batch, PUSHT["obs_horizon"], STATE_DIM)).astype("f4")}


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """`columns` = (header, format spec applied to row[key]); header "key|Title" picks the key."""
    keys, titles, specs = [], [], []
    for head, spec in columns:
        key, _, title = head.partition("|")
        keys.append(key)
        titles.append(title or key)
        specs.append(spec)
    lines = ["| " + " | ".join(titles) + " |"]
    lines.append("|" + "|".join("---" if not s or s == "s" else "---:" for s in specs) + "|")
    for row in rows:
        cells = []
        for key, spec in zip(keys, specs, strict=True):
            value = row.get(key)
            cells.append("—" if value is None else format(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str | None, name: str, args, rows: list[dict], **extra) -> None:
    if not path:
        return
    payload = {
        "benchmark": name,
        "command": " ".join([os.path.basename(sys.argv[0]) or name, *sys.argv[1:]]),
        "argv": vars(args),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
        **extra,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)


def header(title: str, info: dict[str, Any] | None = None) -> str:
    return (
        f"# {title}\n# machine: {machine_line(info)}\n"
        f"# {time.strftime('%Y-%m-%d %H:%M')}, load average at start {load_average()}"
    )
