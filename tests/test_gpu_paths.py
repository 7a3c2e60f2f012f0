"""GPU code paths checked on the CPU: the device-side cache fill, the current device, CUDA-graph
timing (against stand-ins for torch.cuda), sticky CUDA errors, a float64 reference that runs
out of memory, libraries that cannot load, bandwidth probes, sdpa's zero-stride KV head,
timing modes in compare, commit provenance and the gpu-baseline suite's size.

Tests that need a real GPU carry the `gpu` marker and skip here."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from cli_run import run_cli

from mlabench import schema
from mlabench.backends import BACKENDS
from mlabench.backends.library import LoadFailure, library_failure, loading
from mlabench.case import Case
from mlabench.config import from_name
from mlabench.errors import UnsupportedError, is_sticky_cuda_error
from mlabench.measure import timing
from mlabench.measure.timing import GRAPH_TARGET_MS, Timing, TimingSettings, graph_plan
from mlabench.runner import RunContext, run_case
from mlabench.suites import Suite, expand, load_suite
from mlabench.variants import build_variant
from mlabench.variants.fill import random_fill

CPU = torch.device("cpu")
FAST = TimingSettings(budget_s=0.002, warmup_s=0.0, min_samples=2)
SERVED = {b: s.variants for b, s in BACKENDS.items()}
# random_fill(seed 0) and (seed 7, stream 3, from index 2**33, bf16): pinned so every device
# and every later version must produce exactly these values.
GOLDEN_F32 = [0.20444953441619873, 1.1865991353988647, -1.6408344507217407, 1.5012613534927368,
              -1.2306997776031494, -1.343888521194458]
GOLDEN_BF16 = [-1.078125, -0.97265625, -0.84765625, 0.6796875]


def _case(variant: str = "gqa", backend: str = "eager", seq_len: int = 16, **axes: Any) -> Case:
    grid = {"model": ["tiny"], "variant": [variant], "backend": [backend], "mode": ["decode"], "batch": [2],
            "seq_len": [seq_len], **{k: [v] for k, v in axes.items()}}
    return expand(Suite("t", "", "", (grid,)), "cpu", SERVED).cases[0]


# --- cache fill -------------------------------------------------------------------------------
def test_random_fill_is_pinned_chunk_free_and_unit_variance() -> None:
    t = torch.empty(6)
    random_fill(t, 0)
    assert t.tolist() == GOLDEN_F32
    b = torch.empty(4, dtype=torch.bfloat16)
    random_fill(b, 7, stream=3, first_index=2**33)
    assert b.float().tolist() == GOLDEN_BF16
    big, chunked = torch.empty(100_003), torch.empty(100_003)
    random_fill(big, 11)
    random_fill(chunked, 11, chunk=977)
    assert torch.equal(big, chunked)
    assert abs(big.mean().item()) < 0.02 and abs(big.var().item() - 1) < 0.02
    other = torch.empty(100_003)
    random_fill(other, 12)
    assert not torch.equal(big, other)


def test_random_fill_works_in_chunks_on_the_output_device(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[int, torch.device]] = []
    real_arange = torch.arange

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = real_arange(*args, **kwargs)
        made.append((out.numel(), out.device))
        return out

    monkeypatch.setattr(torch, "arange", spy)
    out = torch.empty(10_000, dtype=torch.bfloat16)
    random_fill(out, 1, chunk=1000)
    assert len(made) == 10 and all(n == 1000 and d == out.device for n, d in made)


@pytest.mark.parametrize("variant", ["gqa", "mla-absorbed", "mla-expanded"])
def test_fill_cache_random_depends_on_seed_not_on_allocation(variant: str) -> None:
    shape = from_name("tiny", dtype="bfloat16")
    a = build_variant(variant, shape, CPU, torch.bfloat16, seed=0)
    b = build_variant(variant, shape, CPU, torch.bfloat16, seed=0)
    a.allocate_cache(3, 40)
    b.allocate_cache(3, 64)  # more slots: the same values in the first 30
    a.fill_cache_random(30, seed=9)
    b.fill_cache_random(30, seed=9)
    for name, t in a.cache_tensors().items():
        u = b.cache_tensors()[name]
        assert t.dtype == torch.bfloat16
        assert torch.equal(t[:, :30], u[:, :30])
        assert not t[:, 30:].any() and not u[:, 30:].any()  # slots past the context untouched
    names = list(a.cache_tensors())
    if len(names) == 2:  # K and V get different streams
        assert not torch.equal(a.cache_tensors()[names[0]][:, :30], a.cache_tensors()[names[1]][:, :30])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_fill_gives_the_same_values_on_the_gpu() -> None:
    t = torch.empty(6, device="cuda")
    random_fill(t, 0)
    assert t.cpu().tolist() == GOLDEN_F32
    b = torch.empty(4, dtype=torch.bfloat16, device="cuda")
    random_fill(b, 7, stream=3, first_index=2**33)
    assert b.float().cpu().tolist() == GOLDEN_BF16


# --- current device ---------------------------------------------------------------------------
class FakeDevice:
    """Stands in for torch.cuda.device: records which index is current."""

    current: list[int] = []

    def __init__(self, device: torch.device):
        self.idx = torch.device(device).index

    def __enter__(self) -> None:
        FakeDevice.current.append(self.idx)

    def __exit__(self, *exc: object) -> None:
        FakeDevice.current.pop()


def test_device_scope_makes_the_case_device_current(monkeypatch: pytest.MonkeyPatch) -> None:
    scope = timing.device_scope(torch.device("cuda", 1))
    assert isinstance(scope, torch.cuda.device) and scope.idx == 1
    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    seen: list[list[int]] = []

    def fake_time_cuda(fn: Any, settings: TimingSettings, deadline: float | None = None,
                       ranges: Any = None) -> Timing:
        seen.append(list(FakeDevice.current))
        return Timing([1.0], "cuda-cold")

    monkeypatch.setattr(timing, "_time_cuda", fake_time_cuda)
    timing.time_step(lambda: None, torch.device("cuda", 1), FAST)
    assert seen == [[1]] and FakeDevice.current == []


def test_run_case_and_probes_run_inside_the_device_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlabench.measure.peaks as peaks
    import mlabench.runner as runner

    entered: list[torch.device] = []

    @contextlib.contextmanager
    def recorder(device: torch.device):  # type: ignore[no-untyped-def]
        entered.append(device)
        yield

    monkeypatch.setattr(runner, "device_scope", recorder)
    monkeypatch.setattr(peaks, "device_scope", recorder)
    monkeypatch.setattr(peaks, "_probe", lambda device, dtypes, budget_s: peaks.Peaks())
    assert run_case(_case(), RunContext(device=CPU, timing=FAST)).status == "ok"
    peaks.probe_peaks(CPU, ["float32"])
    assert entered == [CPU, CPU]


# --- CUDA-graph timing --------------------------------------------------------------------------
def test_graph_plan_honours_min_samples_and_target_length() -> None:
    settings = TimingSettings(budget_s=0.5, min_samples=10, max_samples=1000)
    calls, replays = graph_plan(0.01, settings)  # a 10 us step
    assert calls == round(GRAPH_TARGET_MS / 0.01) and replays == 25  # 0.5 s of 20 ms replays
    calls, replays = graph_plan(0.01, TimingSettings(budget_s=0.0, min_samples=10))
    assert replays == 10  # min_samples even with no budget
    calls, replays = graph_plan(50.0, settings)  # slower than the target: one call per replay
    assert calls == 1 and replays == 10
    calls, replays = graph_plan(1e-5, TimingSettings(budget_s=100.0, max_samples=40))
    assert calls == timing.MAX_GRAPH_CALLS and replays == 40


class FakeCuda:
    """Enough of torch.cuda for _time_cuda_graph: events return fixed elapsed times; capture
    records whether Python's GC was enabled while the step was being captured."""

    def __init__(self, elapsed_ms: float):
        self.elapsed_ms = elapsed_ms
        self.gc_during_capture: list[bool] = []
        self.replays = 0
        self.capturing = False
        outer = self

        class Event:
            def __init__(self, enable_timing: bool = False):
                pass

            def record(self) -> None:
                pass

            def elapsed_time(self, other: Any) -> float:
                return outer.elapsed_ms

        class Graph:
            def replay(self) -> None:
                outer.replays += 1

        @contextlib.contextmanager
        def graph(g: Any):  # type: ignore[no-untyped-def]
            outer.capturing = True
            yield
            outer.capturing = False

        class Stream:
            def wait_stream(self, other: Any) -> None:
                pass

        self.Event, self.CUDAGraph, self.graph, self.Stream = Event, Graph, graph, Stream

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("Event", "CUDAGraph", "graph", "Stream"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: self.Stream())


def test_graph_timing_replays_a_short_graph_and_says_what_a_sample_is(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda(elapsed_ms=20.0)
    fake.install(monkeypatch)
    calls_in_capture = 0

    def step() -> None:
        nonlocal calls_in_capture
        if fake.capturing:
            calls_in_capture += 1
            fake.gc_during_capture.append(gc.isenabled())

    settings = TimingSettings(budget_s=0.1, warmup_s=0.0, min_samples=12)
    assert gc.isenabled()
    result = timing._time_cuda_graph(step, settings, first_ms=0.5)
    assert gc.isenabled()  # restored after capture
    assert calls_in_capture == 40 and fake.gc_during_capture and not any(fake.gc_during_capture)
    assert result.sample_calls == 40 and result.hot
    assert len(result.samples_ms) == 12  # min_samples replays, not a handful of means
    assert fake.replays == 13  # plus the first, untimed replay
    assert result.samples_ms == [20.0 / 40] * 12
    assert schema.timing_mode(result.timer) == "cuda-graph" and "mean of 40 calls" in result.timer


def test_capture_restores_gc_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(1.0).install(monkeypatch)

    def broken() -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError):
        timing.capture_graph(broken, 3)
    assert gc.isenabled()


def test_timing_modes_from_timer_text() -> None:
    assert schema.timing_mode(timing.COLD_TIMER) == "cuda-cold"
    assert schema.timing_mode("cuda-events, L2 flushed (cold)") == "cuda-cold"  # rows written before the mode word
    assert schema.timing_mode("cuda-graph (hot): sample = mean of 8 calls") == "cuda-graph"
    assert schema.timing_mode("cpu-blocked threads=2, sample = mean of 4 calls") == "cpu"


@pytest.mark.parametrize(("hot", "l2", "expected"), [(True, 1 << 40, True), (True, 1, False), (False, 1 << 40, None)])
def test_hot_rows_say_whether_they_fit_in_l2(monkeypatch: pytest.MonkeyPatch, hot: bool, l2: int,
                                             expected: bool | None) -> None:
    import mlabench.runner as runner

    monkeypatch.setattr(runner, "time_step",
                        lambda fn, device, settings, deadline=None, ranges=None: Timing([1.0, 1.1], "t", 7, hot))
    monkeypatch.setattr(runner, "l2_cache_bytes", lambda device: l2)
    row = run_case(_case(), RunContext(device=CPU, timing=FAST)).row
    assert row["sample_calls"] == 7 and row.get("fits_l2") is expected


# --- failures that must not poison the sweep, or must stop it --------------------------------------
ILLEGAL = "CUDA error: an illegal memory access was encountered\nCompile with `TORCH_USE_CUDA_DSA`"


def test_sticky_cuda_errors_are_recognised() -> None:
    assert is_sticky_cuda_error(RuntimeError(ILLEGAL))
    assert is_sticky_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_sticky_cuda_error(RuntimeError("CUDA out of memory"))
    assert not is_sticky_cuda_error(ValueError("illegal memory access"))


def test_a_sticky_error_marks_the_row_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlabench.runner as runner

    def boom(case: Case, ctx: RunContext, row: dict[str, Any], *_: Any) -> list[float]:
        raise RuntimeError(ILLEGAL)

    emptied: list[int] = []
    monkeypatch.setattr(runner, "_measure", boom)
    monkeypatch.setattr(runner, "device_scope", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    result = run_case(_case(), RunContext(device=torch.device("cuda", 0), timing=FAST))
    assert result.fatal and result.status == "error" and "illegal memory access" in result.row["error"]
    assert emptied == []  # a lost context is not touched again
    assert not run_case(_case(), RunContext(device=CPU, timing=FAST)).fatal


def test_sweep_stops_on_a_sticky_error_keeps_rows_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import mlabench.sweep as sweep_mod

    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[settings]\nbudget_s = 0.002\nwarmup_s = 0.0\nmin_samples = 2\nthreads = 1\n'
                     '[[grid]]\nmodel = "tiny"\nvariant = "gqa"\nbackend = "eager"\nseq_len = [8, 16, 24, 32]\n')
    real = sweep_mod.run_case
    calls: list[int] = []

    def second_case_loses_the_device(case: Case, ctx: RunContext) -> Any:
        calls.append(1)
        result = real(case, ctx)
        if len(calls) == 2:
            result.row = dataclasses.replace(result.row, status="error",
                                             error=f"RuntimeError: {ILLEGAL.splitlines()[0]}")
            result.samples_ms = []
            result.fatal = True
        return result

    monkeypatch.setattr(sweep_mod, "run_case", second_case_loses_the_device)
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-probe", "--no-report"], capsys)
    assert code == 1 and "--resume" in err and "sticky CUDA error" in " ".join(err.split())
    rows = list(csv.DictReader((out / schema.RESULTS_CSV).open()))
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert json.loads((out / schema.META_JSON).read_text())["device_lost"].startswith("RuntimeError")
    monkeypatch.setattr(sweep_mod, "run_case", real)
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--resume", "--no-probe",
                            "--no-report"], capsys)
    rows = list(csv.DictReader((out / schema.RESULTS_CSV).open()))
    assert len(rows) == 4 and [r["status"] for r in rows].count("ok") == 3  # the failed case is not retried


@pytest.mark.parametrize("scope", ["step", "core"])
def test_a_reference_out_of_memory_leaves_accuracy_empty_not_oom(monkeypatch: pytest.MonkeyPatch,
                                                                  scope: str) -> None:
    import mlabench.measure.accuracy as acc
    import mlabench.measure.scope as scope_mod

    def oom(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(acc, "reference_output", oom)
    monkeypatch.setattr(scope_mod, "core_reference", oom)
    row = run_case(_case(scope=scope), RunContext(device=CPU, timing=FAST)).row
    assert row["status"] == "ok" and row["latency_ms"] > 0
    assert row.get("rel_err") is None and row["error"].startswith("accuracy not checked: the float64 reference ran")


def test_library_load_and_jit_failures_are_unsupported() -> None:
    for exc in (RuntimeError("Ninja build stopped: nvcc not found"), AttributeError("module has no attribute 'mla'"),
                TypeError("plan() got an unexpected keyword argument"), OSError("undefined symbol: _ZN3c10"),
                RuntimeError("CUDA error: no kernel image is available for execution on the device")):
        err = library_failure("flashinfer", exc)
        assert isinstance(err, UnsupportedError) and "flashinfer cannot load or build" in str(err)
    assert library_failure("flashinfer", RuntimeError(ILLEGAL)) is None  # must stop the sweep instead
    assert library_failure("flashinfer", ValueError("bad shape")) is None
    with pytest.raises(UnsupportedError, match="nvcc"), loading("flashinfer"):
        raise RuntimeError("JIT compilation failed: nvcc: command not found")
    with pytest.raises(ValueError), loading("flashinfer"):
        raise ValueError("a bug in the case, not the library")


def test_flashinfer_without_a_compiler_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_backends_paged import setup_step

    from mlabench.backends import flashinfer

    class NoNvcc:
        def __init__(self, *args: Any, **kwargs: Any):
            pass

        def plan(self, *args: Any) -> None:
            raise RuntimeError("Ninja build failed: /bin/sh: nvcc: not found")

    lib = SimpleNamespace(mla=SimpleNamespace(BatchMLAPagedAttentionWrapper=NoNvcc))
    monkeypatch.setattr(flashinfer, "_load_library", lambda: (lib, None))
    module, case, inputs = setup_step("flashinfer", q_len=1)
    with pytest.raises(UnsupportedError, match="flashinfer cannot load or build its kernels here.*nvcc"):
        BACKENDS["flashinfer"].prepare(module, case, inputs)


def test_an_installed_library_that_fails_to_import_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.backends import flashmla

    monkeypatch.setattr(flashmla, "_load_library",
                        lambda: (None, LoadFailure("flash_mla failed to import: OSError: libcudart.so.13")))
    row = run_case(_case("mla-absorbed", "flashmla"), RunContext(device=CPU, timing=FAST)).row
    assert row["status"] == "unsupported" and "libcudart" in row["error"]
    monkeypatch.setattr(flashmla, "_load_library", lambda: (None, "flash_mla is not installed"))
    assert run_case(_case("mla-absorbed", "flashmla"), RunContext(device=CPU, timing=FAST)).status == "skipped"


# --- peaks ---------------------------------------------------------------------------------------
def test_read_probe_is_the_roofline_bandwidth(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlabench.measure.peaks as peaks
    from mlabench.report.tables import _peak_text

    times = iter([2.0, 0.5, 1.0])  # copy, read, matmul (ms)
    monkeypatch.setattr(peaks, "_median_ms", lambda fn, device, budget_s: (fn(), next(times))[1])
    p = peaks.probe_peaks(CPU, ["float32"])
    n = 256 << 20
    assert p.copy_bytes_per_s == pytest.approx(2 * n / 2e-3) and p.read_bytes_per_s == pytest.approx(n / 0.5e-3)
    assert p.bytes_per_s == p.read_bytes_per_s and p.bandwidth_probe == "read"
    meta = p.as_meta("float32")
    assert meta["roofline_bandwidth"] == "read" and meta["bytes_per_s_copy"] == p.copy_bytes_per_s
    text = _peak_text({"peaks": meta})
    assert "roofline_pct uses the read bandwidth" in text and "copy" in text
    assert peaks.spec_peaks("NVIDIA H100 80GB HBM3", ["bfloat16"]).bandwidth_probe == "spec"


# --- sdpa: one KV head as a zero-stride expansion ----------------------------------------------------
def test_sdpa_gives_one_kv_head_to_the_efficient_kernel_without_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.functional as F

    from mlabench.backends import sdpa
    from mlabench.backends.registry import StepInputs

    def efficient_if_expanded(q, k, v, mask, is_causal, scale, gqa):  # type: ignore[no-untyped-def]
        return "efficient" if (k.shape[1] == q.shape[1] and k.stride(1) == 0 and not gqa) else "math"

    calls: list[dict[str, Any]] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):  # type: ignore[no-untyped-def]
        calls.append({"k_stride": k.stride(), "k_ptr": k.data_ptr(), "v_ptr": v.data_ptr(), "heads": k.shape[1],
                      "gqa": kwargs.get("enable_gqa")})
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(sdpa, "_dispatcher_choice", efficient_if_expanded)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    case = _case("mla-absorbed", "sdpa", seq_len=24)
    module = build_variant("mla-absorbed", case.shape, CPU, torch.float32, seed=0)
    module.allocate_cache(2, 24)
    module.fill_cache_random(23, seed=1)
    x = torch.randn(2, 1, case.shape.hidden_size, generator=torch.Generator().manual_seed(3))
    ref = module.reference()(x.double(), 23)
    prepared = BACKENDS["sdpa"].prepare(module, case, StepInputs(x, 23))
    assert prepared.detail.endswith("kv-expanded")
    out = prepared.fn()
    call = calls[-1]
    cache = module.cache_tensors()["kv_cache"]
    assert call["heads"] == case.shape.num_heads and call["k_stride"][1] == 0 and call["gqa"] is False
    assert call["k_ptr"] == cache.data_ptr() == call["v_ptr"]  # the cache itself, no H-fold copy
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    # Where the efficient kernel would not take it, the one head goes through enable_gqa as before.
    monkeypatch.setattr(sdpa, "_dispatcher_choice", lambda *a: "math")
    calls.clear()
    BACKENDS["sdpa"].prepare(module, case, StepInputs(x, 23)).fn()
    assert calls[-1]["heads"] == 1 and calls[-1]["gqa"] is True


# --- compare, provenance, suite size -----------------------------------------------------------
def _set_timer(run: Path, timer: str) -> None:
    path = run / schema.RESULTS_CSV
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        if r["timer"]:
            r["timer"] = timer
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_compare_refuses_runs_timed_in_different_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthetic_runs import make_single_point_run

    base, cand = make_single_point_run(tmp_path / "base"), make_single_point_run(tmp_path / "cand")
    _set_timer(base, timing.COLD_TIMER)
    _set_timer(cand, "cuda-graph (hot): sample = mean of 40 calls in one graph replay")
    code, _, err = run_cli(["compare", str(base), str(cand)], capsys)
    assert code == 3 and "timing mode differs" in err and "cuda-cold" in err and "cuda-graph" in err
    _set_timer(cand, timing.COLD_TIMER)
    code, _, err = run_cli(["compare", str(base), str(cand)], capsys)
    assert code != 3, err


def test_commit_from_the_environment_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.measure.envinfo import GIT_COMMIT_ENV, git_commit

    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    assert git_commit(tmp_path) is None
    monkeypatch.setenv(GIT_COMMIT_ENV, "0123456789ab")
    assert git_commit(tmp_path) == "0123456789ab"


def test_gpu_baseline_covers_the_plan_and_fits_eight_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from mlabench.estimate import estimate_sweep
    from mlabench.settings import SweepSettings

    suite = load_suite("gpu-baseline")
    cases = expand(suite, "cuda:0", SERVED).cases
    core = [c for c in cases if c.scope == "core"]
    assert {c.backend for c in core} == {"triton", "flashinfer", "flashmla", "sdpa"}
    assert {(c.model, c.batch, c.seq_len) for c in core} == {
        (m, b, t) for m in ("deepseek-v2-lite", "deepseek-v3") for b in (32, 64) for t in (4096, 16384)}
    step = [c for c in cases if c.scope == "step" and c.suite == "gpu-baseline"]
    assert {c.variant for c in step if c.model == "deepseek-v3"} == {"mla-expanded", "mla-latent", "mla-absorbed"}
    assert {c.variant for c in step if c.model == "llama-3-8b"} == {"gqa", "mha", "mqa", "lowrank-kv"}
    assert {(c.batch, c.seq_len) for c in step if c.backend == "eager"} == {(1, 4096), (1, 32768), (8, 4096),
                                                                           (8, 32768)}
    assert {c.dtype for c in step} == {"bfloat16"}
    claims = [c for c in cases if c.suite == "claims"]
    assert len(claims) == 9
    for graph in (False, True):
        settings = SweepSettings.resolve(suite.settings, {"cuda_graph": graph})
        assert estimate_sweep(cases, settings, "cuda", "NVIDIA H100 80GB HBM3").seconds < 8 * 60
    # The dry run prints count and estimate, exits 0 and creates nothing.
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["sweep", "--suite", "gpu-baseline", "--device", "cuda", "--dry-run"], capsys)
    assert code == 0, err
    assert f"{len(cases)} cases x 3 rounds, estimated" in out and "estimate" in out.split("\n", 1)[1]
    assert list(tmp_path.iterdir()) == []
    code, out, _ = run_cli(["sweep", "--suite", "gpu-baseline", "--device", "cuda", "--dry-run", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["cases"] == len(cases) and doc["estimated_s"] < 480
