"""What a Ray worker runs for `--executor ray` (executors/ray_exec.py is the driver's side).

A worker never imports torch or the cases' code: it keeps a warm fork server
(executors/forkserver.py) and hands each call to a fresh child of it, the arguments and the
answer passing through as pickled bytes (`forkserver.run_pickled`). Only the server imports
torch, mlabench and what the cases' backends preload, once per worker; a worker that imported
them too would pay that import again, on the same cores as the cases. This module's imports
are the proof: the standard library, Ray and the fork server.

The driver names what the child runs ("module:function") and passes it in: this module
knows nothing of cases.

On a cluster that is this machine alone, the driver forks the cases itself, from its own warm
server, and a worker only holds a case's devices: `lease_task` says where it runs and with what
environment (the GPUs Ray gave it), then waits to be cancelled once the case is done
(executors/ray_lease.py). Either way a case's child finds in WORKER_PID_ENV the pid of the
worker that holds its devices: the process whose end means the case has lost them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from mlabench.executors.forkserver import Outcome, run_pickled, warm

WORKER_PID_ENV = "MLABENCH_RAY_WORKER_PID"
LEASE_POLL_S = 0.01


def warm_task(preload: Sequence[str]) -> None:
    """Start this worker's fork server now, importing `preload` once, not with its first case."""
    warm(preload)


def call_task(target: str, payload: bytes, preload: Sequence[str]) -> Outcome:
    """`target` on `payload` in a fresh child of this worker's fork server (started if need be)."""
    return run_pickled(target, payload, preload=preload)


def case_task(target: str, payload: bytes, imports: tuple[tuple[str, str | None], ...], preload: Sequence[str],
              timeout: float) -> Iterator[Any]:
    """A streaming task: first where it runs (host and node: the driver counts the case as
    started now, and names the node if the worker is lost), then how the case's child ended."""
    yield _where()
    yield run_pickled(target, payload, timeout=timeout, imports=imports, preload=preload, env=_case_env())


def lease_task() -> Iterator[Any]:
    """A streaming task holding its devices for a case the driver runs: first where it runs and
    the environment a case gets there (Ray's GPU assignment in it), then nothing until the driver
    cancels it, the case done."""
    yield {**_where(), "env": _case_env()}
    while True:  # Ray's cancel arrives between two Python steps: a short sleep frees the devices at once
        time.sleep(LEASE_POLL_S)


def _where() -> dict[str, str]:
    import ray

    return {"host": socket.gethostname(), "node": ray.util.get_node_ip_address()}


def _case_env() -> dict[str, str]:
    return {**os.environ, WORKER_PID_ENV: str(os.getpid())}


__all__ = ["WORKER_PID_ENV", "call_task", "case_task", "lease_task", "warm_task"]
