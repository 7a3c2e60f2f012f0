"""Numbers a user reads, pinned to what the README says they mean.

Each test makes the right number and a plausible wrong one differ on purpose and computes
the expected value itself, from the documented definition, never by asking the code under
test: the accuracy verdict just inside and just outside each documented tolerance, the
measured KV column on a cache that holds more than the formula counts, samples.csv read
back through the public reader and after a resume, the CPU warm-up against a stand-in
clock, and the roofline chart's points against FLOPs / bytes of their rows.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from cli_run import run_cli
from scipy.optimize import brentq
from synthetic_runs import make_run
from torch import Tensor

from mlabench import schema
from mlabench.backends.registry import BACKENDS, Prepared, register_backend
from mlabench.case import Case
from mlabench.config import from_name
from mlabench.measure import accuracy as acc
from mlabench.measure import timing
from mlabench.measure.timing import TimingSettings, time_step
from mlabench.report.charts import roofline_chart
from mlabench.rundir import load_run
from mlabench.rundir.read import read_samples
from mlabench.runner import RunContext, run_case
from mlabench.variants import VARIANT_CLASSES, register_variant, shape_for_variant
from mlabench.variants.gqa import GroupedQueryAttention

CPU = torch.device("cpu")
TINY = from_name("tiny")
FAST = TimingSettings(budget_s=0.005, warmup_s=0.0, min_samples=3, max_samples=5)

# The README's tolerances, written out here: a changed constant in the code must fail a test.
REL_TOL = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}
COS_TOL = {"float64": 1e-21, "float32": 1e-9, "float16": 1e-5, "bfloat16": 1e-5}
FP8_SLACK = 1.25
INSIDE, OUTSIDE = 0.8, 1.25  # factors of a tolerance: just inside, just outside


def make_case(variant: str, backend: str = "eager", batch: int = 3, seq_len: int = 24) -> Case:
    return Case("test", TINY.name, variant, backend, "decode", "cpu", batch, seq_len, 1,
                shape_for_variant(variant, TINY))


# --- the accuracy verdict ------------------------------------------------------------------------
# The definitions the README gives, computed here on their own.
def rel_err(out: Tensor, ref: Tensor) -> float:
    """The worst element's error relative to max(|ref element|, RMS of ref)."""
    scale = ref.pow(2).mean().sqrt()
    return float(((out - ref).abs() / torch.maximum(ref.abs(), scale)).max())


def cos_diff(out: Tensor, ref: Tensor) -> float:
    """1 - 2<o, r> / (|o|^2 + |r|^2), written as the equal |o - r|^2 / (|o|^2 + |r|^2) so that
    float64's tolerance (1e-21, far under eps) can be resolved."""
    return float((out - ref).pow(2).sum() / (out.pow(2).sum() + ref.pow(2).sum()))


def reference(seed: int) -> Tensor:
    """A float64 output of the two reference sequences of a batch of 2: (2, S, d)."""
    return torch.randn(2, 32, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def signs(ref: Tensor, seed: int) -> Tensor:
    return torch.randint(0, 2, ref.shape, generator=torch.Generator().manual_seed(seed)).to(ref.dtype) * 2 - 1


def one_element_off(ref: Tensor, rel: float, big: bool) -> Tensor:
    """ref with one element off by `rel` of its denominator: the largest |element| (denominator
    |element|) or the smallest (denominator the RMS)."""
    out = ref.clone().view(-1)
    i = int(ref.abs().view(-1).argmax() if big else ref.abs().view(-1).argmin())
    out[i] += rel * max(abs(float(ref.view(-1)[i])), float(ref.pow(2).mean().sqrt()))
    return out.view(ref.shape)


def spread_to_cos(ref: Tensor, target: float, seed: int) -> Tensor:
    """ref with every element off by the same relative amount, random signs, so that the cosine
    difference is `target` (the worst element stays small)."""
    s = signs(ref, seed)
    eps = brentq(lambda e: cos_diff(ref * (1 + e * s), ref) - target, 0.0, 1.0, xtol=1e-18)
    return ref * (1 + eps * s)


def verdict(out: Tensor, ref: Tensor, dtype: str, quant: acc.Accuracy | None = None) -> acc.Accuracy:
    return acc.compare(out, ref, dtype, quant, rows=[0, 1])  # `out` holds the reference rows already


@pytest.mark.parametrize("dtype", sorted(REL_TOL))
def test_worst_element_decides_at_the_documented_tolerance(dtype: str) -> None:
    """One element just inside / just outside the dtype's tolerance: ok / inaccurate, whatever
    the output's magnitude (an absolute error would decide differently at 1e-4 and 1e4), for an
    element above and below the RMS (the denominator changes)."""
    for seed, scale in enumerate((1e-4, 1.0, 1e4)):
        ref = reference(seed) * scale
        for big in (False, True):
            for factor, ok in ((INSIDE, True), (OUTSIDE, False)):
                out = one_element_off(ref, factor * REL_TOL[dtype], big)
                assert rel_err(out, ref) == pytest.approx(factor * REL_TOL[dtype], rel=1e-9)
                assert cos_diff(out, ref) < COS_TOL[dtype]  # only the worst element can decide
                result = verdict(out, ref, dtype)
                assert result.ok is ok, (dtype, scale, big, factor, result)
                assert result.rel_err == pytest.approx(rel_err(out, ref), rel=1e-9)


@pytest.mark.parametrize("dtype", sorted(COS_TOL))
def test_cosine_difference_decides_at_the_documented_tolerance(dtype: str) -> None:
    """Every element a little off, none past the element tolerance: the cosine difference just
    inside / just outside its tolerance decides."""
    ref = reference(7)
    for factor, ok in ((INSIDE, True), (OUTSIDE, False)):
        out = spread_to_cos(ref, factor * COS_TOL[dtype], seed=8)
        assert rel_err(out, ref) < REL_TOL[dtype] / 1.5
        result = verdict(out, ref, dtype)
        assert result.ok is ok, (dtype, factor, result)
        assert result.cos_diff == pytest.approx(factor * COS_TOL[dtype], rel=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp8_row_is_judged_past_its_quantization_error(dtype: str) -> None:
    """An FP8 row is inaccurate only past 1.25 x (quant_err + the dtype's tolerance) (cosine:
    1.25 x (sqrt(quant cos) + sqrt(dtype's))^2): just inside passes, just outside fails, on
    both measures."""
    unquantized = reference(11)
    q = 0.05  # what the quantization alone costs at its worst element; noise of half that elsewhere
    dequantized = unquantized * (1 + 0.5 * q * signs(unquantized, 12))
    worst = one_element_off(unquantized, q, big=False)
    dequantized[worst != unquantized] = worst[worst != unquantized]
    quant = acc.quant_error(dequantized, unquantized, 2, dtype)
    q_rel, q_cos = rel_err(dequantized, unquantized), cos_diff(dequantized, unquantized)
    assert q_rel == pytest.approx(q, rel=1e-6) and quant.rel_err == pytest.approx(q_rel, rel=1e-9)
    rel_allowed = FP8_SLACK * (q_rel + REL_TOL[dtype])
    cos_allowed = FP8_SLACK * (math.sqrt(q_cos) + math.sqrt(COS_TOL[dtype])) ** 2
    for factor, ok in ((INSIDE, True), (OUTSIDE, False)):
        out = one_element_off(unquantized, factor * rel_allowed, big=False)
        assert cos_diff(out, unquantized) < cos_allowed / 10
        assert verdict(out, unquantized, dtype, quant).ok is ok, ("rel", factor)
        out = spread_to_cos(unquantized, factor * cos_allowed, seed=13)
        assert rel_err(out, unquantized) < rel_allowed / 1.5
        assert verdict(out, unquantized, dtype, quant).ok is ok, ("cos", factor)


def test_runner_marks_a_float32_row_by_the_documented_tolerance() -> None:
    """End to end: a backend whose output has one element off by a set fraction of the float32
    tolerance gives `ok` just inside and `inaccurate` just outside, and `rel_err` says by how much."""
    factor = {"value": 0.0}

    @register_backend("test-nudge", description="test only: eager, one element nudged", modes=("decode",))
    def prepare(module, case, inputs):
        def fn() -> Tensor:
            out = module(inputs.x, inputs.start_pos)
            rows = out[[0, out.shape[0] - 1]]  # the sequences the reference checks
            scale = float(rows.double().pow(2).mean().sqrt())
            out[0, -1, 3] += factor["value"] * REL_TOL["float32"] * max(abs(float(out[0, -1, 3])), scale)
            return out

        return Prepared(fn=fn)

    try:
        rows = {}
        for factor["value"] in (INSIDE, OUTSIDE):
            rows[factor["value"]] = run_case(make_case("gqa", "test-nudge"), RunContext(CPU, timing=FAST)).row
    finally:
        del BACKENDS["test-nudge"]
    assert rows[INSIDE]["status"] == "ok" and rows[OUTSIDE]["status"] == "inaccurate"
    for f, row in rows.items():  # float32 rounding of the step itself is ~1e-6 of the tolerance's 1e-4
        assert row["rel_err"] == pytest.approx(f * REL_TOL["float32"], rel=0.05)


# --- the measured KV column ------------------------------------------------------------------------
SIDE = "test-side-table"
SIDE_WIDTH = 3  # elements per token of the side table the formula does not count


@pytest.fixture
def side_table_variant() -> Iterator[None]:
    """GQA whose cache also holds a per-token side table: the analytic formula (GQA's) does not
    count it, the tensors do."""

    class WithSideTable(GroupedQueryAttention):
        name = SIDE

        def allocate_cache(self, batch: int, max_seq_len: int, **kwargs) -> None:
            super().allocate_cache(batch, max_seq_len, **kwargs)
            self.side_table = torch.zeros(batch, max_seq_len, SIDE_WIDTH, dtype=self.weight_dtype,
                                          device=self.weight_device)

        def cache_tensors(self) -> dict[str, Tensor]:
            return {**super().cache_tensors(), "side_table": self.side_table}

    register_variant(WithSideTable)
    try:
        yield
    finally:
        del VARIANT_CLASSES[SIDE]


def test_measured_kv_column_follows_the_tensors(side_table_variant: None) -> None:
    for batch, seq_len in ((2, 24), (3, 40)):
        case = make_case(SIDE, batch=batch, seq_len=seq_len)
        row = run_case(case, RunContext(CPU, timing=FAST)).row
        assert row["status"] == "ok", row["error"]
        sh, fp32 = case.shape, 4
        formula = batch * seq_len * 2 * sh.kv_heads * sh.head_dim * fp32  # K and V: 2*G*D per token
        tensors = formula + batch * seq_len * SIDE_WIDTH * fp32
        assert row["kv_cache_bytes"] == formula
        assert row["kv_cache_bytes_measured"] == tensors != formula


# --- samples.csv ---------------------------------------------------------------------------------
SWEEP_SUITE = """
name = "meaning"
[settings]
budget_s = 0.01
warmup_s = 0.001
min_samples = 4
threads = 1
[[grid]]
model = "tiny"
variant = ["mha", "mla-absorbed"]
backend = "eager"
mode = ["prefill", "decode"]
batch = [1]
seq_len = [16]
"""


def sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> None:
    suite = tmp_path / "meaning.toml"
    suite.write_text(SWEEP_SUITE)
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--no-probe", *extra],
                           capsys)
    assert code == 0, err


def read_rows(run: Path) -> list[dict[str, str]]:
    with (run / schema.RESULTS_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


def test_samples_columns_mean_what_they_say(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Read back through the public reader: per case and round the sample index counts 0, 1, ...;
    the rounds are 0 and 1, all of round 0 written before round 1; a latency is positive, not an
    integer count, varies, and the row's median lies among its samples."""
    run = tmp_path / "run"
    sweep(tmp_path, capsys, run, "--rounds", "2")
    samples = read_samples(run / schema.SAMPLES_CSV)
    rows = read_rows(run)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert list(samples["round"]) == sorted(samples["round"])  # rounds run one after the other
    for row in rows:
        mine = samples[samples["case_id"] == row["case_id"]]
        assert set(mine["round"]) == {0, 1}
        for _, one_round in mine.groupby("round"):
            assert list(one_round["sample"]) == list(range(len(one_round)))
            assert len(one_round) >= 4  # min_samples per round
        lat = mine["latency_ms"]
        assert (lat > 0).all() and lat.nunique() > 1 and (lat != lat.round()).any()
        assert len(mine) == int(row["n_samples"])
        assert lat.min() <= float(row["latency_ms"]) <= lat.max()


def test_resume_keeps_samples_only_of_cases_with_a_row_once(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A kill between a case's samples and its row (the samples are written first) leaves samples
    of a case with no row, and may tear the last samples line. After --resume every sample
    belongs to a case with a row, and each case's samples are there exactly once."""
    run = tmp_path / "run"
    sweep(tmp_path, capsys, run)
    lines = (run / schema.RESULTS_CSV).read_text().splitlines(keepends=True)
    (run / schema.RESULTS_CSV).write_text("".join(lines[:-1]))  # the last case lost its row
    lost = next(csv.DictReader(lines[:1] + lines[-1:]))["case_id"]
    with (run / schema.SAMPLES_CSV).open("a") as f:
        f.write(f"{lost},0,0.123")  # and a torn samples line of it
    sweep(tmp_path, capsys, run, "--resume")
    rows = read_rows(run)
    assert sorted(r["case_id"] for r in rows) == sorted({r["case_id"] for r in rows})  # each case once
    assert lost in {r["case_id"] for r in rows}
    samples = read_samples(run / schema.SAMPLES_CSV)
    assert set(samples["case_id"]) == {r["case_id"] for r in rows}
    for row in rows:
        mine = samples[samples["case_id"] == row["case_id"]]
        assert list(mine["sample"]) == list(range(int(row["n_samples"])))  # once each, no leftovers


# --- CPU warm-up ---------------------------------------------------------------------------------
class StandInClock:
    """time.perf_counter for the timing module: moves only when the step is called."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize("warmup_s", [0.0, 2.0**-7, 2.0**-4])
def test_cpu_warmup_lasts_its_setting(warmup_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a clock that moves 2^-10 s per call, the warm-up spends ceil(warmup_s / 2^-10) calls
    (at least one) on the stand-in clock: its time is the setting, in seconds."""
    clock = StandInClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    tick = 2.0**-10
    phase: list[str] = ["before"]
    calls: dict[str, int] = {}

    def mark(name: str):
        class Phase:
            def __enter__(self) -> None:
                phase.append(name)

            def __exit__(self, *_exc: object) -> None:
                phase.pop()

        return Phase()

    def step() -> None:
        calls[phase[-1]] = calls.get(phase[-1], 0) + 1
        clock.now += tick

    time_step(step, CPU, TimingSettings(budget_s=0.0, warmup_s=warmup_s, min_samples=1, max_samples=2),
              ranges=mark)
    warm = calls.get(timing.WARMUP, 0)
    assert warm == max(1, math.ceil(warmup_s / tick))  # the first call at or past warmup_s ends it


@pytest.mark.parametrize("warmup", ["0.003", "0.25"])
def test_warmup_flag_reaches_the_timer_in_seconds(warmup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[float] = []
    real: Callable = time_step

    def spy(fn, device, settings, *args, **kwargs):
        seen.append(settings.warmup_s)
        return real(fn, device, dataclasses.replace(settings, warmup_s=0.0), *args, **kwargs)  # a short test

    import mlabench.runner

    monkeypatch.setattr(mlabench.runner, "time_step", spy)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", "--model", "tiny", "--variant", "gqa", "--device", "cpu", "--seq-len", "16",
                            "--budget", "0.005", "--min-samples", "3", "--no-probe", "--warmup", warmup, "--json"],
                           capsys)
    assert code == 0, err
    assert seen == [float(warmup)]


# --- the report's roofline chart -----------------------------------------------------------------
def test_roofline_points_are_flops_per_byte_of_their_rows(tmp_path: Path) -> None:
    """Every point: x = flops / bytes and y = tflops of the row it names (hover's case_id),
    against the row as results.csv has it; the rows' intensities differ, so an inverted axis
    (bytes per FLOP) or another row's value shows."""
    run = make_run(tmp_path / "run")
    with (run / schema.RESULTS_CSV).open(newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    data = load_run(run)
    figure = roofline_chart(data.results, data.meta).figure
    assert figure is not None
    points = []
    for trace in figure.data:
        if trace.mode != "markers":
            continue  # the ceilings
        at = int(re.search(r"case_id=%\{customdata\[(\d+)\]\}", trace.hovertemplate).group(1))
        points += [(cd[at], x, y) for cd, x, y in zip(trace.customdata, trace.x, trace.y, strict=True)]
    plotted = {r["case_id"] for r in rows.values() if r["status"] == "ok" and r["tflops"]}
    assert {p[0] for p in points} == plotted and len(points) == len(plotted)
    intensities = {float(rows[c]["flops"]) / float(rows[c]["bytes"]) for c in plotted}
    assert max(intensities) / min(intensities) > 10
    for case_id, x, y in points:
        row = rows[case_id]
        assert x == pytest.approx(float(row["flops"]) / float(row["bytes"]), rel=1e-9)
        assert y == pytest.approx(float(row["tflops"]), rel=1e-9)
