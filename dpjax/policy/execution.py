"""Executing action chunks: which action the robot takes at each control step, given the
chunks planned so far, and how long each plan takes to arrive.

A policy plans every `action_horizon` (s) control steps: from the observation at step t it
predicts a chunk of L actions for steps t..t+L-1 (L = pred_horizon - obs_horizon + 1).
An inference takes `delay` (d) control steps: the chunk planned at t can only be executed
from t + d on, and until then the previous chunk goes on (the first chunk is waited for:
the robot starts at rest). Three ways to turn the chunks into actions (`EXECUTION_MODES`):

- "chunked": the newest arrived chunk's action for this step (Diffusion Policy's
  receding horizon; with d > 0 the switch to a new chunk can jump).
- "temporal_ensemble": ACT's temporal ensembling, the average of every arrived chunk's
  action for this step, the i-th oldest weighted exp(-ensemble_decay * i).
- "rtc": real-time chunking (Black et al. 2025): chunked execution, and each new chunk is
  sampled with inpainting guidance (`samplers.inpainting_guidance`) towards the actions the
  previous chunk will execute during the inference (weight 1 on the first d steps, then
  decaying to 0 where the previous chunk ends), so it continues what is already committed.

Everything here is pure jnp on small arrays: the compiled multimodal rollout runs it inside
its scan, the gym rollouts call it eagerly on the host. State: `chunks` (K, B, L, A), newest
first, and `starts` (K,) int32, the step each chunk was planned at (-BIG: empty slot).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax.numpy as jnp

from dpjax.errors import ConfigError, unknown_name

EXECUTION_MODES: tuple[str, ...] = ("chunked", "temporal_ensemble", "rtc")
_EMPTY = -(2**30)


@dataclasses.dataclass(frozen=True)
class Execution:
    mode: str = "chunked"
    delay: int = 0  # control steps one inference takes (simulated)
    ensemble_decay: float = 0.01  # ACT's m (temporal_ensemble)
    max_guidance: float = 5.0  # RTC's beta, the clip of the guidance weight (rtc; inf: none)

    def validate(self, *, plan_length: int, action_horizon: int, kind: str = "diffusion"):
        if self.mode not in EXECUTION_MODES:
            raise unknown_name("execution mode", self.mode, EXECUTION_MODES)
        if not (isinstance(self.delay, int) and self.delay >= 0):
            raise ConfigError(f"delay must be an int >= 0 control steps, got {self.delay!r}")
        if self.delay + action_horizon > plan_length:
            raise ConfigError(
                f"delay ({self.delay}) + action_horizon ({action_horizon}) must be <= the "
                f"{plan_length} actions a chunk plans ahead (pred_horizon - obs_horizon + 1): "
                f"the previous chunk has to last until the next one arrives; delays up to "
                f"{plan_length - action_horizon} fit"
            )
        if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise ConfigError(f"ensemble_decay must be finite and >= 0, got {self.ensemble_decay}")
        if not self.max_guidance >= 0:  # inf: unclipped pseudo-inverse guidance
            raise ConfigError(
                f"max_guidance must be >= 0 (inf: unclipped), got {self.max_guidance}"
            )
        if self.mode == "rtc" and kind != "diffusion":
            raise ConfigError(
                "execution mode 'rtc' guides a diffusion policy's denoiser; a "
                f"{kind!r} policy has none (use 'chunked' or 'temporal_ensemble')"
            )


class ExecutionState(NamedTuple):
    chunks: jnp.ndarray  # (K, B, L, A), newest first
    starts: jnp.ndarray  # (K,) int32


def num_slots(plan_length: int, action_horizon: int) -> int:
    """Chunks kept: every one that can still cover a step, plus the one in flight."""
    return -(-plan_length // action_horizon) + 1


def empty_state(batch: int, plan_length: int, action_dim: int, action_horizon: int, dtype=None):
    k = num_slots(plan_length, action_horizon)
    return ExecutionState(
        jnp.zeros((k, batch, plan_length, action_dim), dtype or jnp.float32),
        jnp.full((k,), _EMPTY, jnp.int32),
    )


def add_chunk(state: ExecutionState, chunk: jnp.ndarray, t) -> ExecutionState:
    """The state after planning `chunk` (B, L, A) at step t."""
    return ExecutionState(
        jnp.concatenate([chunk[None].astype(state.chunks.dtype), state.chunks[:-1]]),
        jnp.concatenate([jnp.asarray(t, jnp.int32)[None], state.starts[:-1]]),
    )


def _arrived(starts: jnp.ndarray, t, delay: int) -> jnp.ndarray:
    """(K,) bool: planned, and executable at step t (the first chunk, at 0, is waited for)."""
    return (starts >= 0) & (starts <= t) & ((starts + delay <= t) | (starts == 0))


def action(state: ExecutionState, t, execution: Execution) -> jnp.ndarray:
    """(B, A): the action executed at step t."""
    plan_length = state.chunks.shape[2]
    offsets = t - state.starts
    covering = (offsets < plan_length) & _arrived(state.starts, t, execution.delay)
    index = jnp.clip(offsets, 0, plan_length - 1)
    actions = jnp.take_along_axis(state.chunks, index[:, None, None, None], axis=2)[:, :, 0]
    if execution.mode == "temporal_ensemble":
        # Slots are newest first: the i-th oldest covering chunk has i covering slots after it.
        older = jnp.cumsum(covering[::-1])[::-1] - covering
        weights = jnp.where(covering, jnp.exp(-execution.ensemble_decay * older), 0.0)
        weights = weights / jnp.maximum(weights.sum(), 1e-30)
        return jnp.tensordot(weights.astype(actions.dtype), actions, axes=1)
    newest = jnp.argmax(covering)  # first True: the newest chunk that has arrived
    return actions[newest]


def rtc_weights(plan_length: int, action_horizon: int, delay: int) -> jnp.ndarray:
    """(L,) RTC's soft mask over the new chunk: 1 on the d steps executed while it is being
    computed, then c (e^c - 1) / (e - 1) with c = (L - s - i) / (L - s - d + 1), 0 from
    step L - s on (where the previous chunk ends)."""
    i = jnp.arange(plan_length)
    c = (plan_length - action_horizon - i) / (plan_length - action_horizon - delay + 1)
    soft = c * jnp.expm1(c) / jnp.expm1(1.0)
    return jnp.where(i < delay, 1.0, jnp.where(i < plan_length - action_horizon, soft, 0.0))


def guide(state: ExecutionState, t, execution: Execution, action_horizon: int):
    """(target (B, L, A), weights (L,)) for a chunk planned at step t under "rtc": what the
    newest arrived chunk executes from t on, and `rtc_weights` (zero before any chunk)."""
    plan_length = state.chunks.shape[2]
    arrived = _arrived(state.starts, t, execution.delay)
    newest = jnp.argmax(arrived)
    offset = t - state.starts[newest]
    index = jnp.clip(offset + jnp.arange(plan_length), 0, plan_length - 1)
    target = state.chunks[newest][:, index]
    covered = (offset + jnp.arange(plan_length) < plan_length) & arrived[newest]
    weights = rtc_weights(plan_length, action_horizon, execution.delay) * covered
    return target, weights
