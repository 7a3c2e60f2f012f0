"""NVTX ranges around warm-up, each timed call and each profiled step, for Nsight.

`nsys profile -c nvtx` and `ncu --nvtx --nvtx-include` select kernels by these range names
(docs/profiling.md). The ranges come from `torch.cuda.nvtx`, which a CPU build of torch does
not have: off CUDA they are no-ops, since neither Nsight tool sees CPU-only runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

WARMUP = "mlabench:warmup"
SAMPLES = "mlabench:samples"  # the whole sampling phase of a case: one range for `nsys -c nvtx`
SAMPLE = "mlabench:sample"  # one timed call (CUDA cold and CPU) or one graph replay (CUDA graph)
CAPTURE = "mlabench:graph-capture"
PROFILE_STEP = "mlabench:profile-step"

Mark = Callable[[str], contextlib.AbstractContextManager[Any]]


def _noop(_name: str = "") -> None:
    return None


def no_range(_name: str) -> contextlib.AbstractContextManager[Any]:
    """The Mark used when NVTX is off: enters nothing."""
    return contextlib.nullcontext()


class NvtxRanges:
    """`ranges(name)` is a context manager that pushes an NVTX range named `name` and pops it on exit."""

    def __init__(self, push: Callable[[str], object], pop: Callable[[], object]):
        self._push, self._pop = push, pop

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._push(name)
        try:
            yield
        finally:
            self._pop()


def nvtx_ranges(device: torch.device) -> NvtxRanges:
    """Real NVTX ranges on CUDA; no-ops elsewhere (range_push raises on a CPU build)."""
    if device.type == "cuda":
        return NvtxRanges(torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop)
    return NvtxRanges(_noop, _noop)


def marked(fn: Callable[[], Any], mark: Mark, name: str) -> Callable[[], Any]:
    """fn with every call inside the range `name`."""
    def call() -> Any:
        with mark(name):
            return fn()

    return call
