"""Timing one zero-argument step, on CPU or CUDA, keeping every raw sample.

- CUDA: `triton.testing.do_bench` (CUDA events, L2 flushed before every sample:
  cold cache) or `do_bench_cudagraph` (the step replayed inside a CUDA graph: hot,
  launch overhead removed). Without triton, the same method by hand.
- CPU: `torch.utils.benchmark.Timer.blocked_autorange` at a fixed thread count:
  calls are grouped into calibrated blocks long enough for the clock, and every
  block's per-call time is a sample.

Warm-up always runs first; the budget bounds the sampling time of one case and
`max_samples` its sample count. A `deadline` (the case's wall limit) is checked
between calls: a step is never interrupted, so one call that alone runs past
the deadline ends the case at the next check, after it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlabench.errors import CaseTimeout


@dataclass(frozen=True)
class TimingSettings:
    budget_s: float = 0.5  # sampling time per case, after warm-up
    warmup_s: float = 0.1
    min_samples: int = 10
    max_samples: int = 1000
    threads: int = 0  # CPU threads; 0 = torch's current setting
    cuda_graph: bool = False


@dataclass(frozen=True)
class Timing:
    samples_ms: list[float]
    timer: str  # how they were taken, recorded in the `timer` column


def time_step(fn: Callable[[], object], device: torch.device, settings: TimingSettings,
              deadline: float | None = None) -> Timing:
    """Time `fn`; `deadline` is a `time.perf_counter()` value past which the case times out."""
    if device.type == "cuda":
        return _time_cuda(fn, settings, deadline)
    return _time_cpu(fn, settings, deadline)


def check_deadline(deadline: float | None, stage: str) -> None:
    """Raise CaseTimeout naming the stage when the case's wall limit has passed."""
    if deadline is not None and time.perf_counter() > deadline:
        raise CaseTimeout(stage)


def _time_cpu(fn: Callable[[], object], settings: TimingSettings, deadline: float | None = None) -> Timing:
    from torch.utils.benchmark import Timer

    threads = settings.threads or torch.get_num_threads()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    warm_until = time.perf_counter() + settings.warmup_s
    while True:  # warm-up: at least one call, then until warmup_s
        fn()
        check_deadline(deadline, "warm-up")
        if time.perf_counter() >= warm_until:
            break
    budget = settings.budget_s
    if deadline is not None:  # sampling never plans past the wall limit
        budget = min(budget, max(deadline - time.perf_counter(), 0.0))
    samples = [t * 1e3 for t in timer.blocked_autorange(min_run_time=budget).times]
    check_deadline(deadline, "sampling")
    # A slow step yields few blocks in the budget: top up one call at a time, never past max_samples.
    while len(samples) < min(settings.min_samples, settings.max_samples):
        samples.append(timer.timeit(1).mean * 1e3)
        check_deadline(deadline, "sampling")
    return Timing(samples[: settings.max_samples], f"cpu-blocked threads={threads}")


def _time_cuda(fn: Callable[[], object], settings: TimingSettings, deadline: float | None = None) -> Timing:
    torch.cuda.synchronize()
    first = _one_cuda_call_ms(fn)  # also a warm-up
    check_deadline(deadline, "warm-up")
    rep_ms = max(settings.budget_s * 1e3, first * settings.min_samples)
    if deadline is not None:  # do_bench cannot be stopped midway: plan it inside the wall limit
        rep_ms = min(rep_ms, max((deadline - time.perf_counter()) * 1e3, first))
    warmup_ms = max(settings.warmup_s * 1e3, first)
    try:
        from triton import testing
    except ImportError:
        return _time_cuda_events(fn, settings, first)
    note = ""
    if settings.cuda_graph:
        try:
            samples = testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="all")
            return Timing(_cap(samples, settings), "cuda-graph (hot)")
        except RuntimeError as exc:  # capture refused (a sync or host work inside the step)
            note = f"; cuda graph refused: {str(exc).splitlines()[0][:80]}"
    samples = testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    return Timing(_cap(samples, settings), "cuda-events, L2 flushed (cold)" + note)


def _cap(samples: list[float], settings: TimingSettings) -> list[float]:
    return [float(s) for s in samples][: settings.max_samples]


def _one_cuda_call_ms(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _time_cuda_events(fn: Callable[[], object], settings: TimingSettings, first_ms: float) -> Timing:
    """do_bench's method without triton: flush L2 with a 256 MB write before each sample."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    n_warm = max(1, int(settings.warmup_s * 1e3 / max(first_ms, 1e-3)))
    for _ in range(n_warm):
        fn()
    wanted = math.ceil(settings.budget_s * 1e3 / max(first_ms, 1e-3))
    n = int(min(settings.max_samples, max(settings.min_samples, wanted)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return Timing([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)], "cuda-events, L2 flushed (cold)")
