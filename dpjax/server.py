"""The policy server: a trained policy behind a websocket, for a robot computer to query.

    dpjax serve runs/pusht --port 8000                 # the CLI (dpjax.commands.serve)

    server = PolicyServer.from_run("runs/pusht", sampler="ddim", num_inference_steps=10)
    asyncio.run(server.serve("127.0.0.1", 8000))

Websockets + msgpack (`dpjax.messages`), as openpi serves its policies: one persistent
connection per robot, binary frames that carry numpy arrays without a schema compiler, and a
client (`dpjax.client`) that needs neither JAX nor generated code. On connect the server sends
its metadata (observation spec, horizons, control rate, sampler); then each "act" request with
an observation history {key: (B, obs_horizon, ...)} gets back (B, action_horizon, A) actions.

Requests from different clients that arrive together are batched: single-observation requests
are stacked and run as one vmapped call (each keeps its own PRNG key, so its actions are its
own); a request that arrives alone runs exactly the program `load_policy(...).act` runs, so its
actions are bitwise those of the in-process policy for the same key. Inference runs on a worker
thread while the event loop keeps reading, so a slow batch does not stall connections.

Bad input (unknown or missing keys, wrong shapes or dtypes, NaN, malformed or oversized
messages) gets an "error" message naming what is wrong, on that connection only; a client that
disconnects mid-request costs its reply and nothing else. `GET /stats` (plain HTTP on the same
port) and a "stats" message report requests, errors, latency percentiles and batch sizes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import http
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import messages
from dpjax.errors import DataError, DpjaxError, ShapeError

log = logging.getLogger("dpjax.server")

LATENCY_WINDOW = 2000  # the latest requests the latency percentiles are computed over


@dataclasses.dataclass
class _Request:
    """One validated "act" request, waiting for its batch."""

    id: Any
    observation: dict[str, np.ndarray]  # {key: (B, obs_horizon, ...)} in the spec's dtypes
    key: jax.Array
    received: float  # time.perf_counter() when it was read
    future: asyncio.Future

    @property
    def batch(self) -> int:
        return next(iter(self.observation.values())).shape[0]


class ServerStats:
    """Counters and a latency window; `snapshot()` is what "stats" and GET /stats return."""

    def __init__(self):
        self.started = time.time()
        self.counts = collections.Counter()
        self.errors = collections.Counter()
        self.batch_sizes = collections.Counter()
        self.latency_ms = collections.deque(maxlen=LATENCY_WINDOW)
        self.inference_ms = collections.deque(maxlen=LATENCY_WINDOW)
        self.connections = 0
        self.fallback = None  # a FallbackPolicy's counts, where the server has one

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        def percentiles(values) -> dict[str, float | None]:
            if not values:
                return {"p50": None, "p95": None, "p99": None}
            p = np.percentile(np.asarray(values), [50, 95, 99])
            return {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])}

        return {
            "uptime_s": round(time.time() - self.started, 3),
            "connections_open": self.connections,
            **{k: int(v) for k, v in sorted(self.counts.items())},
            "errors": dict(sorted(self.errors.items())),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "latency_ms": percentiles(self.latency_ms),  # receipt -> reply sent
            "inference_ms": percentiles(self.inference_ms),  # the batch's compute
            "latency_window": len(self.latency_ms),
            **({} if self.fallback is None else self._fallback()),
        }

    def _fallback(self) -> dict[str, Any]:
        counts = dict(self.fallback)
        total = sum(counts.values())
        rate = (total - counts["primary"]) / total if total else 0.0
        return {"fallback": counts, "fallback_rate": rate}


def _bucket(n: int, max_batch: int) -> int:
    """The padded size a group of n single requests runs at: a power of two, <= max_batch."""
    size = 1
    while size < n:
        size *= 2
    return min(size, max_batch)


class PolicyServer:
    """Serves `policy.act` for one set of parameters and sampler options.

    max_batch: the most requests one batched call takes (1: never batch). batch_window_ms:
    how long the first request of a batch waits for others (0: batch only what is already
    queued, so a lone client never waits). control_hz goes into the metadata (None: unknown).
    """

    def __init__(
        self,
        policy,
        params,
        *,
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        max_batch: int = 16,
        batch_window_ms: float = 0.0,
        control_hz: float | None = None,
        seed: int = 0,
        info: Mapping[str, Any] | None = None,
        max_message_bytes: int = messages.MAX_MESSAGE_BYTES,
    ):
        if max_batch < 1:
            raise DpjaxError(f"max_batch must be >= 1, got {max_batch}")
        if batch_window_ms < 0:
            raise DpjaxError(f"batch_window_ms must be >= 0, got {batch_window_ms}")
        self.policy = policy
        self.params = params
        self.options = {"sampler": sampler, "num_inference_steps": num_inference_steps}
        self.chunk_fn = policy.inference_fn(**self.options)
        # One request per row: (params, {key: (K, 1, T, ...)}, keys (K,)) -> (K, 1, H, A).
        self.stacked_fn = jax.jit(jax.vmap(self.chunk_fn, in_axes=(None, 0, 0)))
        self.max_batch = max_batch
        self.batch_window_s = batch_window_ms / 1e3
        self.control_hz = control_hz
        self.max_message_bytes = max_message_bytes
        self.info = dict(info or {})
        self._key = jax.random.key(seed)
        self._served = 0
        self.stats = ServerStats()
        # A FallbackPolicy (`dpjax serve --fallback`): each request through its host `act`,
        # which enforces the latency budget and counts every decision.
        self.fallback = hasattr(policy, "fallback_rate")
        if self.fallback:
            self.stats.fallback = policy.counts
        self._queue: asyncio.Queue | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer")

    @classmethod
    def from_run(cls, run_dir: str | Path, *, best: bool = False, step: int | None = None,
                 control_hz: float | None = None, fallback: str | Path | None = None,
                 latency_budget_ms: float | None = None, **options) -> PolicyServer:  # fmt: skip
        """A server for a run directory's checkpoint; the control rate, where not given, is
        the task's that the run's dataset was collected on (if that dataset is here).
        `fallback`: a run (usually a BC student) whose chunk replaces the primary's where
        that is non-finite, out of bounds or later than `latency_budget_ms`."""
        policy, params, metadata = dpjax.load_policy(run_dir, best=best, step=step)
        if control_hz is None:
            control_hz = _task_control_hz(metadata["config"].get("dataset"))
        info = {"run_dir": str(run_dir), "checkpoint_step": metadata["step"]}
        if fallback is not None:
            from dpjax.policy.fallback import FallbackPolicy

            backup, backup_params, backup_meta = dpjax.load_policy(fallback)
            policy = FallbackPolicy(policy, backup, latency_budget_ms=latency_budget_ms)
            params = (params, backup_params)
            info["fallback"] = {"run_dir": str(fallback), "checkpoint_step": backup_meta["step"],
                                "latency_budget_ms": latency_budget_ms,
                                "margin": policy.margin}  # fmt: skip
        elif latency_budget_ms is not None:
            raise DpjaxError("--latency-budget-ms needs a --fallback run to fall back to")
        return cls(policy, params, control_hz=control_hz, info=info, **options)

    # -- what a client sees -------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "type": "metadata",
            "protocol_version": messages.PROTOCOL_VERSION,
            "dpjax_version": dpjax.__version__,
            **self.policy.describe(self.options["sampler"], self.options["num_inference_steps"]),
            "control_hz": self.control_hz,
            "max_batch": self.max_batch,
            "max_message_bytes": self.max_message_bytes,
            **self.info,
        }

    # -- validation (on the event loop: numpy only) ---------------------------------------

    def parse_request(self, message: dict[str, Any], received: float) -> _Request:
        """An "act" message -> a request, or DpjaxError / ProtocolError naming what is wrong."""
        observation = message.get("observation")
        if not isinstance(observation, dict):
            raise messages.ProtocolError('an "act" message needs an "observation" map')
        expected = self.policy.observation_keys
        unknown = sorted(str(k) for k in observation if k not in expected)
        if unknown:
            raise ShapeError(
                f"observation has unknown keys {unknown}; the policy reads {sorted(expected)}"
            )
        for k, v in observation.items():
            if not isinstance(v, np.ndarray):
                raise ShapeError(f"observation {k!r} must be an array, got {type(v).__name__}")
        batch = self.policy.check_observation(observation)  # missing keys, shapes, NaN
        if batch > self.max_batch * 64:
            raise ShapeError(f"batch {batch} is over this server's limit {self.max_batch * 64}")
        cast = {}
        for k in expected:
            want = np.dtype(self.policy.observation_spec[k].dtype)
            value = observation[k]
            if want.kind != "f" and value.dtype != want:
                raise ShapeError(f"observation {k!r}: expected dtype {want}, got {value.dtype}")
            cast[k] = value.astype(want, copy=False)
        return _Request(message.get("id"), cast, self._request_key(message), received,
                        asyncio.get_running_loop().create_future())  # fmt: skip

    def _request_key(self, message: dict[str, Any]) -> jax.Array:
        """The request's "key" (raw uint32 key data), else its "seed", else the server's own
        stream (the served-request count folded into the server seed)."""
        if message.get("key") is not None:
            data = message["key"]
            shape = jax.random.key_data(self._key).shape
            if not isinstance(data, np.ndarray) or data.dtype != np.uint32 or data.shape != shape:
                raise ShapeError(f'"key" must be uint32 key data of shape {shape}')
            return jax.random.wrap_key_data(jnp.asarray(data))
        if message.get("seed") is not None:
            seed = message["seed"]
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
                raise ShapeError(f'"seed" must be a non-negative int, got {seed!r}')
            return jax.random.key(seed)
        self._served += 1
        return jax.random.fold_in(self._key, self._served)

    # -- inference (on the worker thread) ---------------------------------------------------

    def run_batch(self, requests: list[_Request]) -> list[np.ndarray]:
        """Actions for each request: single-observation requests stacked into one vmapped call
        (padded to a power of two), any other request on its own."""
        if self.fallback:
            return [self.policy.act(self.params, r.observation, r.key, **self.options)[0]
                    for r in requests]  # fmt: skip
        out: dict[int, np.ndarray] = {}
        singles = [i for i, r in enumerate(requests) if r.batch == 1]
        if len(singles) > 1:
            size = _bucket(len(singles), self.max_batch)
            rows = singles + singles[-1:] * (size - len(singles))
            obs = {k: np.stack([requests[i].observation[k] for i in rows])
                   for k in self.policy.observation_keys}  # fmt: skip
            keys = jnp.stack([requests[i].key for i in rows])
            actions = np.asarray(self.stacked_fn(self.params, obs, keys))
            out.update({i: actions[j] for j, i in enumerate(singles)})
        for i, r in enumerate(requests):
            if i not in out:
                out[i] = np.asarray(self.chunk_fn(self.params, r.observation, r.key))
        return [out[i] for i in range(len(requests))]

    def warm_up(self, batches=(1,)) -> None:
        """Compiles the programs requests will run: a lone request of each batch in
        `batches`, and every stacked size up to max_batch."""
        obs = {k: np.asarray(v) for k, v in self.policy.example_observation(1).items()}
        if self.fallback:
            for batch in batches:
                batched = {k: np.repeat(v, batch, 0) for k, v in obs.items()}
                self.policy.act(self.params, batched, self._key, **self.options)
            self.policy.counts.update(dict.fromkeys(self.policy.counts, 0))  # not served
            return
        for batch in batches:
            jax.block_until_ready(self.chunk_fn(
                self.params, {k: np.repeat(v, batch, 0) for k, v in obs.items()}, self._key))  # fmt: skip
        size = 2
        while size <= self.max_batch:
            stacked = {k: np.repeat(v[None], size, 0) for k, v in obs.items()}
            keys = jax.random.split(self._key, size)
            jax.block_until_ready(self.stacked_fn(self.params, stacked, keys))
            size *= 2

    # -- the event loop -------------------------------------------------------------------

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._queue.get()]
            deadline = loop.time() + self.batch_window_s
            while len(group) < self.max_batch:
                try:
                    group.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    group.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            group = [r for r in group if not r.future.done()]  # the client left meanwhile
            if not group:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, group)
            except Exception as e:  # a bug or a device error: those clients are told
                log.exception("inference failed")
                self.stats.error("inference")
                for r in group:
                    if not r.future.done():
                        r.future.set_exception(DpjaxError(f"inference failed: {e}"))
                continue
            self.stats.inference_ms.append(1e3 * (time.perf_counter() - t0))
            self.stats.batch_sizes[len(group)] += 1
            for r, actions in zip(group, results, strict=True):
                if not r.future.done():
                    r.future.set_result((actions, len(group)))

    async def _send(self, connection, message: dict[str, Any]) -> bool:
        from websockets.exceptions import ConnectionClosed

        try:
            await connection.send(messages.pack(message))
            return True
        except ConnectionClosed:
            self.stats.counts["replies_dropped"] += 1  # the client left: nothing else to do
            return False

    async def _handle_act(self, connection, message: dict, received: float) -> None:
        try:
            request = self.parse_request(message, received)
        except (DpjaxError, messages.ProtocolError) as e:
            self.stats.error(type(e).__name__)
            await self._send(connection, {"type": "error", "id": message.get("id"),
                                          "error": str(e)})  # fmt: skip
            return
        await self._queue.put(request)
        try:
            actions, batched_with = await request.future
        except DpjaxError as e:
            await self._send(connection, {"type": "error", "id": request.id, "error": str(e)})
            return
        reply = {"type": "actions", "id": request.id, "actions": actions,
                 "server_ms": 1e3 * (time.perf_counter() - received),
                 "batched_with": batched_with}  # fmt: skip
        if await self._send(connection, reply):
            self.stats.counts["requests_served"] += 1
            self.stats.latency_ms.append(1e3 * (time.perf_counter() - received))

    async def handler(self, connection) -> None:
        """One client's connection: metadata first, then its messages in order."""
        from websockets.exceptions import ConnectionClosed

        self.stats.connections += 1
        self.stats.counts["connections_total"] += 1
        try:
            await self._send(connection, self.metadata())
            async for data in connection:  # one message at a time: replies keep their order
                received = time.perf_counter()
                self.stats.counts["messages"] += 1
                try:
                    message = messages.unpack(data)
                except messages.ProtocolError as e:
                    self.stats.error("ProtocolError")
                    await self._send(connection, {"type": "error", "id": None, "error": str(e)})
                    continue
                kind = message["type"]
                if kind == "act":
                    await self._handle_act(connection, message, received)
                elif kind == "stats":
                    await self._send(connection, {**self.stats.snapshot(), "type": "stats",
                                                  "id": message.get("id")})  # fmt: skip
                elif kind == "metadata":
                    await self._send(connection, self.metadata())
                else:
                    self.stats.error("ProtocolError")
                    await self._send(connection, {
                        "type": "error", "id": message.get("id"),
                        "error": f"unknown message type {kind!r}; valid: act, stats, metadata"})  # fmt: skip
        except ConnectionClosed:
            pass
        finally:
            self.stats.connections -= 1

    def _http(self, connection, request):
        """GET /stats and /healthz as plain HTTP; anything else goes on to the handshake."""
        path = request.path.split("?", 1)[0]
        if path == "/stats":
            return connection.respond(http.HTTPStatus.OK, json.dumps(self.stats.snapshot()) + "\n")
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        return None

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> ServerThread:
        """Serves from a background thread; see `ServerThread`."""
        return ServerThread(self, host, port)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        ready: Callable[[int], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serves until `stop` is set (or the task is cancelled); `ready(port)` once listening
        (port 0 picks a free one)."""
        from websockets.asyncio.server import serve

        self._queue = asyncio.Queue()
        batcher = asyncio.ensure_future(self._batcher())
        try:
            async with serve(self.handler, host, port, max_size=self.max_message_bytes,
                             compression=None, process_request=self._http) as server:  # fmt: skip
                bound = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(bound)
                await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            batcher.cancel()


class ServerThread:
    """A `PolicyServer` serving from a background thread (notebooks, tests, benchmarks):
    `.port` once started, `.stop()` (or the with-block's end) shuts it down."""

    def __init__(self, server: PolicyServer, host: str = "127.0.0.1", port: int = 0,
                 timeout: float = 60.0):  # fmt: skip
        import threading

        self.server = server
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port: int | None = None

        def ready(bound: int) -> None:
            self.port = bound
            self._ready.set()

        def main() -> None:
            try:
                self._loop.run_until_complete(
                    server.serve(host, port, ready=ready, stop=self._stop)
                )
            except BaseException as e:  # reported by the constructor or stop()
                self._error = e
                self._ready.set()

        self._thread = threading.Thread(target=main, name="dpjax-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise DpjaxError(f"the server did not start: {self._error or 'timed out'}")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _task_control_hz(dataset: str | None) -> float | None:
    """The control rate of the task `dataset` was collected on, if it is here and says."""
    if not dataset or not Path(dataset).exists():
        return None
    try:
        from dpjax.data import collection_task, load_dataset
        from dpjax.envs.collect import resolve_task

        name, options = collection_task(load_dataset(dataset))
        return float(resolve_task(name, options).control_hz)
    except (DpjaxError, DataError, ImportError, OSError):
        return None
