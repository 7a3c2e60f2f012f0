"""Timing one zero-argument step, on CPU or CUDA, keeping every raw sample.

- CUDA, cold (default): `triton.testing.do_bench` (CUDA events, L2 flushed before every
  call); one sample is one call. Without triton, the same method by hand.
- CUDA, graph (`cuda_graph`, hot): R calls are captured into one CUDA graph of about
  `GRAPH_TARGET_MS`, and the graph is replayed enough times to honour `min_samples` and
  the budget; one sample is one replay's time / R, a mean of R back-to-back calls with
  launch overhead removed and L2 warm. (`do_bench_cudagraph` captures thousands of calls
  and returns a handful of means, too few samples for the gate.) Python's GC is disabled
  during capture: a collection that frees a tensor inside capture corrupts the graph's
  memory pool, and older Triton releases do not guard against it.
- CPU: `torch.utils.benchmark.Timer.blocked_autorange` at a fixed thread count: calls are
  grouped into calibrated blocks long enough for the clock; one sample is one block's
  per-call mean.

`Timing.timer` names the mode first ("cuda-cold", "cuda-graph", "cpu-blocked"; schema.timing_mode)
and `sample_calls` the calls behind one sample: both go into the row. Everything runs with
the case's device current (`device_scope`): CUDA events, do_bench's flush buffer, Triton
launches and a bare `torch.cuda.synchronize()` all use the current device, which is
cuda:0 unless set. Warm-up always runs first; the budget bounds the sampling time of one
case and `max_samples` its sample count. A `deadline` (the case's wall limit) is checked
between calls: a step is never interrupted, so one call that alone runs past the deadline
ends the case at the next check, after it returns.

With `ranges` (an NVTX range factory, measure/nvtx.py) warm-up, graph capture, the sampling
phase as a whole and every timed call or graph replay in it run inside named NVTX ranges for
Nsight. In cold mode `do_bench` runs its own warm-up calls through the same wrapped step, so
those carry the sample range too. Without `ranges` the step is timed unwrapped.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mlabench.errors import CaseTimeout
from mlabench.measure.nvtx import CAPTURE, SAMPLE, SAMPLES, WARMUP, Mark, marked, no_range


@dataclass(frozen=True)
class TimingSettings:
    budget_s: float = 0.5  # sampling time per case, after warm-up
    warmup_s: float = 0.1
    min_samples: int = 10
    max_samples: int = 1000
    threads: int = 1  # CPU threads (0 = torch's current setting); one by default, for steady samples
    cuda_graph: bool = False


# One graph replay lasts about this long: far above event resolution and the replay's own
# launch cost, short enough that min_samples replays fit a small budget.
GRAPH_TARGET_MS = 20.0
MAX_GRAPH_CALLS = 2000  # bounds capture time and graph memory for microsecond steps


@dataclass(frozen=True)
class Timing:
    samples_ms: list[float]
    timer: str  # how they were taken, recorded in the `timer` column; starts with the mode
    sample_calls: int = 1  # calls averaged into one sample
    hot: bool = False  # L2 warm between calls (graph replay): small working sets may beat HBM


def device_scope(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Make `device` the current CUDA device for the block (a no-op off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def time_step(fn: Callable[[], object], device: torch.device, settings: TimingSettings,
              deadline: float | None = None, ranges: Mark | None = None) -> Timing:
    """Time `fn`; `deadline` is a `time.perf_counter()` value past which the case times out;
    `ranges` puts warm-up and timed calls in NVTX ranges."""
    if device.type == "cuda":
        with device_scope(device):
            return _time_cuda(fn, settings, deadline, ranges)
    return _time_cpu(fn, settings, deadline, ranges)


def check_deadline(deadline: float | None, stage: str) -> None:
    """Raise CaseTimeout naming the stage when the case's wall limit has passed."""
    if deadline is not None and time.perf_counter() > deadline:
        raise CaseTimeout(stage)


def graph_plan(call_ms: float, settings: TimingSettings) -> tuple[int, int]:
    """(calls captured per graph, graph replays) for a step of `call_ms`.

    The graph holds enough calls to last about GRAPH_TARGET_MS; it is replayed to fill the
    budget, at least min_samples and at most max_samples times.
    """
    calls = int(min(MAX_GRAPH_CALLS, max(1, round(GRAPH_TARGET_MS / max(call_ms, 1e-6)))))
    graph_ms = calls * max(call_ms, 1e-6)
    replays = math.ceil(settings.budget_s * 1e3 / graph_ms)
    replays = int(min(settings.max_samples, max(settings.min_samples, replays, 1)))
    return calls, replays


def capture_graph(fn: Callable[[], object], calls: int) -> Any:
    """A CUDA graph of `calls` back-to-back calls of fn, captured with Python's GC disabled."""
    graph = torch.cuda.CUDAGraph()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    finally:
        if enabled:
            gc.enable()
    return graph


def _time_cpu(fn: Callable[[], object], settings: TimingSettings, deadline: float | None = None,
              ranges: Mark | None = None) -> Timing:
    from torch.utils.benchmark import Timer

    threads = settings.threads or torch.get_num_threads()
    sampled = marked(fn, ranges, SAMPLE) if ranges else fn
    timer = Timer(stmt="fn()", globals={"fn": sampled}, num_threads=threads)
    warm_until = time.perf_counter() + settings.warmup_s
    with (ranges or no_range)(WARMUP):
        while True:  # warm-up: at least one call, then until warmup_s
            fn()
            check_deadline(deadline, "warm-up")
            if time.perf_counter() >= warm_until:
                break
    budget = settings.budget_s
    if deadline is not None:  # sampling never plans past the wall limit
        budget = min(budget, max(deadline - time.perf_counter(), 0.0))
    with (ranges or no_range)(SAMPLES):
        measurement = timer.blocked_autorange(min_run_time=budget)
        number = int(measurement.number_per_run)
        samples = [t * 1e3 for t in measurement.times]
        check_deadline(deadline, "sampling")
        # A slow step yields few blocks in the budget: top up with blocks of the same size, never past max_samples.
        # Each is timed as blocked_autorange times its blocks (`_timeit`): the public `timeit` would first run
        # two warm-up calls per block, tripling the cost of a one-call block of an already warm step.
        while len(samples) < min(settings.min_samples, settings.max_samples):
            samples.append(timer._timeit(number) / number * 1e3)
            check_deadline(deadline, "sampling")
    return Timing(samples[: settings.max_samples], f"cpu-blocked threads={threads}, sample = mean of {_calls(number)}",
                  sample_calls=number)


def _time_cuda(fn: Callable[[], object], settings: TimingSettings, deadline: float | None = None,
               ranges: Mark | None = None) -> Timing:
    torch.cuda.synchronize()
    with (ranges or no_range)(WARMUP):
        first = _one_cuda_call_ms(fn)  # also a warm-up
    check_deadline(deadline, "warm-up")
    note = ""
    if settings.cuda_graph:
        try:
            return _time_cuda_graph(fn, settings, first, ranges or no_range)
        except RuntimeError as exc:  # capture refused (a sync or host work inside the step)
            torch.cuda.synchronize()
            note = f"; cuda graph refused: {str(exc).splitlines()[0][:80]}"
    rep_ms = max(settings.budget_s * 1e3, first * settings.min_samples)
    if deadline is not None:  # do_bench cannot be stopped midway: plan it inside the wall limit
        rep_ms = min(rep_ms, max((deadline - time.perf_counter()) * 1e3, first))
    warmup_ms = max(settings.warmup_s * 1e3, first)
    try:
        from triton import testing
    except ImportError:
        cold = _time_cuda_events(fn, settings, first, ranges or no_range)
        return Timing(cold.samples_ms, cold.timer + note)
    with (ranges or no_range)(SAMPLES):
        samples = testing.do_bench(marked(fn, ranges, SAMPLE) if ranges else fn, warmup=warmup_ms, rep=rep_ms,
                                   return_mode="all")
    return Timing(_cap(samples, settings), COLD_TIMER + note)


COLD_TIMER = "cuda-cold: cuda events, L2 flushed before each call"


def _time_cuda_graph(fn: Callable[[], object], settings: TimingSettings, first_ms: float,
                     mark: Mark = no_range) -> Timing:
    # Warm up on a side stream, as capture requires (lazy inits, cuBLAS workspaces, allocator).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), mark(WARMUP):
        for _ in range(max(2, min(1000, math.ceil(settings.warmup_s * 1e3 / max(first_ms, 1e-3))))):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    calls, replays = graph_plan(first_ms, settings)
    with mark(CAPTURE):  # host-side: an NVTX range inside the graph would fire once, at capture
        graph = capture_graph(fn, calls)
    graph.replay()  # first replay uploads the graph
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    with mark(SAMPLES):
        for i in range(replays):
            with mark(SAMPLE):
                starts[i].record()
                graph.replay()
                ends[i].record()
        torch.cuda.synchronize()
    samples = [s.elapsed_time(e) / calls for s, e in zip(starts, ends, strict=True)]
    del graph
    return Timing(samples, f"cuda-graph (hot): sample = mean of {_calls(calls)} in one graph replay",
                  sample_calls=calls, hot=True)


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _cap(samples: list[float], settings: TimingSettings) -> list[float]:
    return [float(s) for s in samples][: settings.max_samples]


def _one_cuda_call_ms(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _time_cuda_events(fn: Callable[[], object], settings: TimingSettings, first_ms: float,
                      mark: Mark = no_range) -> Timing:
    """do_bench's method without triton: flush L2 with a 256 MB write before each sample."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # the current device
    n_warm = max(1, int(settings.warmup_s * 1e3 / max(first_ms, 1e-3)))
    with mark(WARMUP):
        for _ in range(n_warm):
            fn()
    wanted = math.ceil(settings.budget_s * 1e3 / max(first_ms, 1e-3))
    n = int(min(settings.max_samples, max(settings.min_samples, wanted)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    with mark(SAMPLES):
        for i in range(n):
            flush.zero_()
            with mark(SAMPLE):
                starts[i].record()
                fn()
                ends[i].record()
        torch.cuda.synchronize()
    return Timing([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)], COLD_TIMER)
