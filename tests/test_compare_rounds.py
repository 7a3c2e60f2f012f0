"""Rounds end to end on synthetic run directories: compare on rounds, its power, strict, HTML, the report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_run import run_cli
from synthetic_runs import make_rounds_run, make_run

from mlabench import schema
from mlabench.report.html import write_report
from mlabench.report.tradeoff import headline_table, pareto_front, tradeoff_chart
from mlabench.rounds import assemble_rounds, combine_rounds, round_order
from mlabench.rundir import load_run

GRID: dict[str, Any] = dict(seq_lens=(512, 1024, 4096), ranks=(256, 512), claims=False)


def is_slow_case(key: dict[str, Any]) -> bool:
    return key["variant"] == "gqa" and key["backend"] == "eager" and key["mode"] == "decode" and key["batch"] == 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rounds")
    return {
        "base": make_rounds_run(root / "base", rounds=8, seed=0, ab_job="job1", **GRID),
        "rerun": make_rounds_run(root / "rerun", rounds=8, seed=1, ab_job="job1", **GRID),
        "slow": make_rounds_run(root / "slow", rounds=8, seed=2, slowdown=1.15, slow=is_slow_case, ab_job="job1",
                                **GRID),
        "noisy": make_rounds_run(root / "noisy", rounds=3, seed=3, round_noise=0.3, **GRID),
        "noisy2": make_rounds_run(root / "noisy2", rounds=3, seed=4, round_noise=0.3, **GRID),
        "two": make_rounds_run(root / "two", rounds=2, seed=6, slowdown=1.5, slow=is_slow_case, **GRID),
        "plain": make_run(root / "plain", seed=5, **GRID),
    }


def compare_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run_cli(["compare", *args, "--json"], capsys)
    return code, json.loads(out)


def test_rerun_with_rounds_passes_and_says_how(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = compare_json(capsys, str(runs["base"]), str(runs["rerun"]))
    assert code == 0, doc["summary"]
    assert doc["evidence"] == "rounds" and doc["paired"] and not doc["weak"]
    timed = [c for c in doc["cases"] if c["method"] == "rounds"]
    assert timed and all(c["rounds_base"] == 8 and c["rounds_cand"] == 8 for c in timed)
    assert all(c["detectable"] is not None for c in timed)
    assert "detects" in doc["summary"] and "paired" in doc["summary"]


def test_slow_cases_regress_on_rounds(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = compare_json(capsys, str(runs["base"]), str(runs["slow"]))
    assert code == 1
    regressed = [c for c in doc["cases"] if c["verdict"] == "regressed"]
    assert regressed and all(c["key"]["variant"] == "gqa" and c["key"]["batch"] == 8 for c in regressed)


def test_samples_only_verdict_is_called_weak(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, doc = compare_json(capsys, str(runs["plain"]), str(runs["plain"]), "--sample-test")
    assert doc["evidence"] == "samples" and doc["weak"]
    assert "WEAK" in doc["summary"]
    _, doc = compare_json(capsys, str(runs["plain"]), str(runs["base"]), "--sample-test")  # rounds on one side
    assert doc["evidence"] == "samples"


@pytest.mark.parametrize("other", ["plain", "two"])
def test_fewer_than_three_rounds_on_a_side_is_never_a_timing_verdict(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], other: str
) -> None:
    """8 rounds against 1 or 2: the short side's run-to-run noise is unmeasured, so even a 1.5x
    slowdown is listed as indicative, and only --sample-test makes it a (weak) verdict."""
    code, doc = compare_json(capsys, str(runs["base"]), str(runs[other]))
    timed = [c for c in doc["cases"] if c["method"]]
    assert code == 0 and doc["tested"] == 0 and not doc["weak"], doc["summary"]
    assert timed and {c["verdict"] for c in timed} == {"indicative"}
    assert "sweep --rounds 3" in doc["summary"] and "mlabench ab" in doc["summary"]
    code, doc = compare_json(capsys, str(runs["base"]), str(runs[other]), "--sample-test")
    assert doc["tested"] == len(timed) and doc["weak"] and doc["counts"]["indicative"] == 0


def test_mostly_underpowered_fails_only_when_strict(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = compare_json(capsys, str(runs["noisy"]), str(runs["noisy2"]))
    assert doc["underpowered_share"] > 0.5
    assert not [c for c in doc["cases"] if c["verdict"] == "same" and abs(c["ratio"] - 1) > 0.05]
    assert code == 0
    code, doc = compare_json(capsys, str(runs["noisy"]), str(runs["noisy2"]), "--strict")
    assert code == 1 and "underpowered" in doc["summary"]


def test_compare_html_plots_ratio_and_interval(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["slow"]), "--format", "html"], capsys)
    assert code == 1
    assert out.startswith("<!DOCTYPE html>") and 'id="chart-ratio"' in out
    assert '"error_x"' in out and "regressed" in out
    assert out.count("* plotly.js v") == 1


def test_old_samples_without_round_read_as_round_zero(runs: dict[str, Path], tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(runs["plain"], old)
    frame = pd.read_csv(old / schema.SAMPLES_CSV)
    assert "round" in frame  # written with the column...
    frame.drop(columns=["round"]).to_csv(old / schema.SAMPLES_CSV, index=False)  # ...and as an older run had it
    samples = load_run(old).samples
    assert samples is not None and set(samples["round"]) == {0}


def test_round_order_is_seeded_and_differs_between_rounds() -> None:
    items = list(range(30))
    assert round_order(items, 0, 1) == round_order(items, 0, 1)
    assert round_order(items, 0, 1) != round_order(items, 0, 2)
    assert sorted(round_order(items, 0, 3)) == items


def test_combine_rounds_pools_samples_and_keeps_failures() -> None:
    rows = [dict(case_id="c", status="ok", latency_ms=2.0, tokens_per_s=500.0, wall_s=1.0, rel_err=1e-5),
            dict(case_id="c", status="ok", latency_ms=4.0, tokens_per_s=250.0, wall_s=1.0)]
    row = combine_rounds(rows, [[2.0, 2.0, 2.0], [4.0, 4.0]])
    assert row["n_samples"] == 5 and row["latency_ms"] == 2.0
    assert row["tokens_per_s"] == pytest.approx(500.0) and row["wall_s"] == 2.0 and row["rel_err"] == 1e-5
    broken = combine_rounds([rows[0], dict(case_id="c", status="error", error="boom")], [[2.0], []])
    assert broken["status"] == "error" and broken["error"] == "round 1: boom"


def test_assemble_rounds_tags_samples(runs: dict[str, Path], tmp_path: Path) -> None:
    dirs = []
    for k in range(3):
        d = tmp_path / f"r{k}"
        shutil.copytree(runs["plain"], d)
        dirs.append(d)
    n = assemble_rounds(dirs, tmp_path / "all", {"ab": {"job": "x"}})
    run = load_run(tmp_path / "all")
    assert n == len(run.results) and run.meta["rounds"] == 3 and run.meta["ab"]["job"] == "x"
    assert run.samples is not None and sorted(set(run.samples["round"])) == [0, 1, 2]
    with (runs["plain"] / schema.RESULTS_CSV).open(newline="") as f:
        one = {r["case_id"]: r for r in csv.DictReader(f)}
    ok = run.results[run.results["status"] == "ok"]
    assert all(int(r.n_samples) == 3 * int(one[r.case_id]["n_samples"]) for r in ok.itertuples())


def test_report_shows_round_spread_tradeoff_and_headline(runs: dict[str, Path]) -> None:
    page = write_report(runs["base"]).read_text(encoding="utf-8")
    assert 'id="chart-rounds"' in page and "Round-to-round spread" in page
    assert 'id="chart-tradeoff"' in page and "Pareto front" in page
    assert page.index('id="sec-headline"') < page.index('id="sec-chart-tradeoff"')
    assert "chart-rounds" not in write_report(runs["plain"]).read_text(encoding="utf-8")


def test_pareto_front() -> None:
    x = pd.Series([1.0, 2.0, 3.0, 1.5, 4.0])
    y = pd.Series([5.0, 3.0, 1.0, 6.0, 1.0])
    assert pareto_front(x, y).tolist() == [True, True, True, False, False]


def test_headline_table_has_ratios_to_mha(runs: dict[str, Path]) -> None:
    df = load_run(runs["plain"]).results
    html = headline_table(df)
    assert "<td>mha</td>" in html and "1.00x" in html
    assert "seq_len 4096: best backend" in html
    fig = tradeoff_chart(df).figure
    assert fig is not None and any(t.name == "Pareto front" for t in fig.data)
