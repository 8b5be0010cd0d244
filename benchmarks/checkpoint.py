"""Checkpoint cost: save and restore of a real train state, with and without dpjax's CRC32.

The state is what `dpjax train` checkpoints (dpjax.training.step.TrainState: parameters, EMA
parameters, AdamW's two moments, step, PRNG key) for a policy in the PushT state shape (see
_common.py): for the UNet, 4 x 63.5M float32 values (about 1 GB). Each row times
`dpjax.checkpoint.Checkpointer.save` (synchronous, atomic, orbax underneath) and `restore`
(structure/shape/dtype checks, then the per-leaf CRC32 when `verify_checksums`) with checksums
on and off, side by side, and the CRC32 pass alone over host copies (a restore's check also
copies each restored leaf to the host, which is most of its cost).

    python benchmarks/checkpoint.py                      # the UNet, 3 repeats, ~1-2 minutes here
    python benchmarks/checkpoint.py --denoisers mlp unet1d --repeats 5 --json checkpoint.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

COLUMNS = [
    ("denoiser", "s"),
    ("params", ","),
    ("state_mb|state MB", ".0f"),
    ("save_s|save s", ".2f"),
    ("save_nocrc_s|save s, no CRC", ".2f"),
    ("restore_s|restore s", ".2f"),
    ("restore_nocrc_s|restore s, no CRC", ".2f"),
    ("crc_s|CRC32 pass alone s", ".2f"),
    ("overhead|checksums' cost, save + restore", ".0%"),
]


def train_state(denoiser: str):
    """(TrainState, parameter count) for `denoiser` in the PushT shape, as `dpjax train`
    builds it."""
    import jax

    from dpjax import config as config_lib
    from dpjax.training import step as train_lib

    policy = _common.make_pusht_policy(denoiser)
    params = policy.init(jax.random.key(0))
    tx = train_lib.make_optimizer(config_lib.OptimConfig(), 1000)
    state = train_lib.init_train_state(params, tx, jax.random.key(1))
    return state, sum(int(x.size) for x in jax.tree.leaves(params))


def crc_pass(state) -> float:
    """Seconds for one CRC32 of every leaf (what save adds and restore repeats)."""
    import jax
    import numpy as np

    from dpjax.checkpoint import _crc32

    leaves = [
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        for x in jax.tree.leaves(state)
    ]
    leaves = [np.asarray(x) for x in leaves]  # host copies, as the save makes them
    t0 = time.perf_counter()
    for leaf in leaves:
        _crc32(leaf)
    return time.perf_counter() - t0


def measure(denoiser: str, repeats: int) -> dict:
    import jax

    from dpjax.checkpoint import Checkpointer

    state, n_params = train_state(denoiser)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    state_mb = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) / 1e6
    crc_s = statistics.median(crc_pass(state) for _ in range(repeats))
    times = {}
    for checksums in (True, False):
        saves, restores = [], []
        with tempfile.TemporaryDirectory() as directory:
            # every step kept: a save then never also deletes the previous 1 GB step
            keep = repeats + 1
            with Checkpointer(directory, max_to_keep=keep, verify_checksums=checksums) as ckpt:
                for step in range(repeats):
                    t0 = time.perf_counter()
                    ckpt.save(step, state, metadata={"step": step})
                    saves.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    restored, _ = ckpt.restore(abstract)
                    jax.block_until_ready(restored)
                    restores.append(time.perf_counter() - t0)
        times[checksums] = statistics.median(saves), statistics.median(restores)
    (save_s, restore_s), (save_off, restore_off) = times[True], times[False]
    return {
        "denoiser": denoiser,
        "params": n_params,
        "state_mb": state_mb,
        "save_s": save_s,
        "save_nocrc_s": save_off,
        "restore_s": restore_s,
        "restore_nocrc_s": restore_off,
        "crc_s": crc_s,
        "overhead": (save_s + restore_s) / (save_off + restore_off) - 1,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--denoisers", nargs="+", default=["unet1d"], choices=_common.DENOISERS)
    parser.add_argument("--repeats", type=int, default=3, help="saves and restores per row")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    print(_common.header("checkpoint save / restore (median of --repeats)"))
    rows = [measure(d, args.repeats) for d in args.denoisers]
    print(_common.markdown_table(COLUMNS, rows))
    _common.write_json(args.json, "checkpoint", args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
