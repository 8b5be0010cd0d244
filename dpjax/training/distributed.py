"""Multi-process runs: starting `jax.distributed`, barriers, and noticing a process that died.

JAX's coordination service does notice a dead process, but only after its heartbeat timeout
(100 s by default) and then aborts the others from C++ with a stack trace; a survivor
blocked in a collective otherwise waits. `PeerWatchdog` makes that boring: every process
bumps a counter in the coordination service's key-value store each second; a process whose
counter stops moving for `timeout` seconds (or a coordinator that stops answering) makes
the others print one line saying which process stopped and how to resume, and exit with
code 75 (EX_TEMPFAIL: a scheduler may requeue the job, which then resumes).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import jax

from dpjax.errors import ConfigError

# The exit status of a process that stops because another one did (sysexits' EX_TEMPFAIL).
PEER_LOST_EXIT = 75
# Seconds without a peer's heartbeat before the others stop (DPJAX_PEER_TIMEOUT_S overrides).
PEER_TIMEOUT_S = 30.0
_HEARTBEAT_S = 1.0
_KEY = "dpjax/heartbeat"


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Multi-process: `jax.distributed.initialize` with these arguments when given (all three),
    or without arguments when the environment describes a cluster (`detected_cluster`: TPU
    pods, SLURM, Open MPI, Kubernetes; or JAX_COORDINATOR_ADDRESS; DPJAX_DISTRIBUTED=1 forces
    it, =0 prevents it). Once per process, before any other JAX call. On CPU the processes'
    collectives go through gloo."""
    if jax.distributed.is_initialized():
        return
    explicit = (coordinator_address, num_processes, process_id)
    if any(a is not None for a in explicit):
        if any(a is None for a in explicit):
            raise ConfigError("--coordinator-address, --num-processes and --process-id go together")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process id {process_id} is not in [0, {num_processes})")
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif (
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or os.environ.get("DPJAX_DISTRIBUTED") == "1"
        or detected_cluster() is not None
    ):
        kwargs = {}  # jax.distributed reads the cluster's own description
    else:
        return
    # the CPU backend's cross-process collectives (GPUs and TPUs use their own)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX's own auto-detection recognizes here (SLURM,
    Open MPI, TPU pods on GCE or GKE, Kubernetes jobs), or None. mpi4py detection is opt-in in
    JAX and stays so; DPJAX_DISTRIBUTED=0 turns detection off."""
    if os.environ.get("DPJAX_DISTRIBUTED") == "0":
        return None
    try:
        from jax._src import clusters
    except ImportError:  # a JAX without the registry: only the explicit routes remain
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if env.__name__ == "Mpi4pyCluster":
            continue
        try:
            if env.is_env_present():
                return env.__name__
        except Exception:  # a probe that cannot run here (no metadata server, ...)
            continue
    return None


def sync_processes(name: str) -> None:
    """A barrier across the run's processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"dpjax: {name}")


def peer_timeout() -> float:
    value = os.environ.get("DPJAX_PEER_TIMEOUT_S")
    if value is None:
        return PEER_TIMEOUT_S
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"DPJAX_PEER_TIMEOUT_S must be a positive number, got {value!r}")
    return timeout


class PeerWatchdog:
    """While running (a context manager), stops this process with one clear line when another
    process of the run stops sending heartbeats; nothing with one process.

    `advice()` returns what to tell the user (e.g. the resume command and the last
    checkpoint); it runs on the watchdog's thread when a peer is lost.
    `exit`: what stopping does (default `os._exit`: the main thread may be blocked inside a
    collective that will never complete, so nothing short of it returns).
    """

    def __init__(
        self,
        advice: Callable[[], str] = lambda: "",
        timeout: float | None = None,
        exit: Callable[[int], None] = os._exit,
    ):
        self.timeout = peer_timeout() if timeout is None else timeout
        self.advice = advice
        self._exit = exit
        self._stop = threading.Event()
        self._finished = False
        self._thread: threading.Thread | None = None

    def start(self) -> PeerWatchdog:
        if jax.process_count() > 1 and self._thread is None:
            from jax._src import distributed

            client = distributed.global_state.client
            self._thread = threading.Thread(
                target=self._watch, args=(client,), name="dpjax-peer-watchdog", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, finished: bool) -> None:
        """`finished`: this process completed its work, so the others must not mistake its
        silence for a death; after an error, silence is what tells them it stopped."""
        self._finished = finished
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * _HEARTBEAT_S)

    def __enter__(self) -> PeerWatchdog:
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.stop(finished=exc_type is None)

    def _watch(self, client) -> None:
        me, count = jax.process_index(), jax.process_count()
        peers = [p for p in range(count) if p != me]
        last_value = {p: None for p in peers}
        last_change = {p: time.monotonic() for p in peers}
        beat = 0
        while not self._stop.is_set():
            beat += 1
            try:
                client.key_value_set(f"{_KEY}/{me}", str(beat), allow_overwrite=True)
                values = {k.rsplit("/", 1)[-1]: v for k, v in client.key_value_dir_get(_KEY)}
            except Exception as e:  # the coordination service (process 0) is gone
                if self._stop.is_set():
                    return
                self._lost(f"lost the coordinator (process 0 of {count}): {_first_line(e)}")
                return
            now = time.monotonic()
            for p in peers:
                value = values.get(str(p))
                if value == "done":
                    last_change[p] = now  # finished: nothing more to expect
                elif value != last_value[p]:
                    last_value[p], last_change[p] = value, now
                elif now - last_change[p] > self.timeout:
                    self._lost(
                        f"process {p} of {count} sent no heartbeat for {self.timeout:.0f} s "
                        "(killed or crashed?)"
                    )
                    return
            self._stop.wait(_HEARTBEAT_S)
        if self._finished:
            try:
                client.key_value_set(f"{_KEY}/{me}", "done", allow_overwrite=True)
            except Exception:
                pass

    def _lost(self, what: str) -> None:
        advice = self.advice()
        message = f"dpjax: {what}; process {jax.process_index()} stops too."
        print(message + (f" {advice}" if advice else ""), file=sys.stderr, flush=True)
        self._exit(PEER_LOST_EXIT)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
