"""A diffusion policy with a backup: the seed's "have a BC backup" as a policy wrapper.

`FallbackPolicy(primary, backup)` returns the primary's action chunk unless it is
  - non-finite (NaN / inf anywhere in an example's chunk),
  - out of the action bounds seen in the data by more than `margin` (the normalizer maps the
    data's min/max to [-1, 1]; an example is out when any |normalized action| > 1 + margin),
  - late: not ready `latency_budget_ms` after the call began (`act` only; the backup's chunk
    is computed first, the primary runs on a worker thread that is waited on until the
    deadline; a late chunk is discarded when it arrives),
in which case that example gets the backup's chunk (usually a BC student from
`dpjax distill --method bc`, one forward pass). Every decision is counted in `counts`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError

REASONS: tuple[str, ...] = ("primary", "non_finite", "out_of_bounds", "late")


class FallbackPolicy:
    """`primary` (any policy) backed by `backup` (any policy, same observations and actions)."""

    def __init__(self, primary, backup, *, margin: float = 0.05,
                 latency_budget_ms: float | None = None):  # fmt: skip
        if primary.observation_keys != backup.observation_keys:
            raise ConfigError(
                f"the backup reads observations {list(backup.observation_keys)}, the primary "
                f"{list(primary.observation_keys)}: they must be the same"
            )
        pc, bc = primary.config, backup.config
        if (pc.action_dim, pc.obs_horizon, pc.action_horizon) != (
            bc.action_dim, bc.obs_horizon, bc.action_horizon,
        ):  # fmt: skip
            raise ConfigError(
                "the backup's (action_dim, obs_horizon, action_horizon) "
                f"{(bc.action_dim, bc.obs_horizon, bc.action_horizon)} differ from the "
                f"primary's {(pc.action_dim, pc.obs_horizon, pc.action_horizon)}"
            )
        if not margin >= 0:
            raise ConfigError(f"margin must be >= 0, got {margin}")
        if latency_budget_ms is not None and not latency_budget_ms > 0:
            raise ConfigError(f"latency_budget_ms must be > 0, got {latency_budget_ms}")
        self.primary, self.backup = primary, backup
        self.margin = margin
        self.latency_budget_ms = latency_budget_ms
        self.counts = dict.fromkeys(REASONS, 0)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="primary")

    # The policy surface the rest of dpjax reads (servers, evaluation).
    @property
    def config(self):
        return self.primary.config

    @property
    def observation_keys(self):
        return self.primary.observation_keys

    @property
    def observation_spec(self):
        return self.primary.observation_spec

    def check_observation(self, observation) -> int:
        return self.primary.check_observation(observation)

    def describe(self, sampler=None, num_inference_steps=None):
        return self.primary.describe(sampler, num_inference_steps)

    def example_observation(self, batch_size: int):
        return self.primary.example_observation(batch_size)

    def reasons(self, chunk: jnp.ndarray) -> jnp.ndarray:
        """(B,) int32 index into REASONS for a (B, H, A) chunk of the primary (0: keep it)."""
        finite = jnp.all(jnp.isfinite(chunk), axis=(1, 2))
        normalized = self.primary.normalizer.normalize("action", chunk)
        inside = jnp.all(jnp.abs(normalized) <= 1.0 + self.margin, axis=(1, 2))
        return jnp.where(~finite, 1, jnp.where(~inside, 2, 0)).astype(jnp.int32)

    @functools.cache  # noqa: B019 - one program per option set
    def _select_fn(self, sampler, num_inference_steps):
        primary = self.primary.inference_fn(
            sampler=sampler, num_inference_steps=num_inference_steps
        )
        backup = self.backup.inference_fn()

        def select(params, observation, key):
            chunk = primary(params[0], observation, key)
            reason = self.reasons(chunk)
            fallback = backup(params[1], observation, key)
            keep = (reason == 0)[:, None, None]
            return jnp.where(keep, chunk, fallback), reason

        return jax.jit(select)

    def inference_fn(self, *, sampler=None, num_inference_steps=None, **unused):
        """Jitted `((primary_params, backup_params), observation, key) -> (B, action_horizon, A)`
        with the non-finite / out-of-bounds fallback (no latency budget: that needs `act`)."""
        select = self._select_fn(sampler, num_inference_steps)
        return lambda params, observation, key: select(params, observation, key)[0]

    def act(self, params, observation: Mapping[str, Any], key: jax.Array, *, sampler=None,
            num_inference_steps=None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
        """(actions (B, action_horizon, A), the reason of each example): the backup's chunk
        where the primary's is non-finite, out of bounds, or later than the budget."""
        batch = self.check_observation(observation)
        obs = {k: jnp.asarray(observation[k]) for k in self.observation_keys}
        start = time.perf_counter()
        fallback = np.asarray(self.backup.inference_fn()(params[1], obs, key))
        primary_fn = self.primary.inference_fn(sampler=sampler,
                                               num_inference_steps=num_inference_steps)  # fmt: skip
        job = self._worker.submit(lambda: np.asarray(primary_fn(params[0], obs, key)))
        budget = self.latency_budget_ms
        timeout = None if budget is None else max(start + budget / 1e3 - time.perf_counter(), 0)
        try:
            chunk = job.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.counts["late"] += batch
            return fallback, ["late"] * batch
        reason = np.asarray(self.reasons(jnp.asarray(chunk)))
        actions = np.where((reason == 0)[:, None, None], chunk, fallback)
        names = [REASONS[int(r)] for r in reason]
        for name in names:
            self.counts[name] += 1
        return actions, names

    def fallback_rate(self) -> float:
        total = sum(self.counts.values())
        return (total - self.counts["primary"]) / total if total else 0.0
