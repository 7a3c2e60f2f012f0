"""`mlabench report`: the page renders for full, single-point and empty runs, escapes, and never imports torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_run import run_cli
from synthetic_runs import make_empty_run, make_meta, make_run, make_single_point_run

from mlabench import schema
from mlabench.claims import GLA_PAPER, evaluate_claims
from mlabench.cli.app import main
from mlabench.rundir import load_run

PLOTLY_BANNER = "* plotly.js v"
CHARTS = ("chart-tradeoff", "chart-latency", "chart-kv", "chart-speedup", "chart-roofline", "chart-rank")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("full") / "run")


@pytest.fixture(scope="module")
def full_page(full_run: Path) -> str:
    try:
        main(["report", str(full_run)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return (full_run / schema.REPORT_HTML).read_text(encoding="utf-8")


def div_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(chart-[a-z]+)" class="plotly-graph-div"', page)


def test_full_report_has_every_section(full_page: str) -> None:
    assert full_page.count(PLOTLY_BANNER) == 1  # plotly.js inlined exactly once
    assert re.search(r"<script[^>]*\bsrc=", full_page) is None  # nothing fetched: opens offline
    assert div_ids(full_page) == list(CHARTS)
    assert '<table class="claims">' in full_page
    assert full_page.count("<span class='pill v-holds'>holds</span>") == 13
    assert 'id="rows"' in full_page
    assert "CUDA out of memory. Tried to allocate 8.00 GiB" in full_page
    assert "flashinfer is not installed" in full_page


def test_header_fingerprint(full_page: str) -> None:
    for text in ("NVIDIA H100 80GB HBM3", "550.54.15", "12.4", "2.5.1", "3.1.0", "AMD EPYC 9454", "source: probe",
                 "0123456789abcdef", "mlabench sweep --suite decode"):
        assert text in full_page


def test_strings_are_escaped(full_page: str) -> None:
    assert "InductorError: &lt;lowering failed&gt; &amp; retried" in full_page
    assert "<lowering failed>" not in full_page


def test_every_row_is_in_the_table(full_run: Path, full_page: str) -> None:
    rows = pd.read_csv(full_run / schema.RESULTS_CSV)
    assert full_page.count('<tr class="st-') == len(rows)
    for status in ("oom", "error", "skipped", "unsupported", "inaccurate"):
        assert f'data-status="{status}"' in full_page


def test_claims_are_evaluated_from_claims_rows(full_run: Path) -> None:
    results = [r for r in evaluate_claims(load_run(full_run).results) if r.source != GLA_PAPER]  # no gla-xl rows
    assert [r.verdict for r in results] == ["holds"] * 13
    by_unit = {(r.unit, r.expected): r.measured for r in results}
    assert by_unit[("elements/token", 2 * 128 * 128 * 60)] == 2 * 128 * 128 * 60
    assert by_unit[("elements/token", (512 + 64) * 60)] == (512 + 64) * 60
    assert by_unit[("x MHA params", 0.5625)] == pytest.approx(0.5625)
    assert by_unit[("MiB", 32.0)] == pytest.approx(32.0)


def test_claims_without_rows_are_not_measured() -> None:
    empty = pd.DataFrame(columns=list(schema.COLUMNS))
    assert {r.verdict for r in evaluate_claims(empty)} == {"not measured"}


def test_single_point_run_draws_markers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_single_point_run(tmp_path / "one")
    code, out, _ = run_cli(["report", str(run), "-o", str(tmp_path / "one.html")], capsys)
    assert code == 0 and out.strip() == str(tmp_path / "one.html")
    page = (tmp_path / "one.html").read_text()
    assert "chart-latency" in div_ids(page) and "chart-kv" in div_ids(page)
    assert '"mode":"lines+markers"' in page or '"mode":"markers+lines"' in page
    assert "No case shares its workload" in page  # mha:eager is the only variant: nothing to divide
    assert "chart-rank" not in page


def test_empty_results_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_empty_run(tmp_path / "empty")
    code, _, _ = run_cli(["report", str(run)], capsys)
    assert code == 0
    page = (run / schema.REPORT_HTML).read_text()
    assert "has no rows" in page
    assert div_ids(page) == []
    (run / schema.RESULTS_CSV).write_text("")  # a sweep killed before its header: also no rows
    assert run_cli(["report", str(run)], capsys)[0] == 0


def test_missing_baseline_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", seq_lens=(512, 2048), ranks=(512,), claims=False)
    out = tmp_path / "r.html"
    code, _, _ = run_cli(["report", str(run), "-o", str(out), "--baseline", "linformer:triton"], capsys)
    assert code == 0
    page = out.read_text()
    assert "Baseline linformer:triton has no ok rows" in page
    assert "chart-speedup" not in div_ids(page)
    code, _, _ = run_cli(["report", str(run), "-o", str(out), "--baseline", "gqa:compiled"], capsys)
    assert "chart-speedup" in div_ids(out.read_text())


def test_null_peaks_omit_ceilings_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "nopeaks", meta=make_meta(peaks=False), seq_lens=(512,), claims=False)
    assert run_cli(["report", str(run)], capsys)[0] == 0
    page = (run / schema.REPORT_HTML).read_text()
    assert "chart-roofline" in div_ids(page)
    assert "ceiling is omitted" in page and "roofline (" not in page


def test_missing_meta_still_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_single_point_run(tmp_path / "nometa")
    (run / schema.META_JSON).unlink()
    assert run_cli(["report", str(run)], capsys)[0] == 0
    assert "environment unknown" in (run / schema.REPORT_HTML).read_text()


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        ("missing_dir", "no such run directory"),
        ("no_results", "results.csv not found"),
        ("missing_column", "missing required column(s): seq_len"),
        ("bad_status", "unknown status 'weird'"),
        ("bad_meta", "meta.json: corrupt JSON"),
        ("bad_baseline", "--baseline must be VARIANT:BACKEND"),
    ],
)
def test_bad_input_exits_2(setup: str, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["report", str(run)]
    if setup != "missing_dir":
        make_single_point_run(run)
    if setup == "no_results":
        (run / schema.RESULTS_CSV).unlink()
    elif setup == "missing_column":
        pd.read_csv(run / schema.RESULTS_CSV).drop(columns=["seq_len"]).to_csv(run / schema.RESULTS_CSV, index=False)
    elif setup == "bad_status":
        df = pd.read_csv(run / schema.RESULTS_CSV)
        df["status"] = "weird"
        df.to_csv(run / schema.RESULTS_CSV, index=False)
    elif setup == "bad_meta":
        (run / schema.META_JSON).write_text("{not json")
    elif setup == "bad_baseline":
        args += ["--baseline", "mha"]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlabench: error:") and expect in lines[0]


def test_report_and_compare_do_not_import_torch(full_run: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from mlabench.cli.app import main\n"
        "for args in (['report', sys.argv[1], '-o', sys.argv[2]], ['compare', sys.argv[1], sys.argv[1], '--json']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
        "print(json.dumps(sorted(m for m in ('torch', 'triton') if m in sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", "import json\n" + script, str(full_run), str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert (tmp_path / "r.html").exists()


# --- labels that say what they are ---------------------------------------------------------


def test_headline_ratios_read_like_the_speedup_chart() -> None:
    """Above 1 is better than MHA in both ratios: MHA's cache / the variant's, MHA's latency / the variant's."""
    from mlabench.report.tradeoff import headline_table

    rows = pd.DataFrame({"model": "m", "mode": "decode", "suite": "s", "dtype": "bfloat16", "status": "ok",
                         "batch": 1, "seq_len": 1024, "variant": ["mha", "gqa"], "backend": "eager",
                         "latency_ms": [2.0, 0.5], "kv_cache_bytes": [4096 * 1024, 1024 * 1024]})
    html = headline_table(rows)
    cells = re.findall(r'<td class="num">([^<]*)</td>', html)
    assert cells == ["1 KiB", "4.00x", "0.5", "4.00x", "4 KiB", "1.00x", "2", "1.00x"]  # gqa: 4x smaller, 4x faster
    assert "speedup vs MHA</th>" in html and "KV smaller than MHA</th>" in html and "<th>vs MHA</th>" not in html


def test_threads_say_what_the_cases_ran_with() -> None:
    from mlabench.report.tables import env_header

    meta = make_meta()  # the host's torch default: 16 threads
    rows = pd.DataFrame({"suite": ["s", "s"], "threads": [1, 1]})
    assert "1 per case (host default 16)" in env_header(meta, rows)
    assert "16 (torch&#x27;s default on the host" in env_header(meta, rows.drop(columns="threads"))


def test_colours_never_repeat_within_a_chart() -> None:
    from mlabench.report.charts import PALETTE, _colors

    for n in (3, len(PALETTE), len(PALETTE) + 1, 200):
        colours = _colors(pd.Series([f"series {i}" for i in range(n)]))
        assert len(set(colours.values())) == n
