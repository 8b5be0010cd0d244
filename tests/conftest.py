"""One JAX persistent compilation cache for the whole test session.

Compiling dominates the suite on a small CPU, and many tests compile the same programs (the
same tiny policies, the CLI's subprocesses). A directory shared by the pytest process, its
xdist workers (started after `pytest_configure`, inheriting the environment) and any
subprocess they start lets each program compile once. Tests that need their own cache
(tests/test_reliability_train.py) set and restore it themselves. Set DPJAX_TEST_NO_JAX_CACHE=1
to compile everything afresh.
"""

import importlib.util
import os
import shutil
import tempfile

_OWNED = "DPJAX_TEST_JAX_CACHE_OWNER"


def pytest_configure(config):
    if os.environ.get("DPJAX_TEST_NO_JAX_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # a worker (inherited from the controller), or the caller chose
    directory = tempfile.mkdtemp(prefix="dpjax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    # A size limit turns on JAX's file lock around cache writes: without it a worker can
    # read another's half-written entry (JAX then recompiles, but warns on stderr, which the
    # one-line-error tests count).
    if importlib.util.find_spec("filelock"):  # what JAX locks with (torch brings it)
        os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(2**34)
    os.environ[_OWNED] = str(os.getpid())


def pytest_unconfigure(config):
    if os.environ.get(_OWNED) == str(os.getpid()):
        os.environ.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
        shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)
