"""Profiling one case (--profile, --profile-match, --memory-snapshot, --nvtx) and the `profiled` column.

On the CPU: the trace loads as JSON with traceEvents, the breakdown's shares partition the
step, NVTX ranges are entered (through a stand-in: torch's are no-ops without CUDA) with
every sample before the first profiled step, bad input is one line and exit 2 before any
case runs, and compare refuses profiled against unprofiled. The CUDA parts (kernels, the
allocator snapshot, real NVTX) run under the `gpu` marker.
"""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from cli_run import run_cli
from synthetic_runs import make_run

from mlabench import runner, schema
from mlabench.backends import BACKENDS
from mlabench.case import Case
from mlabench.measure import nvtx
from mlabench.measure.timing import TimingSettings
from mlabench.profiling import breakdown as bd
from mlabench.profiling.request import ProfileRequest
from mlabench.profiling.trace import PROFILE_STEPS
from mlabench.runner import RunContext, run_case
from mlabench.suites import Suite, expand

FAST = ["--budget", "0.01", "--warmup", "0.001", "--min-samples", "3", "--no-probe", "--device", "cpu"]
CASE = ["--model", "tiny", "--variant", "mla-absorbed", "--backend", "eager", "--seq-len", "64"]
TIMING = TimingSettings(budget_s=0.01, warmup_s=0.001, min_samples=3)


def _case(backend: str = "eager", scope: str = "step") -> Case:
    grid = {"model": ["tiny"], "variant": ["mla-absorbed"], "backend": [backend], "mode": ["decode"],
            "batch": [2], "seq_len": [48], "scope": [scope]}
    return expand(Suite("t", "", "", (grid,)), "cpu", {b: s.variants for b, s in BACKENDS.items()}).cases[0]


def _breakdown_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- run --profile on the CPU ----------------------------------------------------------------
def test_run_profile_writes_a_trace_a_breakdown_and_prints_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prof = tmp_path / "prof"
    code, out, err = run_cli(["run", *CASE, *FAST, "--profile", str(prof), "--memory-snapshot", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["profiled"] == 1 and row["status"] == "ok"
    stem = row["case_id"]
    with gzip.open(prof / f"{stem}.trace.json.gz", "rt") as f:
        trace = json.load(f)
    names = [e.get("name", "") for e in trace["traceEvents"]]
    assert sum(n.startswith("ProfilerStep#") for n in names) == PROFILE_STEPS
    assert bd.CORE_RANGE in names and any(n.startswith("aten::") for n in names)
    rows = _breakdown_rows(prof / f"{stem}.breakdown.csv")
    assert abs(sum(float(r["share_pct"]) for r in rows) - 100.0) < 1e-6
    assert abs(sum(round(float(r["share_pct"]), 1) for r in rows) - 100.0) <= 0.05 * len(rows)
    assert [float(r["total_us"]) for r in rows] == sorted((float(r["total_us"]) for r in rows), reverse=True)
    assert any(r["name"] == "aten::einsum" and float(r["calls_per_step"]) >= 1 for r in rows)
    # The table (on stderr under --json), the core-share check and exactly one snapshot line.
    assert "top 10 by CPU operator (self time)" in err and "share %" in err
    assert "% of the profiled step (trace) vs core/step latency" in err
    assert [line for line in err.splitlines() if "snapshot" in line] == [
        "memory snapshots are CUDA-only (the CUDA caching allocator records them); none taken on cpu"]
    assert not list(prof.glob("*.pickle"))
    summary = json.loads((prof / f"{stem}.profile.json").read_text())
    assert summary["files"]["trace"] == f"{stem}.trace.json.gz" and 0 < summary["core_share_pct"] < 100
    assert summary["core_latency_ms"] > 0 and summary["step_latency_ms"] == pytest.approx(row["latency_ms"])


def test_sweep_profile_match_profiles_only_the_cases_it_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prof, out_dir = tmp_path / "prof", tmp_path / "run"
    code, _, err = run_cli(["sweep", *FAST, "--model", "tiny", "--variant", "mla-absorbed", "--backend", "eager",
                            "--mode", "decode", "--batch", "1", "--seq-len", "32", "--q-len", "1",
                            "--scope", "step,core", "--out", str(out_dir), "--no-report", "--profile", str(prof),
                            "--profile-match", "scope=core"], capsys)
    assert code == 0, err
    with (out_dir / schema.RESULTS_CSV).open(newline="") as f:
        rows = {r["scope"]: r for r in csv.DictReader(f)}
    assert rows["core"]["profiled"] == "1" and rows["step"]["profiled"] == "0"
    assert sorted(p.name for p in prof.iterdir()) == sorted(
        f"{rows['core']['case_id']}.{s}" for s in ("trace.json.gz", "breakdown.csv", "profile.json"))


# --- NVTX ranges, through a stand-in ---------------------------------------------------------
def test_nvtx_ranges_wrap_warmup_each_timed_call_then_the_profiled_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = RangeLog()
    log = ranges.pushed
    monkeypatch.setattr(runner, "nvtx_ranges", lambda device: ranges.ranges)
    calls = [0]
    original = BACKENDS["eager"].prepare

    def counting_prepare(module: Any, case: Case, inputs: Any) -> Any:
        prepared = original(module, case, inputs)
        fn = prepared.fn

        def step() -> Any:
            calls[0] += 1
            return fn()

        return type(prepared)(fn=step, detail=prepared.detail, core=prepared.core)

    monkeypatch.setitem(BACKENDS, "eager", BACKENDS["eager"].__class__(
        **{**BACKENDS["eager"].__dict__, "prepare": counting_prepare}))
    request = ProfileRequest(tmp_path, nvtx=True)
    result = run_case(_case(), RunContext(device=torch.device("cpu"), timing=TIMING, profile=request))
    assert result.status == "ok" and result.row.profiled == 1 and ranges.depth == 0
    assert log.count(nvtx.WARMUP) == 1 and log.count(nvtx.SAMPLES) == 1
    assert log.index(nvtx.WARMUP) < log.index(nvtx.SAMPLES) < log.index(nvtx.SAMPLE)
    samples = [i for i, n in enumerate(log) if n == nvtx.SAMPLE]
    steps = [i for i, n in enumerate(log) if n == nvtx.PROFILE_STEP]
    assert len(steps) == PROFILE_STEPS + 1  # the profiler's unrecorded warm-up step, then the recorded ones
    assert samples and max(samples) < min(steps)  # the profile comes strictly after the timed samples
    assert len(samples) >= result.row.n_samples * result.row.sample_calls
    # One call before timing (accuracy), the warm-up calls, the timed ones, the profiled steps.
    assert calls[0] - 1 - (PROFILE_STEPS + 1) > len(samples)
    assert result.profile is not None and result.profile.breakdown.core_share_pct is not None


class RangeLog:
    """A stand-in for torch.cuda.nvtx: logs every push, checks pops balance."""

    def __init__(self) -> None:
        self.pushed: list[str] = []
        self.depth = 0
        self.ranges = nvtx.NvtxRanges(self.push, self.pop)

    def push(self, name: str) -> None:
        self.pushed.append(name)
        self.depth += 1

    def pop(self) -> None:
        self.depth -= 1


@pytest.mark.parametrize("graph", [False, True])
def test_cuda_timing_puts_warmup_capture_and_each_sample_in_ranges(
        monkeypatch: pytest.MonkeyPatch, graph: bool) -> None:
    from test_gpu_paths import FakeCuda

    from mlabench.measure import timing

    FakeCuda(elapsed_ms=5.0).install(monkeypatch)
    bench_calls = 7

    def fake_do_bench(fn: Any, warmup: float, rep: float, return_mode: str) -> list[float]:
        for _ in range(bench_calls):
            fn()
        return [1.0] * bench_calls

    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    log = RangeLog()
    settings = TimingSettings(budget_s=0.05, warmup_s=0.0, min_samples=4, cuda_graph=graph)
    result = timing._time_cuda(lambda: None, settings, None, log.ranges)
    assert log.depth == 0 and log.pushed[0] == nvtx.WARMUP and log.pushed.count(nvtx.SAMPLES) == 1
    samples = log.pushed[log.pushed.index(nvtx.SAMPLES) + 1:]
    assert samples == [nvtx.SAMPLE] * len(result.samples_ms)  # one range per sample, nothing else inside
    assert (nvtx.CAPTURE in log.pushed) == graph


def test_unprofiled_case_is_timed_unwrapped_and_marked_unprofiled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "nvtx_ranges", lambda device: pytest.fail("NVTX used for an unselected case"))
    request = ProfileRequest(tmp_path, match=((("scope", "core"),),), nvtx=True)
    result = run_case(_case(), RunContext(device=torch.device("cpu"), timing=TIMING, profile=request))
    assert result.status == "ok" and result.row.profiled == 0 and result.profile is None
    assert not list(tmp_path.iterdir())


def test_a_failed_profile_keeps_the_measured_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*_a: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "profile_case", full_disk)
    result = run_case(_case(), RunContext(device=torch.device("cpu"), timing=TIMING,
                                          profile=ProfileRequest(tmp_path)))
    assert result.status == "ok" and result.row.latency_ms > 0 and result.samples_ms
    assert result.row.profiled == 1 and result.row.error == "profile not written: No space left on device"


# --- the breakdown's arithmetic --------------------------------------------------------------
def _event(name: str, device: str, self_cpu: float = 0.0, cpu: float = 0.0, device_us: float = 0.0) -> Any:
    return SimpleNamespace(name=name, device_type=f"DeviceType.{device}", self_cpu_time_total=self_cpu,
                           cpu_time_total=cpu, device_time_total=device_us)


def test_cuda_breakdown_partitions_kernel_time_and_skips_range_annotations() -> None:
    rng = random.Random()
    steps = rng.randint(2, 6)
    kernels = {f"kernel_{i}": [rng.uniform(1.0, 500.0) for _ in range(steps * rng.randint(1, 3))] for i in range(12)}
    events = [_event(name, "CUDA", device_us=d) for name, ds in kernels.items() for d in ds]
    step_us = sum(sum(ds) for ds in kernels.values())
    core_us = sum(kernels["kernel_0"]) + sum(kernels["kernel_1"])
    for i in range(steps):  # CPU ranges carry their kernels' device time; their GPU-side spans must not count
        events += [_event(f"ProfilerStep#{i + 1}", "CPU", device_us=step_us / steps),
                   _event(bd.CORE_RANGE, "CPU", device_us=core_us / steps),
                   _event(f"ProfilerStep#{i + 1}", "CUDA", device_us=step_us / steps),
                   _event(bd.CORE_RANGE, "CUDA", device_us=core_us / steps)]
    rng.shuffle(events)
    result = bd.from_events(events, steps, on_device=True)
    table = result.table.set_index("name")
    assert set(table.index) == set(kernels)
    for name, ds in kernels.items():
        assert table.loc[name, "total_us"] == pytest.approx(sum(ds))
        assert table.loc[name, "share_pct"] == pytest.approx(100.0 * sum(ds) / step_us)
        assert table.loc[name, "calls_per_step"] == pytest.approx(len(ds) / steps)
    assert table["share_pct"].sum() == pytest.approx(100.0)
    assert result.core_share_pct == pytest.approx(100.0 * core_us / step_us)


def test_cpu_breakdown_uses_self_time_so_nested_operators_count_once() -> None:
    rng = random.Random()
    mm, linear_self, step_self = (rng.uniform(10, 100) for _ in range(3))
    events = [_event("aten::mm", "CPU", self_cpu=mm, cpu=mm),
              _event("aten::linear", "CPU", self_cpu=linear_self, cpu=linear_self + mm),  # aten::mm is inside it
              _event("ProfilerStep*", "CPU", self_cpu=step_self, cpu=step_self + linear_self + mm)]
    table = bd.breakdown(events, 1, on_device=False).set_index("name")
    total = mm + linear_self + step_self
    assert table.loc["aten::mm", "share_pct"] == pytest.approx(100 * mm / total)
    assert table.loc[bd.STEP_NAME, "share_pct"] == pytest.approx(100 * step_self / total)
    assert bd.core_share(events, on_device=False) is None  # no core range: no share, not 0


# --- bad input: one line, exit 2, before any case ---------------------------------------------
@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["--profile", str(_file(d))], "exists and is not a directory"),
    (lambda d: ["--profile", str(_file(d) / "sub")], "which is a file, not a directory"),
    (lambda d: ["--profile", str(d / "p"), "--profile-match", "backend=triton"], "names none of the"),
    (lambda d: ["--profile", str(d / "p"), "--profile-match", "colour=red"], "unknown field 'colour'"),
    (lambda d: ["--profile-match", "backend=eager"], "give --profile DIR too"),
    (lambda d: ["--memory-snapshot"], "give --profile DIR too"),
])
def test_bad_profile_input_is_one_line_and_exit_2_before_any_case(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args: Any, message: str) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run_cli(["sweep", *FAST, "--model", "tiny", "--variant", "mla-absorbed", "--backend", "eager",
                              "--mode", "decode", "--batch", "1", "--seq-len", "32", "--out", str(out_dir),
                              *make_args(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and err.startswith("mlabench: error: ") and message in err
    assert not out_dir.exists()  # refused before the run directory, let alone a case


def test_unwritable_profile_directory_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.profiling import request

    def denied(**_kw: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(request.tempfile, "TemporaryFile", denied)  # root ignores file modes
    code, _, err = run_cli(["run", *CASE, *FAST, "--profile", str(tmp_path / "p")], capsys)
    assert code == 2 and err.strip() == f"mlabench: error: --profile: cannot write to {tmp_path} (Permission denied)"
    assert not (tmp_path / "p").exists()


def _file(d: Path) -> Path:
    path = d / "a-file"
    path.write_text("x")
    return path


# --- compare ---------------------------------------------------------------------------------
def test_compare_refuses_a_profiled_run_against_an_unprofiled_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_run(tmp_path / "base", claims=False, failures=False, seq_lens=(512, 1024), batches=(1,),
                    variants=("gqa", "mla-absorbed"), backends=("eager",), modes=("decode",), ranks=(128,))
    cand = tmp_path / "cand"
    shutil.copytree(base, cand)
    path = cand / schema.RESULTS_CSV
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ok = [r for r in rows if r["status"] == "ok"]
    ok[0]["profiled"] = "1"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, out, err = run_cli(["compare", str(base), str(cand)], capsys)
    assert code == 3 and out == ""
    assert "profiling differs: 0 case(s) profiled in the baseline only, 1 in the candidate only" in err
    code, out, _ = run_cli(["compare", str(base), str(cand), "--allow-env-change"], capsys)
    assert code in (0, 1) and "profiling differs" in out
    code, _, err = run_cli(["compare", str(cand), str(cand)], capsys)  # both profiled alike: comparable
    assert code in (0, 1), err


# --- CUDA ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile_has_kernels_a_snapshot_and_real_nvtx(tmp_path: Path) -> None:
    grid = {"model": ["tiny"], "variant": ["mla-absorbed"], "backend": ["eager"], "mode": ["decode"],
            "batch": [2], "seq_len": [256]}
    case = expand(Suite("t", "", "", (grid,)), "cuda", {b: s.variants for b, s in BACKENDS.items()}).cases[0]
    request = ProfileRequest(tmp_path, memory_snapshot=True, nvtx=True)
    result = run_case(case, RunContext(device=torch.device("cuda"), timing=TIMING, profile=request))
    assert result.status == "ok" and result.row.profiled == 1, result.row.error
    prof = result.profile
    assert prof is not None and prof.snapshot is not None
    table = prof.breakdown.table
    assert prof.breakdown.unit == "CUDA kernel" and len(table) > 0
    assert not table["name"].str.startswith(("aten::", "mlabench:", "ProfilerStep")).any()
    assert table["share_pct"].sum() == pytest.approx(100.0)
    assert prof.breakdown.core_share_pct is not None and 0 < prof.breakdown.core_share_pct < 100
    with gzip.open(prof.trace, "rt") as f:
        assert any(e.get("cat") == "kernel" for e in json.load(f)["traceEvents"])
    with prof.snapshot.open("rb") as f:
        snapshot = pickle.load(f)
    assert snapshot["segments"] and snapshot["device_traces"]
    assert sum(s["total_size"] for s in snapshot["segments"]) >= result.row.kv_cache_bytes_measured


def test_dry_run_checks_the_profile_flags_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "--device", "cpu", "--model", "tiny", "--variant", "mla-absorbed", "--backend", "eager",
            "--dry-run", "--profile", str(tmp_path / "p")]
    code, out, err = run_cli([*args, "--profile-match", "mode=decode"], capsys)
    assert code == 0 and "cases, estimated" in out, err
    assert not (tmp_path / "p").exists()
    code, _, err = run_cli([*args, "--profile-match", "mode=sideways"], capsys)
    assert code == 2 and "names none of the" in err
