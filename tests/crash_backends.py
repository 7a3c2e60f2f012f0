"""A test-only variant and backends that end their case the hard way, registered when this
module is imported.

The isolated child imports this module too (executors/isolate.plugin_modules finds it as the
module that registered the variant or backend), so the child knows the same ones as the driver.

- variant `test-abort`: multi-head attention whose step calls `os.abort()`, as a crashing
  native kernel would.
- backend `test-hang`: sleeps while preparing, as a kernel that never returns would.
- backend `test-kill-worker`: kills the Ray worker that runs the case's child process, as a lost node
  would; it refuses to run anywhere but under a Ray worker.
"""

from __future__ import annotations

import os
import signal
import time

from torch import Tensor

from mlabench.backends.registry import BACKENDS, register_backend
from mlabench.variants import VARIANT_CLASSES, register_variant
from mlabench.variants.gqa import MultiHeadAttention

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
    for name in VARIANTS:
        VARIANT_CLASSES.pop(name, None)
