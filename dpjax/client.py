"""The robot side of `dpjax serve`: a client that needs numpy, msgpack and websockets, not JAX.

    from dpjax.client import PolicyClient, AsyncActor

    with PolicyClient("gpu-box", 8000) as client:
        client.metadata["action_horizon"], client.metadata["observation_spec"]
        actions = client.act({"state": history})    # history (obs_horizon, ...) -> (H, A)

        actor = AsyncActor(client, prefetch=2)       # the chunk keeps running while the next
        action = actor.step(observation)             # is computed; one (A,) action a step
        actor.counters                               # chunks, holds, dropped observations

`act` takes an observation history {key: (obs_horizon, ...)} or a batch {key: (B,
obs_horizon, ...)} and returns (action_horizon, A) or (B, action_horizon, A) actions. An error
the server reports (a wrong key or shape, NaN) is raised as `PolicyServerError` with the
server's message; the connection stays usable.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpjax import messages


class PolicyServerError(RuntimeError):
    """The server refused a request (its message says why) or the connection failed."""


class PolicyClient:
    """One websocket connection to a `dpjax serve` server; not shared between threads."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, timeout: float = 60.0,
                 connect_timeout: float = 10.0):  # fmt: skip
        from websockets.sync.client import connect

        self.uri = f"ws://{host}:{port}"
        self.timeout = timeout
        self._exit = contextlib.ExitStack()  # websockets >= 17 wants connect() entered
        try:
            self._connection = self._exit.enter_context(connect(
                self.uri, open_timeout=connect_timeout, max_size=None, compression=None))  # fmt: skip
        except (OSError, TimeoutError) as e:
            raise PolicyServerError(f"cannot connect to {self.uri}: {e}") from e
        except Exception as e:  # the handshake failed: not a dpjax server
            raise PolicyServerError(f"cannot connect to {self.uri}: {e}") from e
        self._ids = itertools.count(1)
        self.metadata = self._receive(None, "metadata", connect_timeout)
        self.max_message_bytes = int(self.metadata.get("max_message_bytes") or 0) or None
        self.last_server_ms: float | None = None

    # -- the connection -------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        data = messages.pack(message)
        if self.max_message_bytes and len(data) > self.max_message_bytes:
            raise PolicyServerError(
                f"request of {len(data)} bytes is over the server's limit of "
                f"{self.max_message_bytes} bytes; send fewer or smaller observations"
            )
        try:
            self._connection.send(data)
        except ConnectionClosed as e:
            raise PolicyServerError(f"connection to {self.uri} closed: {_reason(e)}") from e

    def _receive(self, request_id, kind: str, timeout: float | None) -> dict[str, Any]:
        """The reply to `request_id` (replies to earlier, abandoned requests are skipped)."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} reply from {self.uri} within the timeout")
            try:
                data = self._connection.recv(timeout=remaining)
            except TimeoutError as e:
                raise TimeoutError(f"no {kind} reply from {self.uri} within the timeout") from e
            except ConnectionClosed as e:
                raise PolicyServerError(f"connection to {self.uri} closed: {_reason(e)}") from e
            message = messages.unpack(data)
            if message["type"] == "error" and message.get("id") in (request_id, None):
                raise PolicyServerError(message.get("error", "unknown server error"))
            if message["type"] == kind and message.get("id") == request_id:
                return message

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------

    def act(self, observation: Mapping[str, Any], *, key=None, seed: int | None = None,
            timeout: float | None = None) -> np.ndarray:  # fmt: skip
        """Actions for an observation history: (action_horizon, A), or (B, action_horizon, A)
        for a batch. `key`: raw PRNG key data (uint32, as `jax.random.key_data` gives) or
        `seed` for reproducible sampling; neither: the server's own stream."""
        spec = self.metadata["observation_spec"]
        arrays = {k: np.asarray(v) for k, v in observation.items()}
        unbatched = all(k in spec and arrays[k].ndim == len(spec[k]["shape"]) + 1 for k in arrays)
        if unbatched:
            arrays = {k: v[None] for k, v in arrays.items()}
        request_id = next(self._ids)
        message: dict[str, Any] = {"type": "act", "id": request_id, "observation": arrays}
        if key is not None:
            message["key"] = np.asarray(key, np.uint32)
        if seed is not None:
            message["seed"] = int(seed)
        self._send(message)
        reply = self._receive(request_id, "actions", timeout)
        self.last_server_ms = float(reply.get("server_ms", float("nan")))
        actions = np.asarray(reply["actions"])
        return actions[0] if unbatched else actions

    def stats(self) -> dict[str, Any]:
        """The server's counters and latency percentiles."""
        request_id = next(self._ids)
        self._send({"type": "stats", "id": request_id})
        return self._receive(request_id, "stats", None)


def _reason(error) -> str:
    frame = getattr(error, "rcvd", None)
    if frame is None:
        return "no close frame (the network or the server went away)"
    if frame.code == 1009:
        return f"message too big for the server (code 1009: {frame.reason or 'over max_size'})"
    return f"code {frame.code} {frame.reason}".strip()


class AsyncActor:
    """Runs a policy's chunks at the control rate while the next chunk is being computed.

    Call `step(observation)` once per control step with the newest single-step observation
    {key: array} (None when a frame was dropped: the history keeps its last observation and
    `counters["dropped_observations"]` counts it); it returns the (A,) action to execute.

    When `prefetch` or fewer actions of the current chunk are left, the next chunk is requested
    in the background from the history at that step. When it arrives d steps later, its first
    d actions (already covered by the old chunk) are skipped. If the queue runs dry before it
    arrives, the actor holds: it repeats the last action (`counters["holds"]`), or with
    `wait=True` blocks for the chunk (then prefetch=0 is the synchronous loop of the in-process
    evaluation). A chunk later than `latency_budget_s` is counted in `counters["late_chunks"]`.
    """

    def __init__(self, client, *, prefetch: int = 0, wait: bool = False,
                 latency_budget_s: float | None = None):  # fmt: skip
        meta = client.metadata
        if not 0 <= prefetch < meta["action_horizon"]:
            raise ValueError(f"prefetch must be in [0, {meta['action_horizon']}), got {prefetch}")
        self.client = client
        self.obs_horizon = int(meta["obs_horizon"])
        self.prefetch = prefetch
        self.wait = wait
        self.latency_budget_s = latency_budget_s
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="actor")
        self.reset()

    def reset(self) -> None:
        """Forgets the episode (history, queue, pending request); counters start again."""
        self.history: collections.deque = collections.deque(maxlen=self.obs_horizon)
        self.queue: collections.deque = collections.deque()
        self.t = 0  # control steps taken
        self.last_action: np.ndarray | None = None
        self._pending: tuple[concurrent.futures.Future, int, float] | None = None
        self.counters = collections.Counter(chunks=0, holds=0, dropped_observations=0,
                                            late_chunks=0, skipped_actions=0)  # fmt: skip
        self.latencies_s: list[float] = []

    def _request(self) -> None:
        batch = {k: np.stack([h[k] for h in self.history]) for k in self.history[-1]}
        future = self._executor.submit(self.client.act, batch)
        self._pending = (future, self.t, time.perf_counter())

    def _collect(self, block: bool) -> None:
        future, requested_at, sent = self._pending
        if not block and not future.done():
            return
        self._pending = None  # a failed request is asked again at the next step
        chunk = future.result()  # a server error surfaces here
        latency = time.perf_counter() - sent
        self.latencies_s.append(latency)
        self.counters["chunks"] += 1
        if self.latency_budget_s is not None and latency > self.latency_budget_s:
            self.counters["late_chunks"] += 1
        skip = min(self.t - requested_at, len(chunk))
        self.counters["skipped_actions"] += skip
        self.queue = collections.deque(chunk[skip:])

    def step(self, observation: Mapping[str, Any] | None) -> np.ndarray:
        if observation is None:
            if not self.history:
                raise ValueError("the first observation of an episode cannot be missing")
            self.counters["dropped_observations"] += 1
            self.history.append(self.history[-1])
        else:
            frame = {k: np.asarray(v) for k, v in observation.items()}
            while len(self.history) < self.obs_horizon - 1:  # pad at the episode's start
                self.history.append(frame)
            self.history.append(frame)
        if self._pending is not None:
            self._collect(block=False)
        if self._pending is None and len(self.queue) <= self.prefetch:
            self._request()
        if not self.queue and self._pending is not None and (self.wait or self.last_action is None):
            self._collect(block=True)
        if self.queue:
            self.last_action = self.queue.popleft()
        else:
            self.counters["holds"] += 1
        self.t += 1
        return self.last_action

    def close(self) -> None:
        self._executor.shutdown(wait=True)
