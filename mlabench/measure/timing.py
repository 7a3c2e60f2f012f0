"""Timing one zero-argument step, on CPU or CUDA, keeping every raw sample.

- CUDA: `triton.testing.do_bench` (CUDA events, L2 flushed before every sample:
  cold cache) or `do_bench_cudagraph` (the step replayed inside a CUDA graph: hot,
  launch overhead removed). Without triton, the same method by hand.
- CPU: `torch.utils.benchmark.Timer.blocked_autorange` at a fixed thread count:
  calls are grouped into calibrated blocks long enough for the clock, and every
  block's per-call time is a sample.

Warm-up always runs first; the budget bounds the sampling time of one case.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimingSettings:
    budget_s: float = 0.5  # sampling time per case, after warm-up
    warmup_s: float = 0.1
    min_samples: int = 10
    max_samples: int = 1000
    threads: int = 1  # CPU threads (0 = torch's current setting); one by default, for steady samples
    cuda_graph: bool = False


@dataclass(frozen=True)
class Timing:
    samples_ms: list[float]
    timer: str  # how they were taken, recorded in the `timer` column


def time_step(fn: Callable[[], object], device: torch.device, settings: TimingSettings) -> Timing:
    if device.type == "cuda":
        return _time_cuda(fn, settings)
    return _time_cpu(fn, settings)


def _time_cpu(fn: Callable[[], object], settings: TimingSettings) -> Timing:
    from torch.utils.benchmark import Timer

    threads = settings.threads or torch.get_num_threads()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    deadline = time.perf_counter() + settings.warmup_s
    while True:  # warm-up: at least one call, then until warmup_s
        fn()
        if time.perf_counter() >= deadline:
            break
    samples = [t * 1e3 for t in timer.blocked_autorange(min_run_time=settings.budget_s).times]
    # A slow step yields few blocks in the budget: top up one call at a time.
    while len(samples) < settings.min_samples:
        samples.append(timer.timeit(1).mean * 1e3)
    return Timing(samples[: settings.max_samples], f"cpu-blocked threads={threads}")


def _time_cuda(fn: Callable[[], object], settings: TimingSettings) -> Timing:
    torch.cuda.synchronize()
    first = _one_cuda_call_ms(fn)  # also a warm-up
    rep_ms = max(settings.budget_s * 1e3, first * settings.min_samples)
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
