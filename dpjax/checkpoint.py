"""Orbax save / restore / resume of a training state with its JSON metadata.

A checkpoint is one orbax step directory holding three items: `state` (the pytree
of arrays, written by `StandardSave`), `metadata` (the caller's JSON) and `layout`
(our own JSON: leaf paths, shapes, dtypes, PRNG-key implementations, CRC32 of
each leaf, the validation loss), plus orbax's own `metrics` (the validation loss) from which
its BestN policy keeps the best step beside the latest ones. Orbax writes a step into
`<step>.orbax-checkpoint-tmp*` and renames it when complete, so a killed
process never leaves a step directory that `all_steps` would list; old steps are
renamed into `.trash/` before being deleted for the same reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dpjax.errors import CheckpointError, ConfigError, DataError

__all__ = ["Checkpointer", "is_prng_key", "save_json_atomic", "load_json", "leaf_path"]

_FORMAT_VERSION = 1
_STATE, _METADATA, _LAYOUT = "state", "metadata", "layout"
_TRASH = ".trash"
_CHECKPOINTS, _BEST = "checkpoints", "best"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- small JSON files


def save_json_atomic(path: str | Path, obj: Any) -> None:
    """Writes `obj` as JSON so that `path` holds either the old or the whole new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot write {path}: not JSON-serializable ({e})") from e
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_json(path: str | Path, what: str, *, error: type[Exception] = DataError) -> Any:
    """Reads the JSON file `path` (described as `what` in errors); raises `error` if missing
    or corrupt (DataError by default; pass CheckpointError for checkpoint files)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise error(f"{what} not found: {path}") from e
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is corrupt or half-written (invalid JSON: {e})") from e


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- pytree <-> nested dict


def _key_name(k) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def leaf_path(key_path) -> str:
    """`params/denoiser/Dense_0/kernel` for a jax key path (the names used in errors)."""
    return "/".join(_key_name(k) for k in key_path)


def _flatten(tree) -> tuple[list[tuple[str, Any]], Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [(leaf_path(p), leaf) for p, leaf in with_path]
    seen: set[str] = set()
    for path, _ in leaves:
        if path in seen:
            raise ConfigError(f"two leaves of the state share the path {path!r}")
        seen.add(path)
    return leaves, treedef


def _nest(flat: dict[str, Any]) -> dict:
    """{'a/b': x} -> {'a': {'b': x}}; orbax stores nested dicts of arrays."""
    root: dict = {}
    for path, value in flat.items():
        parts = path.split("/") if path else ["_"]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"state leaf path {path!r} clashes with another leaf")
        if parts[-1] in node:
            raise ConfigError(f"state leaf path {path!r} clashes with another leaf")
        node[parts[-1]] = value
    return root


def _get(nested: dict, path: str):
    node = nested
    for part in path.split("/") if path else ["_"]:
        node = node[part]
    return node


def is_prng_key(x) -> bool:
    """Whether `x` (an array, a ShapeDtypeStruct or anything else) is a typed PRNG key array."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _as_array_like(x):
    """Non-jax leaves as numpy arrays of the dtype jax would give them (restores are jax
    arrays, so an int64 leaf comes back int32 unless jax_enable_x64 is on)."""
    if isinstance(x, jax.Array | jax.ShapeDtypeStruct):
        return x
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def _crc32(x) -> int | None:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.sharding.is_fully_replicated:
            return None  # split across processes: no process sees the whole array
        x = x.addressable_shards[0].data  # a whole copy
    return zlib.crc32(np.ascontiguousarray(np.asarray(x)).view(np.uint8).reshape(-1))


def _fmt_shape(shape) -> str:
    return str(tuple(int(d) for d in shape))


# ----------------------------------------------------------------------------- Checkpointer


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints under `directory/checkpoints` and (with
    `keep_best`) also the one with the lowest validation loss, wherever it falls: orbax's
    own preservation policies (LatestN or BestN) decide what is kept, from the `val_loss`
    metric orbax stores with each step.

    Saves are synchronous and atomic; restores check tree structure, shapes and dtypes
    against `abstract_state` and every leaf's CRC32 before returning.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_to_keep: int = 3,
        keep_best: bool = True,
        verify_checksums: bool = True,
        read_only: bool = False,
    ):
        """`read_only`: restore only; nothing is created, cleaned or started in the background
        (what loading a trained policy uses)."""
        if max_to_keep < 1:
            raise ConfigError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.keep_best = keep_best
        self.verify_checksums = verify_checksums
        self.read_only = read_only
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._managers[_CHECKPOINTS] = self._make_manager(
            self.directory / _CHECKPOINTS, max_to_keep, keep_best, read_only
        )
        # Runs written before the best step lived among the others kept it in `best/`.
        legacy = self.directory / _BEST
        if keep_best and legacy.is_dir() and any(p.name.isdigit() for p in legacy.iterdir()):
            self._managers[_BEST] = self._make_manager(legacy, 1, False, read_only=True)

    @staticmethod
    def _make_manager(
        path: Path, keep: int, keep_best: bool, read_only: bool = False
    ) -> ocp.CheckpointManager:
        if not read_only:
            path.mkdir(parents=True, exist_ok=True)
            _empty_trash(path)
        writing = {} if read_only else {"todelete_subdir": _TRASH}
        policy = ocp.checkpoint_managers
        latest = policy.LatestN(n=keep)
        best = policy.BestN(
            get_metric_fn=_val_loss, reverse=True, n=1, keep_checkpoints_without_metrics=False
        )  # reverse: sorted by decreasing loss, BestN keeps the last (the lowest)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy.AnyPreservationPolicy([latest, best])
            if keep_best
            else latest,
            best_fn=_val_loss if keep_best else None,  # writes the metrics; best_step()
            best_mode="min",
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,
            **writing,
        )
        with _quiet_absl(read_only):  # orbax warns that read_only is read only
            return ocp.CheckpointManager(path, options=options)

    # ------------------------------------------------------------------------- save

    def save(self, step: int, state, *, metadata: dict, val_loss: float | None = None) -> None:
        """Writes `state` and `metadata` as checkpoint `step` and returns once it is on disk."""
        step = int(step)
        try:
            json.dumps(metadata, allow_nan=True)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"checkpoint metadata is not JSON-serializable: {e}") from e
        leaves, _ = _flatten(state)
        flat, layout_leaves = {}, {}
        for path, leaf in leaves:
            entry: dict[str, Any] = {}
            if is_prng_key(leaf):
                entry["key_impl"] = str(jax.random.key_impl(leaf))
                entry["key_dtype"] = str(leaf.dtype)
                leaf = jax.random.key_data(leaf)
            leaf = _as_array_like(leaf)
            entry["shape"] = [int(d) for d in leaf.shape]
            entry["dtype"] = str(np.dtype(leaf.dtype))
            if self.verify_checksums:
                entry["crc32"] = _crc32(leaf)
            flat[path] = leaf
            layout_leaves[path] = entry
        if not flat:
            raise ConfigError("cannot checkpoint a state with no array leaves")
        layout = {
            "format_version": _FORMAT_VERSION,
            "step": step,
            "val_loss": None if val_loss is None else float(val_loss),
            "leaves": layout_leaves,
        }
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(_nest(flat)),
                _METADATA: ocp.args.JsonSave(metadata),
                _LAYOUT: ocp.args.JsonSave(layout),
            }
        )
        finite = val_loss is not None and bool(np.isfinite(val_loss))
        metrics = {"val_loss": float(val_loss)} if finite and self.keep_best else None
        manager = self._managers[_CHECKPOINTS]
        if step in manager.all_steps():
            raise CheckpointError(f"step {step} is already saved in {manager.directory}")
        try:
            with _quiet_absl(metrics is None):  # orbax warns of a step without its metric
                saved = manager.save(step, args=args, metrics=metrics, force=True)
                manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"saving step {step} to {manager.directory} failed: {e}") from e
        if not saved:
            raise CheckpointError(f"orbax declined to save step {step} in {manager.directory}")
        _empty_trash(Path(manager.directory))

    # ------------------------------------------------------------------------- queries

    def all_steps(self, *, best: bool = False) -> list[int]:
        """Every kept step (the best among them), or with `best` the best step alone."""
        if best:
            step = self._best()[1]
            return [] if step is None else [step]
        manager = self._managers[_CHECKPOINTS]
        manager.reload()
        return sorted(int(s) for s in manager.all_steps())

    def latest_step(self, *, best: bool = False) -> int | None:
        steps = self.all_steps(best=best)
        return steps[-1] if steps else None

    @property
    def best_val_loss(self) -> float | None:
        """The best step's validation loss (read from its layout), or None."""
        if not self.keep_best:
            return None
        which, step = self._best()
        if step is None:
            return None
        return self._read_items(which, step, (_LAYOUT,))[_LAYOUT].get("val_loss")

    def step_dir(self, step: int, *, best: bool = False) -> Path:
        which = self._best()[0] if best else _CHECKPOINTS
        return Path(self._managers[which].directory) / str(step)

    def _best(self) -> tuple[str, int | None]:
        """(manager, step) of the best checkpoint, step None when no kept step has a
        val_loss: in `checkpoints/`, or in the `best/` directory of a run written before when
        its validation loss is lower (or nothing in `checkpoints/` has one: a resumed older
        run keeps its best until a step beats it)."""
        if not self.keep_best:
            raise ConfigError("this Checkpointer was created with keep_best=False")
        checkpoints = self._managers[_CHECKPOINTS]
        checkpoints.reload()
        step = checkpoints.best_step()
        step = None if step is None else int(step)
        if _BEST not in self._managers:
            return _CHECKPOINTS, step
        legacy = self._managers[_BEST].latest_step()
        legacy = None if legacy is None else int(legacy)
        if step is None:
            return _BEST, legacy
        try:
            old = self._read_items(_BEST, legacy, (_LAYOUT,))[_LAYOUT].get("val_loss")
        except CheckpointError:
            return _CHECKPOINTS, step
        new = (checkpoints.metrics(step) or {}).get("val_loss")
        if old is not None and (new is None or old < new):
            return _BEST, legacy
        return _CHECKPOINTS, step

    def _resolve_step(self, step: int | None, best: bool) -> tuple[str, int]:
        """(manager, step) to restore: `step`, or the latest (the best with `best`)."""
        if best:
            which, best_step = self._best()
            steps = [] if best_step is None else [best_step]
        else:
            which, steps = _CHECKPOINTS, self.all_steps()
        if not steps:
            if best and self.all_steps():
                raise CheckpointError(
                    f"no kept checkpoint in {self.directory / _CHECKPOINTS} has a validation "
                    "loss, so none is the best (train with val_fraction > 0)"
                )
            raise CheckpointError(f"no checkpoint in {self.directory / which}")
        if step is None:
            return which, steps[-1]
        if int(step) not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory / which}; "
                f"available steps: {steps}"
            )
        return which, int(step)

    # ------------------------------------------------------------------------- restore

    def restore_metadata(self, step: int | None = None, *, best: bool = False) -> dict:
        which, step = self._resolve_step(step, best)
        return self._read_items(which, step, (_METADATA,))[_METADATA]

    def restore(self, abstract_state, step: int | None = None, *, best: bool = False):
        """Returns `(state, metadata)` restored into the structure, shapes, dtypes and
        shardings of `abstract_state` (arrays or `jax.ShapeDtypeStruct`s)."""
        which, step = self._resolve_step(step, best)
        path = Path(self._managers[which].directory) / str(step)
        layout = self._read_items(which, step, (_LAYOUT,))[_LAYOUT]
        saved = layout.get("leaves") if isinstance(layout, dict) else None
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"checkpoint {path} has no valid layout (not a dpjax checkpoint?)"
            )

        leaves, treedef = _flatten(abstract_state)
        _check_compatible(path, saved, leaves)

        targets = {}
        for p, leaf in leaves:
            entry = saved[p]
            targets[p] = jax.ShapeDtypeStruct(
                tuple(entry["shape"]), np.dtype(entry["dtype"]), sharding=_target_sharding(leaf)
            )
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardRestore(_nest(targets)), _METADATA: ocp.args.JsonRestore()}
        )
        restored = self._restore_items(which, step, args)
        nested, metadata = restored[_STATE], restored[_METADATA]

        out = []
        for p, _ in leaves:
            entry = saved[p]
            try:
                value = _get(nested, p)
            except (KeyError, TypeError) as e:
                raise CheckpointError(f"checkpoint {path} is missing leaf {p}") from e
            if tuple(value.shape) != tuple(entry["shape"]) or str(value.dtype) != entry["dtype"]:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: {p} restored as {value.dtype}"
                    f"{_fmt_shape(value.shape)}, saved as {entry['dtype']}{tuple(entry['shape'])}"
                )
            crc = entry.get("crc32")
            if self.verify_checksums and crc is not None:
                actual = _crc32(value)
                if actual is not None and actual != crc:
                    raise CheckpointError(
                        f"checkpoint {path} is corrupt: {p} does not match its checksum"
                    )
            if "key_impl" in entry:
                value = jax.random.wrap_key_data(value, impl=entry["key_impl"])
            out.append(value)
        return jax.tree_util.tree_unflatten(treedef, out), metadata

    def _read_items(self, which: str, step: int, names: tuple[str, ...]) -> dict:
        args = ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in names})
        restored = self._restore_items(which, step, args)
        return {n: restored[n] for n in names}

    def _restore_items(self, which: str, step: int, args):
        manager = self._managers[which]
        path = Path(manager.directory) / str(step)
        _ignore_closed_loop_callbacks()  # before: the first may come before the exception
        try:
            return manager.restore(step, args=args)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path} is unreadable (truncated or corrupt): {_describe(e)}"
            ) from e

    # ------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _quiet_absl(quiet: bool = True):
    """Orbax's warnings (absl) raised to errors-only while the block runs, when `quiet`."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    if quiet:
        absl_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_log.setLevel(level)


def _val_loss(metrics: dict) -> float:
    return float(metrics["val_loss"])


def _describe(error: BaseException) -> str:
    """One line per exception in the chain, without TensorStore's multi-kilobyte specs."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen and len(parts) < 4:
        seen.add(id(error))
        text = str(error).strip()
        text = text.split(" See full TensorStore details")[0]
        text = text.splitlines()[0] if text else ""
        parts.append(f"{type(error).__name__}: {text[:240]}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


def _ignore_closed_loop_callbacks() -> None:
    """After a failed restore, tensorstore reads still in flight complete on their threads
    and post to orbax's event loop, which `asyncio.run` has closed: Python would print one
    "RuntimeError: Event loop is closed" traceback per read. Drops exactly those."""
    previous = sys.unraisablehook
    if getattr(previous, "_dpjax_closed_loop_filter", False):
        return

    def hook(unraisable) -> None:
        if not (
            unraisable.object is None
            and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            previous(unraisable)

    hook._dpjax_closed_loop_filter = True
    sys.unraisablehook = hook


def _empty_trash(directory: Path) -> None:
    trash = directory / _TRASH
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)


def _target_sharding(leaf):
    """The sharding to restore a leaf into; key arrays map to the sharding of their data."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if is_prng_key(leaf) and not isinstance(
        sharding, jax.sharding.NamedSharding | jax.sharding.SingleDeviceSharding
    ):
        return jax.eval_shape(jax.random.key_data, leaf).sharding or (
            jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        )
    return sharding


def _check_compatible(path: Path, saved: dict, leaves: list[tuple[str, Any]]) -> None:
    problems = []
    expected_paths = set()
    for p, leaf in leaves:
        expected_paths.add(p)
        entry = saved.get(p)
        if entry is None:
            problems.append(f"{p}: expected leaf missing from the checkpoint")
            continue
        if is_prng_key(leaf):
            if "key_impl" not in entry:
                problems.append(
                    f"{p}: saved {entry['dtype']} array vs expected PRNG key {leaf.dtype}"
                )
                continue
            if entry.get("key_dtype") != str(leaf.dtype):
                problems.append(f"{p}: saved key {entry.get('key_dtype')} vs expected {leaf.dtype}")
                continue
            data = jax.eval_shape(jax.random.key_data, leaf)
            shape, dtype = data.shape, np.dtype(data.dtype)
        else:
            if "key_impl" in entry:
                problems.append(f"{p}: saved PRNG key {entry.get('key_dtype')} vs expected array")
                continue
            leaf = _as_array_like(leaf)
            shape, dtype = leaf.shape, np.dtype(leaf.dtype)
        if tuple(entry["shape"]) != tuple(shape):
            problems.append(
                f"{p}: saved {_fmt_shape(entry['shape'])} vs expected {_fmt_shape(shape)}"
            )
        elif entry["dtype"] != str(dtype):
            problems.append(f"{p}: saved {entry['dtype']} vs expected {dtype}")
    for p in saved:
        if p not in expected_paths:
            problems.append(f"{p}: saved leaf not in the expected state")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} does not match the expected state (incompatible config?): "
            f"{problems[0]}{more}"
        )
