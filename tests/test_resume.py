"""Resuming a killed sweep keeps what was measured: finished rounds of unfinished cases, and every
complete row before a torn one, however the torn row was cut."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import run_cli

from mlabench import schema
from mlabench.rundir import RunWriter, read_results
from mlabench.rundir.write import complete_rows_end

ROUNDS_SUITE = """
name = "rounds"
[settings]
budget_s = 0.15
warmup_s = 0.001
min_samples = 3
threads = 1
rounds = 3
[[grid]]
model = "tiny"
variant = ["mha", "gqa", "mqa"]
backend = "eager"
mode = "decode"
batch = [1]
seq_len = [16]
"""


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def sample_keys(path: Path) -> set[tuple[str, str, str, str]]:
    return {(s["case_id"], s["round"], s["sample"], s["latency_ms"]) for s in read(path)}


def test_kill_during_rounds_keeps_the_finished_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "rounds.toml"
    suite.write_text(ROUNDS_SUITE)
    out = tmp_path / "run"
    args = ["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--no-probe"]
    proc = subprocess.Popen([sys.executable, "-m", "mlabench", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / schema.SAMPLES_CSV
    deadline = time.time() + 120
    try:  # killed once round 1 has begun: round 0 of every case is on disk, no case has its row
        while time.time() < deadline and proc.poll() is None:
            if samples.exists() and any(s["round"] == "1" for s in read(samples)):
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(read(out / schema.RESULTS_CSV)) == 0
    round0 = {k for k in sample_keys(samples) if k[1] == "0"}
    assert len({k[0] for k in round0}) == 3
    code, _, stderr = run_cli([*args, "--resume"], capsys)
    assert code == 0, stderr
    rows = read(out / schema.RESULTS_CSV)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    after = sample_keys(samples)
    assert round0 <= after  # the rounds measured before the kill are kept, not measured again
    for row in rows:
        mine = [k for k in after if k[0] == row["case_id"]]
        assert {k[1] for k in mine} == {"0", "1", "2"}
        assert len(mine) == int(row["n_samples"])  # each round once: nothing dropped, nothing twice
    journal = [json.loads(line) for line in (out / schema.ROUNDS_JSONL).read_text().splitlines()]
    assert sorted((e["row"]["case_id"], e["round"]) for e in journal) == \
        sorted((r["case_id"], k) for r in rows for k in range(3))


def _row(case_id: str, error: str = "") -> dict[str, object]:
    return {**{c: 1 for c in schema.KEY_COLUMNS}, "suite": "s", "model": "tiny", "variant": "mha",
            "backend": "eager", "mode": "decode", "scope": "step", "dtype": "float32", "kv_dtype": "float32",
            "device": "cpu", "options": "", "context": "", "cache_layout": "contiguous",
            "case_id": case_id, "status": "error" if error else "ok", "error": error, "latency_ms": 1.5}


def test_resume_keeps_journalled_rounds_up_to_a_gap_or_a_torn_line(tmp_path: Path) -> None:
    with RunWriter(tmp_path, resume=False) as w:
        w.append_round(schema.ResultRow.from_mapping(_row("a")), [1.0, 2.0], 0)
        w.append_round(schema.ResultRow.from_mapping(_row("a")), [3.0], 1)
        w.append_round(schema.ResultRow.from_mapping(_row("b")), [4.0], 0)
        w.append_round(schema.ResultRow.from_mapping(_row("b")), [5.0], 2)  # round 1 missing: 2 is re-run
        w.append_samples("c", [6.0], 0)  # its journal line never written (the kill hit between)
    with (tmp_path / schema.ROUNDS_JSONL).open("a") as f:
        f.write('{"round": 0, "row": {"case_id": "c", "sta')
    with RunWriter(tmp_path, resume=True) as w:
        assert [(r["case_id"], s) for r, s in w.unfinished_rounds["a"]] == [("a", [1.0, 2.0]), ("a", [3.0])]
        assert [s for _, s in w.unfinished_rounds["b"]] == [[4.0]]
        assert "c" not in w.unfinished_rounds
    assert sorted((s["case_id"], s["round"]) for s in read(tmp_path / schema.SAMPLES_CSV)) == \
        [("a", "0"), ("a", "0"), ("a", "1"), ("b", "0")]
    assert len((tmp_path / schema.ROUNDS_JSONL).read_text().splitlines()) == 3


def _results_with_torn_tail(path: Path, cut: str) -> list[str]:
    """results.csv with two complete rows (one holding a multi-line error) and a torn third."""
    rows = [_row("a"), _row("b", error="Traceback (most recent call last):\n  boom, \"quoted\"\nValueError")]
    with RunWriter(path, resume=False) as w:
        for r in rows:
            w.append(r, [])
    start = (path / schema.RESULTS_CSV).stat().st_size
    with RunWriter(path, resume=True) as w:
        w.append(_row("c", error="line one\nline two"), [])
    text = (path / schema.RESULTS_CSV).read_bytes().decode()
    (path / schema.RESULTS_CSV).write_bytes(text[: text.index(cut, start) + len(cut)].encode())
    return [str(r["case_id"]) for r in rows]


@pytest.mark.parametrize("cut", ["line one\n", "line o", ',"line', ",c,", "s,tiny"])
def test_resume_cuts_a_torn_row_where_the_csv_parser_says(tmp_path: Path, cut: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    kept = _results_with_torn_tail(tmp_path, cut)
    with RunWriter(tmp_path, resume=True) as w:
        assert w.finished == set(kept)
        w.append(_row("c"), [])  # the case in flight, measured again
    frame = read_results(tmp_path / schema.RESULTS_CSV, torn="refuse")
    assert list(frame["case_id"]) == [*kept, "c"]  # readable, nothing lost
    assert "Traceback" in read(tmp_path / schema.RESULTS_CSV)[1]["error"]


def test_report_reads_a_torn_multiline_row_as_torn(tmp_path: Path) -> None:
    kept = _results_with_torn_tail(tmp_path, "line one\n")  # ends on a newline, inside a quoted field
    frame = read_results(tmp_path / schema.RESULTS_CSV, torn="quiet")
    assert list(frame["case_id"]) == kept


def test_complete_rows_end() -> None:
    assert complete_rows_end('a,b\r\n1,"x\ny"\r\n') == len('a,b\r\n1,"x\ny"\r\n')
    assert complete_rows_end('a,b\r\n1,"x\ny') == len("a,b\r\n")
    assert complete_rows_end('a,b\r\n1,"x\n') == len("a,b\r\n")
    assert complete_rows_end("a,b\r\n1,2") == len("a,b\r\n")
    with pytest.raises(csv.Error):  # damage in the middle is not a torn tail
        complete_rows_end('a,b\r\n1,"x"y\r\n2,3\r\n')
