"""A trained policy's inference as one file that jax alone runs: `jax.export` StableHLO.

    dpjax export runs/pusht --out pusht.dpjax [--sampler ddim --steps 10] [--batch 1]

    from dpjax.export import load_exported        # imports jax and numpy only
    policy = load_exported("pusht.dpjax")
    actions = policy(observation, key_data)       # {key: (B, obs_horizon, ...)}, uint32 (2,)
    policy.metadata["observation_spec"], policy.metadata["action_horizon"]

The file is a zip: `policy.stablehlo` (the serialized `jax.export.Exported` of
`(params, observation, key data) -> (B, action_horizon, A)`: normalization, the encoder, the
whole sampler scan), `params.npz` (the EMA parameters, in the order the function takes them)
and `metadata.json` (observation spec, horizons, sampler, the normalizer's statistics for
reference, the platform it was lowered for). The batch size is symbolic unless `batch` is given,
so one file serves any batch. For the same key and observation it returns the actions
`load_policy(run).act` returns.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "dpjax-exported-policy"
FORMAT_VERSION = 1


class ExportedPolicy:
    """A loaded export: `__call__(observation, key_data) -> (B, action_horizon, A)` numpy."""

    def __init__(self, exported, params: list[np.ndarray], metadata: dict[str, Any]):
        self.exported = exported
        self.params = [jax.device_put(p) for p in params]
        self.metadata = metadata
        self._call = jax.jit(exported.call)

    def __call__(self, observation: dict[str, Any], key_data) -> np.ndarray:
        spec = self.metadata["observation_spec"]
        missing = sorted(set(spec) - set(observation))
        if missing:
            raise ValueError(f"observation is missing keys {missing}; expected {sorted(spec)}")
        obs = {k: np.asarray(observation[k], spec[k]["dtype"]) for k in spec}
        batch = self.metadata.get("batch")
        for k, value in obs.items():
            want = (self.metadata["obs_horizon"], *spec[k]["shape"])
            if (
                value.ndim != len(want) + 1
                or value.shape[1:] != want
                or (batch is not None and value.shape[0] != batch)
            ):
                raise ValueError(
                    f"observation {k!r}: expected shape ({batch or 'B'}, "
                    f"{', '.join(map(str, want))}), got {value.shape}"
                )
        key = np.asarray(key_data, np.uint32)
        return np.asarray(self._call(self.params, obs, key))


def export_policy(policy, params, path: str | Path, *, batch: int | None = None,
                  sampler: str | None = None, num_inference_steps: int | None = None,
                  info: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Writes `policy`'s inference with `params` to `path`; returns the path."""
    from jax import export

    options = {"sampler": sampler, "num_inference_steps": num_inference_steps}
    chunk_fn = policy.inference_fn(**options)
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def inference(flat_params, observation, key_data):
        tree = jax.tree_util.tree_unflatten(treedef, flat_params)
        return chunk_fn(tree, observation, jax.random.wrap_key_data(key_data))

    (b,) = export.symbolic_shape("b") if batch is None else (batch,)
    example = policy.example_observation(1)
    obs_specs = {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype) for k, v in example.items()}
    key_spec = jax.ShapeDtypeStruct(jax.random.key_data(jax.random.key(0)).shape, np.uint32)
    param_specs = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves]
    exported = export.export(jax.jit(inference))(param_specs, obs_specs, key_spec)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **policy.describe(sampler, num_inference_steps),
        "batch": batch,  # None: symbolic
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "normalizer": policy.normalizer.to_dict(),
        **(info or {}),
    }
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(x) for x in leaves])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("policy.stablehlo", bytes(exported.serialize()))
        z.writestr("params.npz", buffer.getvalue())
        z.writestr("metadata.json", json.dumps(metadata, indent=1))
    tmp.replace(path)  # a half-written file never takes the name
    return path


def load_exported(path: str | Path) -> ExportedPolicy:
    """An exported policy, with jax and numpy only; ValueError naming what is wrong."""
    from jax import export

    path = Path(path)

    def not_ours(why: str) -> ValueError:
        return ValueError(f"{path} is not a dpjax exported policy ({why})")

    try:
        with zipfile.ZipFile(path) as z:
            metadata = json.loads(z.read("metadata.json"))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
                raise not_ours(
                    f"format {metadata.get('format') if isinstance(metadata, dict) else metadata!r}"
                )
            if metadata.get("format_version", 0) > FORMAT_VERSION:
                raise ValueError(f"{path} is format version {metadata['format_version']}; this "
                                 f"dpjax reads up to {FORMAT_VERSION}")  # fmt: skip
            serialized = z.read("policy.stablehlo")
            with np.load(io.BytesIO(z.read("params.npz")), allow_pickle=False) as npz:
                params = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, EOFError) as e:
        raise not_ours(f"{type(e).__name__}: {e}") from e
    return ExportedPolicy(export.deserialize(bytearray(serialized)), params, metadata)
