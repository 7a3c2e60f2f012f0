"""Running one case: build the variant, fill its cache, prepare the backend, check accuracy,
time the step (or, in scope "core", the attention core alone), and turn everything into one
results row.

Whatever happens inside a case (unsupported, skipped, OOM, an exception) becomes
the row's status; nothing escapes except KeyboardInterrupt. A sticky CUDA error (illegal
address, device-side assert) also becomes the row, marked `fatal`: the CUDA context is
lost, so the sweep must stop there. The case runs with its device current (`device_scope`).

A case selected for profiling (`RunContext.profile`) is profiled after its timed samples, on
the same module and step (profiling/case.py); its row says `profiled`. A profile that fails
(a full disk, a profiler error) costs the profile only: the measured row stays, its error
naming the failure.
"""

from __future__ import annotations

import functools
import gc
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mlabench import analytic, schema
from mlabench.backends import BACKENDS, StepInputs
from mlabench.backends.library import LoadFailure
from mlabench.case import Case
from mlabench.context import lengths_summary
from mlabench.errors import CaseTimeout, SkippedError, UnsupportedError, is_sticky_cuda_error
from mlabench.measure import accuracy as acc
from mlabench.measure.envinfo import cpu_model
from mlabench.measure.memory import NvmlDevice, available_ram_bytes, estimate_case_bytes, measure_allocation
from mlabench.measure.nvtx import Mark, no_range, nvtx_ranges
from mlabench.measure.peaks import Peaks, roofline_pct
from mlabench.measure.scope import scoped_call
from mlabench.measure.timing import TimingSettings, check_deadline, device_scope, time_step
from mlabench.profiling.case import ProfileResult, ProfileTarget, profile_case
from mlabench.profiling.request import ProfileRequest
from mlabench.step import ragged_steps
from mlabench.variants import build_variant
from mlabench.variants.registry import torch_dtype

RAM_HEADROOM = 0.8  # use at most this share of available RAM on CPU


@dataclass
class RunContext:
    device: torch.device
    timing: TimingSettings = field(default_factory=TimingSettings)
    peaks: Peaks = field(default_factory=Peaks)
    nvml: NvmlDevice | None = None
    accuracy: bool = True
    seed: int = 0
    timeout_s: float = 300.0  # wall limit of one case, checked between steps (a running call is never cut)
    profile: ProfileRequest | None = None  # trace (and NVTX) for the cases it selects


@dataclass
class CaseResult:
    row: schema.ResultRow
    samples_ms: list[float]
    fatal: bool = False  # a sticky CUDA error: no later case can run in this process
    profile: ProfileResult | None = None
    # The fingerprint (envinfo.device_info) of the device, when another process ran the case:
    # meta.json keeps one per device kind.
    device: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return self.row.status


# A row whose p90 exceeds its p10 by more than this factor is marked `unstable`: its samples
# are not one distribution around one value (threads migrating, a busy host, clock changes).
UNSTABLE_SPREAD = 1.5


def analytic_columns(case: Case) -> dict[str, Any]:
    """Deterministic columns known before anything runs (the formulas; `params` is counted on
    the module itself once it exists). `kv_cache_bytes_per_gpu` is one GPU's share at the case's
    tensor-parallel degree, empty for a variant without a tensor-parallel cache model."""
    sh, step, lengths = case.shape, case.step, case.lengths
    page_size = case.layout.page_size
    kv = analytic.layout_kv_cache_bytes(case.variant, sh, case.batch, case.seq_len, lengths, page_size)
    try:
        per_gpu: int | None = analytic.layout_kv_cache_bytes_per_gpu(case.variant, sh, case.batch, case.seq_len,
                                                                     case.tp, lengths, page_size)
    except NotImplementedError:
        per_gpu = None
    shared = {"kv_cache_bytes_per_gpu": per_gpu, "kv_cache_bytes": kv}
    if lengths is None:
        return {
            **shared,
            "flops": analytic.scoped_flops(case.variant, sh, step, case.scope),
            "bytes": analytic.scoped_bytes(case.variant, sh, step, case.scope),
            **lengths_summary((case.seq_len,), ragged=False),
        }
    steps = ragged_steps(lengths, case.q_len)  # sums over the real lengths, not batch x max
    return {
        **shared,
        "flops": analytic.ragged_scoped_flops(case.variant, sh, steps, case.scope),
        "bytes": analytic.ragged_scoped_bytes(case.variant, sh, steps, case.scope),
        **lengths_summary(lengths),
    }


@functools.cache
def where(device: torch.device) -> dict[str, str]:
    """The `host` and `device_name` columns: the machine and the device kind a case ran on."""
    try:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    except (RuntimeError, AssertionError):  # no usable CUDA here: the row still says where it ran
        name = ""
    return {"host": socket.gethostname(), "device_name": name}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _preflight(case: Case, ctx: RunContext) -> None:
    spec = BACKENDS[case.backend]
    if case.mode not in spec.modes:
        raise UnsupportedError(f"{case.backend} has no {case.mode} path")
    reason = spec.unavailable(ctx.device)
    if isinstance(reason, LoadFailure):  # installed but broken: a fact about this install, not the case
        raise UnsupportedError(f"{case.backend} unavailable: {reason}")
    if reason:
        raise SkippedError(f"{case.backend} unavailable: {reason}")
    if ctx.device.type == "cpu":
        need = estimate_case_bytes(case, ctx.accuracy)
        have = available_ram_bytes()
        if have is not None and need > RAM_HEADROOM * have:
            raise SkippedError(f"needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB RAM available")


# What measures a case once the row holds its key and analytic columns: fills the row's measured
# columns and returns the timed samples (ms). `_measure` below is one process on one device;
# a tensor-parallel case's ranks each run theirs (mlabench.tp).
Measure = Callable[[Case, "RunContext", dict[str, Any], list[ProfileResult]], list[float]]


def run_case(case: Case, ctx: RunContext, measure: Measure | None = None) -> CaseResult:
    row: dict[str, Any] = {**case.key, **analytic_columns(case), "case_id": case.case_id, "status": "ok",
                           **where(ctx.device)}
    started = time.perf_counter()
    samples: list[float] = []
    fatal = False
    profiled: list[ProfileResult] = []
    try:
        with device_scope(ctx.device):
            _preflight(case, ctx)
            samples = (measure or _measure)(case, ctx, row, profiled)
    except UnsupportedError as exc:
        row.update(status="unsupported", error=str(exc))
    except SkippedError as exc:
        row.update(status="skipped", error=str(exc))
    except CaseTimeout as exc:
        row.update(status="timeout", error=f"past the case's wall limit of {ctx.timeout_s:g} s (checked after {exc})")
    except (torch.OutOfMemoryError, MemoryError) as exc:
        row.update(status="oom", error=_first_line(exc))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken case must not end the sweep
        row.update(status="oom" if _is_cpu_oom(exc) else "error", error=_first_line(exc))
        fatal = ctx.device.type == "cuda" and is_sticky_cuda_error(exc)
    finally:
        # Reference counting already freed the case's tensors with _measure's frame; a full
        # collection (0.1 s+) is only worth it where cycles may pin memory: GPU memory the next
        # case needs, and frames held by a failed case's traceback.
        if ctx.device.type == "cuda" or row["status"] in ("error", "oom"):
            gc.collect()
        if ctx.device.type == "cuda" and not fatal:  # a lost context raises again on any call
            torch.cuda.empty_cache()
    if row["status"] not in ("ok", "inaccurate"):
        samples = []
    row["wall_s"] = round(time.perf_counter() - started, 3)
    # Built while the case ran as a plain mapping; frozen here, where a misspelt column fails.
    return CaseResult(schema.ResultRow.from_mapping(row), samples, fatal, profiled[0] if profiled else None)


def _is_cpu_oom(exc: Exception) -> bool:
    """torch's CPU allocator reports a failed allocation as a plain RuntimeError."""
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _measure(case: Case, ctx: RunContext, row: dict[str, Any], profiled: list[ProfileResult]) -> list[float]:
    deadline = time.perf_counter() + ctx.timeout_s
    device, sh, step = ctx.device, case.shape, case.step
    dtype = torch_dtype(case.dtype)
    module = build_variant(case.variant, sh, device, dtype, seed=ctx.seed)
    # Length-dependent state (RoPE tables, Linformer's [k, n] weights) first, so that the measured
    # allocation is the cache tensors alone.
    module.prepare_length(case.seq_len)
    row["params"] = sum(p.numel() for p in module.parameters())
    layout = case.layout
    # Pages are shuffled with the case's seed, as the context is filled with it.
    delta = measure_allocation(lambda: module.allocate_cache(case.batch, case.seq_len, lengths=case.lengths,
                                                             page_size=layout.page_size, shuffle_seed=ctx.seed),
                               device, ctx.nvml)
    row.update(kv_cache_bytes_measured=module.cache_nbytes(), kv_cache_bytes_allocator=delta.allocator,
               kv_cache_bytes_nvml=delta.nvml)
    if device.type == "cpu":
        row["threads"] = ctx.timing.threads or torch.get_num_threads()
    if step.context:
        module.fill_cache_random(step.context, seed=ctx.seed + 1)  # on the device, in the cache dtype
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    x = torch.randn(case.batch, step.new_tokens, sh.hidden_size, generator=gen).to(device, dtype)
    inputs = StepInputs(x=x, start_pos=step.context)
    # A ragged or paged step's positions and write slots, built here, outside the timed calls.
    module.cache_map.prepare_step(case.batch, step.context, step.new_tokens)

    prepared = BACKENDS[case.backend].prepare(module, case, inputs)
    row.update(backend_detail=prepared.detail, compile_ms=prepared.compile_ms,
               backend_cache_bytes=prepared.extra_cache_bytes)
    timed = scoped_call(case, module, prepared, inputs)
    check_deadline(deadline, "setup and compilation")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = timed.fn()
    _sync(device)
    check_deadline(deadline, "the first call")
    if device.type == "cuda":
        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)

    if ctx.accuracy:
        check_accuracy(case, row, out, timed.reference, device, timed.quant_reference)
    del out
    check_deadline(deadline, "the accuracy check")

    request = ctx.profile if ctx.profile is not None and ctx.profile.selects(case) else None
    ranges = nvtx_ranges(device) if request is not None and request.nvtx else None
    timing = time_step(timed.fn, device, ctx.timing, deadline, ranges)
    summarize_samples(case, ctx, row, timing.samples_ms)
    row.update(timer=timing.timer, sample_calls=timing.sample_calls, profiled=int(request is not None))
    l2 = l2_cache_bytes(device)
    if timing.hot and l2:
        # Replayed back to back, a working set inside L2 is read from L2, not HBM: gbps and
        # roofline_pct of such a row may exceed the memory roofline.
        row["fits_l2"] = bool(row["bytes"] <= l2)
    if request is not None and request.traces(case):  # strictly after the samples above
        if time.perf_counter() > deadline:  # the samples stand; a profile past the wall limit is dropped
            _note(row, f"profile skipped: past the case's wall limit of {ctx.timeout_s:g} s")
        else:
            target = ProfileTarget(case, module, prepared, inputs, timed.fn, row["latency_ms"])
            _profile(target, request, ctx, ranges, row, profiled)
    return timing.samples_ms


def _profile(target: ProfileTarget, request: ProfileRequest, ctx: RunContext, ranges: Mark | None,
             row: dict[str, Any], profiled: list[ProfileResult]) -> None:
    try:
        profiled.append(profile_case(target, request, ctx.device, ctx.timing, ranges or no_range))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a full disk, a profiler failure: the measurement taken before it stands
        if is_sticky_cuda_error(exc):  # except a lost CUDA context, which ends the sweep
            raise
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        _note(row, f"profile not written: {text}")


def _note(row: dict[str, Any], note: str) -> None:
    """Add a note to the row's error column, keeping what is there (its status stays)."""
    row["error"] = f"{row['error']}; {note}" if row.get("error") else note


def check_accuracy(case: Case, row: dict[str, Any], out: torch.Tensor, reference: Any,
                    device: torch.device, quant_reference: Any = None) -> None:
    """Compare `out` with the float64 reference; a reference that does not fit leaves accuracy
    empty with the reason (the backend itself ran, so the row stays ok). With `quant_reference`
    (an FP8 cache, dequantized) the quantization's own error is `quant_err` and widens the
    tolerance (measure/accuracy.py)."""
    quant = None
    try:
        ref = reference()
        if quant_reference is not None:
            quant = acc.quant_error(quant_reference(), ref, out.shape[0], case.dtype)
            row["quant_err"] = quant.rel_err
    except (torch.OutOfMemoryError, MemoryError) as exc:
        row["error"] = f"accuracy not checked: the float64 reference ran out of memory ({_first_line(exc)})"
        ref = None
    if ref is None:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return
    result = acc.compare(out, ref, case.dtype, quant)
    row.update(max_abs_err=result.max_abs_err, rel_err=result.rel_err, cos_diff=result.cos_diff)
    if not result.ok:
        row.update(status="inaccurate", error=result.describe())


def l2_cache_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or None


def summarize_samples(case: Case, ctx: RunContext, row: dict[str, Any], samples: list[float]) -> None:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    if len(ordered) >= 2:
        q = statistics.quantiles(ordered, n=20, method="inclusive")  # 5% steps: q[1] = p10, q[17] = p90
        p10, p90 = q[1], q[17]
        quart = statistics.quantiles(ordered, n=4, method="inclusive")
        iqr = quart[2] - quart[0]
    else:
        p10 = p90 = median
        iqr = 0.0
    seconds = median * 1e-3
    row.update(
        latency_ms=median, latency_ms_p10=p10, latency_ms_p90=p90, latency_ms_iqr=iqr, n_samples=len(ordered),
        tokens_per_s=case.new_tokens / seconds if seconds > 0 else None,
        tflops=row["flops"] / seconds / 1e12 if seconds > 0 else None,
        gbps=row["bytes"] / seconds / 1e9 if seconds > 0 else None,
        roofline_pct=roofline_pct(row["flops"], row["bytes"], median, ctx.peaks, case.dtype),
        unstable=int(p10 > 0 and p90 / p10 > UNSTABLE_SPREAD),
    )
