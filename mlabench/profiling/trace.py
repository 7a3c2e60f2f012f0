"""A few extra steps of one case under torch.profiler, written as a gzipped Chrome/Perfetto trace.

The profiled steps run after the case's timed samples, never among them: the profiler's
hooks slow every operator. One unrecorded step comes first (the profiler's own warm-up),
then `steps` recorded ones, each in a `ProfilerStep#N` range and an NVTX range. CPU and, on
CUDA, device activity are recorded with shapes and memory.

For a whole-step call, the attention core is put in a `mlabench:core` range so the breakdown
can give its share of the step: the module's `forward` is wrapped on the instance for the
profiled steps only (every step calls `module(x, start, core)`, variants/base.py). A backend
that compiles the whole step has no separate core to label, and gets no core share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from mlabench.measure.nvtx import PROFILE_STEP, Mark
from mlabench.profiling.breakdown import CORE_RANGE
from mlabench.variants.attention import CoreAttention, eager_attention
from mlabench.variants.base import AttentionVariant

PROFILE_STEPS = 5  # recorded steps per case: enough to average launch jitter, small enough to open quickly


@contextlib.contextmanager
def core_in_range(module: AttentionVariant | None) -> Iterator[list[int]]:
    """While active, every core call of `module`'s forward runs inside the CORE_RANGE range;
    yields a one-item list counting those calls (0 afterwards: the step never called forward)."""
    calls = [0]
    if module is None:
        yield calls
        return
    original = module.forward

    def forward(x: torch.Tensor, start_pos: int = 0, core: CoreAttention = eager_attention) -> torch.Tensor:
        def labelled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
            calls[0] += 1
            with record_function(CORE_RANGE):
                return core(q, k, v, scale, causal)

        return original(x, start_pos, labelled)

    module.forward = forward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del module.forward  # the instance attribute goes; the class's forward is back


def trace_steps(fn: Callable[[], Any], device: torch.device, path: Path, mark: Mark,
                module: AttentionVariant | None = None, steps: int = PROFILE_STEPS) -> tuple[list[Any], bool]:
    """Profile `steps` calls of fn (after one unrecorded one), write the gzipped trace to `path`
    (a name ending in .gz: torch gzips it), and return (the profiler's events, whether the
    core range was entered)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with core_in_range(module) as core_calls, profile(
        activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
        record_shapes=True, profile_memory=True,
    ) as prof:
        for _ in range(steps + 1):
            with mark(PROFILE_STEP):
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # each step's kernels inside its own step range
            prof.step()
    prof.export_chrome_trace(str(path))
    return list(prof.events()), core_calls[0] > 0
