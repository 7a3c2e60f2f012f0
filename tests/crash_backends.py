"""A test-only variant and backends that end their case the hard way, registered when this
module is imported.

The isolated child imports this module too (executors/isolate.plugin_modules finds it as the
module that registered the variant or backend), so the child knows the same ones as the driver.

- variant `test-abort`: multi-head attention whose step calls `os.abort()`, as a crashing
  native kernel would.
- backend `test-hang`: sleeps while preparing, as a kernel that never returns would.
- backend `test-kill-worker`: kills the Ray worker that holds the case's devices, as a lost node
  would; it refuses to run anywhere but in a case of a Ray worker.

With `MLABENCH_TEST_IMPORT_LOG` set, each process that imports this module appends its pid and
its parent's to that file: the witness that an orphaned process went on to load a case's code.
"""

from __future__ import annotations

import os
import signal
import time

from torch import Tensor

from mlabench.backends.registry import BACKENDS, register_backend
from mlabench.executors.ray_task import WORKER_PID_ENV
from mlabench.variants import VARIANT_CLASSES, register_variant
from mlabench.variants.gqa import MultiHeadAttention

if os.environ.get("MLABENCH_TEST_IMPORT_LOG"):
    with open(os.environ["MLABENCH_TEST_IMPORT_LOG"], "a") as log:
        log.write(f"{os.getpid()} {os.getppid()}\n")

NAMES = ("test-hang", "test-kill-worker")
VARIANTS = ("test-abort",)


@register_variant
class AbortingAttention(MultiHeadAttention):
    name = "test-abort"

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:  # type: ignore[no-untyped-def,override]
        os.abort()


@register_backend("test-hang", description="test only: never returns", variants=("mha",))
def _hang(module, case, inputs):  # type: ignore[no-untyped-def]
    time.sleep(3600)


@register_backend("test-kill-worker", description="test only: kills its Ray worker", variants=("mha",))
def _kill_worker(module, case, inputs):  # type: ignore[no-untyped-def]
    pid = os.environ.get(WORKER_PID_ENV)  # the worker that holds this case's devices
    if pid is None:
        raise RuntimeError("test-kill-worker runs only in a case of a Ray worker")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    if b"ray" not in cmdline:  # never the sweep's driver (or the test runner) by mistake
        raise RuntimeError("test-kill-worker runs only under a Ray worker")
    os.kill(int(pid), signal.SIGKILL)
    time.sleep(60)  # the driver (or the worker's fork server, dying with it) ends this child


def unregister() -> None:
    for name in NAMES:
        BACKENDS.pop(name, None)
    for name in VARIANTS:
        VARIANT_CLASSES.pop(name, None)
