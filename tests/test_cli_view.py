"""What the commands show: tables that read at 80 columns, the plan of a sweep, machine output.

An 80-column terminal is rendered with rich's own Console(width=80): every case keeps its full
name in one cell (secondary columns give way first), `list` breaks no word and shortens no
number. A sweep under overrides says which axes its suite still decides and `--dry-run` lists
the cases; `--json` rows are objects with the CSV's columns; SDPA's unfused math kernel is
marked in the table and the report; a PR comment carries no absolute path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from cli_run import run_cli
from rich.console import Console
from synthetic_runs import build_rows, make_run

from mlabench import schema
from mlabench.cli.summary import rows_table


def render(renderable: object, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_the_sweep_table_names_every_case_in_full_at_80_columns() -> None:
    rows, _ = build_rows(seq_lens=(512, 4096), batches=(1, 8), ranks=(128, 512), failures=False)
    rows = [r for r in rows if r["suite"] == "decode"]  # one model: the claims rows bring others
    for r in rows:
        if r["backend"] == "compiled" and r["variant"] == "mla-absorbed":
            r["backend"], r["backend_detail"] = "sdpa", "sdpa:auto->math"  # SDPA fell back to its math kernel
    table, notes = rows_table(rows, width=80)
    text = render(table)
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert len(cells) == len(rows) == len(set(cells))  # one line per case, each named distinctly
    assert not any("…" in c for c in cells)
    assert "mla-absorbed/sdpa[math] decode b=8 T=4096 q=1 rank=512" in cells
    assert "model=deepseek-v2-lite" in text.splitlines()[0]  # what never varies is said once, in the title
    assert "status" in text and "ms" in text and "p10-p90" not in text  # the spread gave way first
    assert any(n.startswith("sdpa[math]: PyTorch's SDPA ran its unfused math kernel") for n in notes)
    wide = render(rows_table(rows, width=200)[0], width=200)
    assert "p10-p90" in wide and "rel_err" in wide


def test_list_reads_at_80_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import mlabench.cli.list_cmd as list_cmd

    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(list_cmd, "out_console", console)
    code, _, err = run_cli(["list", "--device", "cpu"], capsys)
    assert code == 0, err
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) < 130  # was 246 lines, words broken
    assert "…" not in text
    for name in ("mla-absorbed", "flashmla-sparse", "deepseek-v2-lite", "gpu-baseline"):
        assert re.search(rf"(^|\s){re.escape(name)}\s", text, re.MULTILINE), name  # names whole, never folded
    assert "deepseek-v3       61  7168  128  128    128  1536  512" in text  # every preset figure in full
    assert "left out at 80 columns" in text  # a column given way is said, not silently lost


def test_an_override_says_which_axes_the_suite_kept_and_dry_run_lists_the_cases(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "--suite", "smoke", "--variant", "mha", "--backend", "sdpa", "--device", "cpu", "--dry-run"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "axes from suite smoke: model=tiny; mode=prefill,decode;" in out
    listed = [line.strip() for line in out.splitlines() if line.startswith("  tiny mha/sdpa ")]
    assert len(listed) == int(out.split(" cases,")[0].split()[-1]) > 1
    code, out, _ = run_cli([*args, "--json"], capsys)
    doc = json.loads(out)
    assert len(doc["case_list"]) == doc["cases"] and doc["suite_axes"]["mode"] == ["prefill", "decode"]
    assert "variant" not in doc["suite_axes"] and "backend" not in doc["suite_axes"]


def test_sweep_json_rows_are_objects_with_the_csv_columns(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    code, out, err = run_cli(["sweep", "--suite", "smoke", "--variant", "gqa", "--backend", "eager", "--mode",
                              "decode", "--seq-len", "32", "--q-len", "1", "--device", "cpu", "--budget", "0.005",
                              "--warmup", "0", "--min-samples", "2", "--no-probe", "--no-report", "--json",
                              "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert isinstance(row, dict) and list(row) == list(schema.COLUMNS)
    assert row["variant"] == "gqa" and row["status"] == "ok" and row["latency_ms"] > 0


def test_the_report_marks_sdpa_math_rows() -> None:
    from mlabench.report.tables import rows_table as html_rows

    rows, _ = build_rows(variants=("mla-absorbed",), backends=("sdpa",), modes=("decode",), seq_lens=(512,),
                         batches=(1,), ranks=(512,), failures=False)
    def frame(detail: str) -> pd.DataFrame:
        return pd.DataFrame([{c: r.get(c, "") for c in schema.COLUMNS} | {"backend_detail": detail} for r in rows])

    assert "sdpa [math]" in html_rows(frame("sdpa:auto->math"))
    assert "[math]" not in html_rows(frame("sdpa:auto->efficient"))


def test_the_pr_markdown_carries_paths_relative_to_the_working_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base, cand = make_run(tmp_path / "runs" / "base"), make_run(tmp_path / "runs" / "cand", seed=1)
    code, _, err = run_cli(["compare", str(base), str(cand), "--markdown", "pr.md"], capsys)
    assert code in (0, 1), err
    text = (tmp_path / "pr.md").read_text()
    assert str(tmp_path) not in text and "`runs/base`" in text and "`runs/cand`" in text
