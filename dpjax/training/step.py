"""Train state, optimizer, EMA and the data-parallel / FSDP train step over a device mesh.

The mesh has two axes, "data" and "fsdp" (`make_mesh`). The global batch is sampled inside
the jitted step from the dataset held on every device (`dpjax.data.sample_windows`), then
constrained to be split over all devices: XLA's SPMD partitioner gives each device its slice
of the batch and all-reduces the gradients. With an fsdp axis of N > 1 (`fsdp_devices`), the
large arrays of the train state (parameters, EMA, optimizer moments) are split N ways as
well (`state_shardings`), so each device holds ~1/N of them; XLA gathers a parameter where
the step uses it and reduce-scatters its gradient. The same code runs on one CPU, 8
simulated CPU devices, a GPU, or a multi-host TPU pod (`dpjax.training.distributed` starts
the processes); the result depends only on the global batch, not on the device count or
the sharding (up to float reduction order).

A streamed step (`streamed=True`) takes the batch as an argument instead: the host reads the
windows the in-memory step would draw from the same key (`StepRows`, `draw_step_rows`), so
streaming changes where the data lives, not what is trained.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dpjax.checkpoint import is_prng_key
from dpjax.config import OptimConfig
from dpjax.data.windows import Batch, WindowData, draw_window_rows, sample_windows
from dpjax.errors import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Arrays smaller than this stay replicated under FSDP: sharding them saves little memory and
# adds a gather each (biases, norms, small projections).
FSDP_MIN_BYTES = 1 << 16


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # () int32: optimizer steps taken
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # typed PRNG key; batches and noise of step s derive from it


def split_step_key(rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A step's key -> (the next step's key, the batch's key, the loss's key)."""
    rng, key_batch, key_loss = jax.random.split(rng, 3)
    return rng, key_batch, key_loss


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def draw_step_rows(rng: jax.Array, num_steps: int, batch_size: int, num_windows: int):
    """The window rows (num_steps, batch_size) that `num_steps` in-memory train steps from
    key `rng` sample, and the key after them."""

    def one(rng, _):
        rng, key_batch, _ = split_step_key(rng)
        return rng, draw_window_rows(key_batch, batch_size, num_windows)

    return jax.lax.scan(one, rng, None, length=num_steps)


def split_eval_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A validation batch's key -> (the batch's key, the loss's key)."""
    key_batch, key_loss = jax.random.split(key)
    return key_batch, key_loss


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def draw_eval_rows(key: jax.Array, num_batches: int, batch_size: int, num_windows: int):
    """The window rows (num_batches, batch_size) that `make_eval_loss` samples from `key`."""
    keys = jax.random.split(key, num_batches)
    return jax.vmap(lambda k: draw_window_rows(split_eval_key(k)[0], batch_size, num_windows))(keys)


class StepRows(Sequence):
    """The rows of the global batch that `num_steps` train steps starting from key `rng`
    draw: `rows[i]` (B,) is step i's (the `local` slice of them: this process's share).

    Random access for the loader's threads; computed `block` steps at a time (one jitted
    scan) as the steps come, so nothing of size num_steps x B is ever held.
    """

    def __init__(
        self, rng: jax.Array, num_steps: int, batch_size: int, num_windows: int,
        local: slice = slice(None), block: int = 256,
    ):  # fmt: skip
        self.num_steps, self.batch_size, self.num_windows = num_steps, batch_size, num_windows
        self.local, self.block = local, block
        self._start_keys = [rng]  # the key at the start of block b
        self._blocks: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_steps:
            raise IndexError(f"step {i} of {self.num_steps}")
        b, j = divmod(i, self.block)
        with self._lock:
            while len(self._start_keys) <= b:  # the chain of keys is sequential
                self._compute(len(self._start_keys) - 1)
            if b not in self._blocks:
                self._compute(b)
            rows = self._blocks[b]
            for old in [k for k in self._blocks if k < b - 1]:  # consumed in order
                del self._blocks[old]
        return rows[j, self.local]

    def _compute(self, b: int) -> None:
        end, rows = draw_step_rows(self._start_keys[b], self.block, self.batch_size,
                                   self.num_windows)  # fmt: skip
        self._blocks[b] = np.asarray(rows)
        if len(self._start_keys) == b + 1:
            self._start_keys.append(end)


def learning_rate_schedule(config: OptimConfig, num_steps: int) -> optax.Schedule:
    warmup = max(0, min(config.warmup_steps, num_steps - 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=0.0,
    )


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` written as one multiply: g * min(1, max_norm / ||g||).

    Same maths and state (none) as optax's, which picks between g and g / ||g|| * max_norm
    with a scalar-predicate select: on XLA:CPU that select makes the update after the
    gradients (clip, AdamW, EMA) of the 63.5M-parameter UNet ~2x slower (`python
    benchmarks/training.py --denoisers unet1d --clips dpjax optax --update-only`).
    Below the limit the scale is exactly 1, so gradients pass
    unchanged; a NaN norm propagates as in optax.
    """
    if not max_norm > 0:
        raise ConfigError(f"max_grad_norm must be positive, got {max_norm}")

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    config: OptimConfig,
    num_steps: int,
    clip: Callable[[float], optax.GradientTransformation] = clip_by_global_norm,
) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the warmup + cosine schedule.

    `clip` builds the clipping transform from `config.max_grad_norm`; pass
    `optax.clip_by_global_norm` for optax's own (same maths, slower on CPU; for comparison).
    """
    return optax.chain(
        clip(config.max_grad_norm),
        optax.adamw(
            learning_rate_schedule(config, num_steps),
            b1=config.b1,
            b2=config.b2,
            weight_decay=config.weight_decay,
        ),
    )


def ema_decay(config: OptimConfig, step: jnp.ndarray) -> jnp.ndarray:
    """Diffusion Policy's EMA warmup: 1 - (1 + s / inv_gamma)^-power, capped; 0 at s <= 0."""
    s = jnp.maximum(step.astype(jnp.float32) - 1.0, 0.0)
    value = 1.0 - (1.0 + s / config.ema_inv_gamma) ** (-config.ema_power)
    return jnp.where(s > 0, jnp.clip(value, 0.0, config.ema_max_decay), 0.0)


def ema_update(ema_params, params, decay):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def init_train_state(params, optimizer: optax.GradientTransformation, rng: jax.Array):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        rng=rng,
    )


def make_mesh(num_devices: int | None = None, fsdp_devices: int = 1) -> Mesh:
    """A (data, fsdp) mesh over the first `num_devices` devices (all by default): groups of
    `fsdp_devices` consecutive devices (one process's, where it has that many) share the
    large arrays of the train state; the batch is split over every device."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ConfigError(f"num_devices={num_devices}, but {len(devices)} device(s) exist")
        devices = devices[:num_devices]
    if fsdp_devices < 1 or len(devices) % fsdp_devices:
        raise ConfigError(
            f"fsdp_devices={fsdp_devices} must be >= 1 and divide the {len(devices)} device(s)"
        )
    grid = np.asarray(devices).reshape(len(devices) // fsdp_devices, fsdp_devices)
    return Mesh(grid, (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _or_replicated(sharding, mesh: Mesh):
    return replicated(mesh) if sharding is None else sharding


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec((DATA_AXIS, FSDP_AXIS)))


def fsdp_spec(shape: tuple[int, ...], itemsize: int, fsdp_devices: int) -> PartitionSpec:
    """Where an array of `shape` lives under FSDP: split along its largest axis that the
    `fsdp_devices` divide, if it holds at least FSDP_MIN_BYTES; else replicated."""
    size = int(np.prod(shape, dtype=np.int64)) * itemsize
    if fsdp_devices == 1 or size < FSDP_MIN_BYTES:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_devices == 0:
            return PartitionSpec(*[FSDP_AXIS if a == axis else None for a in range(len(shape))])
    return PartitionSpec()


def state_shardings(tree, mesh: Mesh):
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs: a train state, a
    teacher's parameters): `fsdp_spec` over the mesh's fsdp axis; PRNG keys and small
    arrays replicated. With an fsdp axis of 1 everything is replicated (data parallel)."""
    fsdp_devices = mesh.shape[FSDP_AXIS]

    def sharding(x) -> NamedSharding:
        if is_prng_key(x):
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(x.shape, np.dtype(x.dtype).itemsize, fsdp_devices))

    return jax.tree.map(sharding, tree)


def bytes_per_device(tree) -> dict:
    """{device: bytes of `tree`'s arrays held there} (this process's devices)."""
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        if is_prng_key(leaf):
            leaf = jax.random.key_data(leaf)
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


def local_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch that this process's devices hold (`batch_sharded`)."""
    index_map = batch_sharded(mesh).addressable_devices_indices_map((batch_size,))
    starts = [index[0].indices(batch_size)[:2] for index in index_map.values()]
    lo, hi = min(a for a, _ in starts), max(b for _, b in starts)
    if sum(b - a for a, b in set(starts)) != hi - lo:
        raise ConfigError("this process's devices do not hold one contiguous part of the batch")
    return slice(lo, hi)


def host_key(rng: jax.Array) -> jax.Array:
    """A (replicated, possibly multi-process) PRNG key as a key on this process's default
    device, for host-side work that must not become a program across processes."""
    data = np.asarray(jax.random.key_data(rng).addressable_data(0))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rng))


def put_batch(local_batch: Batch, mesh: Mesh, batch_size: int) -> Batch:
    """This process's rows (`local_rows`) of a global batch -> the global batch, split over
    the mesh (`batch_sharded`)."""
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local_batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x, (batch_size, *x.shape[1:])),
        local_batch,
    )


LossFn = Callable[[Any, dict, jax.Array], tuple[jnp.ndarray, dict]]


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    optim_config: OptimConfig,
    mesh: Mesh,
    batch_size: int,
    num_steps: int,
    with_frozen: bool = False,
    state_sharding: Any = None,
    frozen_sharding: Any = None,
    streamed: bool = False,
):
    """Jitted `(state, data: WindowData) -> (state, metrics)`; batch sharded over the mesh.
    `streamed`: `(state, batch) -> (state, metrics)` instead, the batch (global, split over
    the mesh: `put_batch`) read by the host; the step's keys are split the same way.

    `batch_size` is the global batch; it must divide evenly over the mesh. `with_frozen`:
    the step is `(state, data, frozen)` and the loss `loss_fn(params, batch, key, frozen)`,
    where `frozen` is a pytree that is read, never trained (a distillation teacher's params).
    `state_sharding` / `frozen_sharding`: where the train state / frozen tree live (a
    sharding or a tree of them, `state_shardings`); replicated by default. Under FSDP XLA
    gathers each sharded parameter where the step needs it and reduce-scatters its gradient.
    """
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        raise ConfigError(f"batch_size {batch_size} is not divisible by {num_devices} devices")
    lr = learning_rate_schedule(optim_config, num_steps)

    def step(state: TrainState, source: WindowData | Batch, *frozen):
        rng, key_batch, key_loss = split_step_key(state.rng)
        batch = source if streamed else sample_windows(source, key_batch, batch_size)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, key_loss, *frozen
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        ema_params = ema_update(state.ema_params, params, ema_decay(optim_config, new_step))
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": lr(state.step),
        }
        new_state = TrainState(new_step, params, ema_params, opt_state, rng)
        return new_state, metrics

    state_sharding = _or_replicated(state_sharding, mesh)
    frozen_sharding = _or_replicated(frozen_sharding, mesh)
    source_sharding = batch_sharded(mesh) if streamed else replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding, source_sharding)
        + ((frozen_sharding,) if with_frozen else ()),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
    )


def make_eval_loss(
    loss_fn: LossFn,
    mesh: Mesh,
    batch_size: int,
    num_batches: int,
    with_frozen: bool = False,
    params_sharding: Any = None,
    frozen_sharding: Any = None,
    streamed: bool = False,
):
    """Jitted `(params, data, key[, frozen]) -> mean loss` over `num_batches` fixed-key
    batches (`frozen` and the shardings as in `make_train_step`). `streamed`: `data` is
    instead the batches themselves, stacked (num_batches, batch_size, ...): the windows
    `draw_eval_rows` names, read by the host."""

    def evaluate(params, data: WindowData | Batch, key: jax.Array, *frozen):
        def one(carry, xs):
            k, batch = xs
            key_batch, key_loss = split_eval_key(k)
            if batch is None:
                batch = sample_windows(data, key_batch, batch_size)
            batch = jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
            loss, _ = loss_fn(params, batch, key_loss, *frozen)
            return carry + loss, None

        xs = (jax.random.split(key, num_batches), data if streamed else None)
        total, _ = jax.lax.scan(one, jnp.zeros(()), xs)
        return total / num_batches

    params_sharding = _or_replicated(params_sharding, mesh)
    frozen_sharding = _or_replicated(frozen_sharding, mesh)
    shardings = (params_sharding, replicated(mesh), None)
    return jax.jit(evaluate, in_shardings=shardings + ((frozen_sharding,) if with_frozen else ()))


def put_replicated(tree, mesh: Mesh):
    """`tree` (host or single-device arrays, the same in every process) on every device of
    `mesh`."""
    return put_on_mesh(tree, replicated(mesh))


def put_on_mesh(tree, sharding):
    """`tree` (host or single-device arrays, the same in every process) placed by `sharding`
    (one for every leaf, or a tree of them). Across processes each one builds its own
    devices' shards (device_put only reaches this process's devices)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x, where):
        if is_prng_key(x):
            return jax.random.wrap_key_data(
                put(jax.random.key_data(x), where), impl=jax.random.key_impl(x)
            )
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, where, lambda index: x[index])

    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: put(x, sharding), tree)
    return jax.tree.map(put, tree, sharding)
