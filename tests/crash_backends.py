"""Test-only backends that end their case the hard way, registered when this module is imported.

The isolated child imports this module too (executors/isolate.plugin_modules finds it as the
module that registered the backend), so the child knows the same backends as the driver.

- `test-abort`: `os.abort()` while preparing, as a crashing native kernel would.
- `test-hang`: sleeps while preparing, as a kernel that never returns would.
- `test-kill-worker`: kills the Ray worker that runs the case's child process, as a lost node
  would; it refuses to run anywhere but under a Ray worker.
"""

from __future__ import annotations

import os
import signal
import time

from mlabench.backends.registry import BACKENDS, register_backend

NAMES = ("test-abort", "test-hang", "test-kill-worker")


@register_backend("test-abort", description="test only: aborts the process", variants=("mha",))
def _abort(module, case, inputs):  # type: ignore[no-untyped-def]
    os.abort()


@register_backend("test-hang", description="test only: never returns", variants=("mha",))
def _hang(module, case, inputs):  # type: ignore[no-untyped-def]
    time.sleep(3600)


@register_backend("test-kill-worker", description="test only: kills its Ray worker", variants=("mha",))
def _kill_worker(module, case, inputs):  # type: ignore[no-untyped-def]
    parent = os.getppid()
    with open(f"/proc/{parent}/cmdline", "rb") as f:
        cmdline = f.read()
    if b"ray" not in cmdline:  # never the sweep's driver (or the test runner) by mistake
        raise RuntimeError("test-kill-worker runs only under a Ray worker")
    os.kill(parent, signal.SIGKILL)
    time.sleep(60)  # the kernel kills this child with its parent (PR_SET_PDEATHSIG)


def unregister() -> None:
    for name in NAMES:
        BACKENDS.pop(name, None)
