"""What a Ray worker runs for `--executor ray` (executors/ray_exec.py is the driver's side).

A worker never imports torch or the cases' code: it keeps a warm fork server
(executors/forkserver.py) and hands each call to a fresh child of it, the arguments and the
answer passing through as pickled bytes (`forkserver.run_pickled`). Only the server imports
torch, mlabench and what the cases' backends preload, once per worker; a worker that imported
them too would pay that import again, on the same cores as the cases. This module's imports
are the proof: the standard library, Ray and the fork server.

The driver names what the child runs ("module:function") and passes it in: this module
knows nothing of cases.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from typing import Any

from mlabench.executors.forkserver import Outcome, run_pickled, warm


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
    import ray

    yield {"host": socket.gethostname(), "node": ray.util.get_node_ip_address()}
    yield run_pickled(target, payload, timeout=timeout, imports=imports, preload=preload)


__all__ = ["call_task", "case_task", "warm_task"]
