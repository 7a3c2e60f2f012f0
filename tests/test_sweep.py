"""`mlabench sweep` end to end on CPU: the CSV contract, resume after a kill, shards and merge, exit codes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import run_cli
from suite_text import FAST_SETTINGS

from mlabench import schema

SUITE = """
name = "unit"
""" + FAST_SETTINGS + """[[grid]]
model = "tiny"
variant = ["mha", "gqa", "mla-absorbed", "linformer"]
backend = "eager"
mode = ["prefill", "decode"]
batch = [1]
seq_len = [16, 32]
"""


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    p = tmp_path / "unit.toml"
    p.write_text(SUITE)
    return p


def test_sweep_writes_the_contract(tmp_path: Path, suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--json",
                                    "--no-probe"], capsys)
    assert code == 0, stderr
    doc = json.loads(stdout)  # exactly one JSON document on stdout
    assert doc["status_counts"] == {"ok": 14, "unsupported": 2}
    with (out / schema.RESULTS_CSV).open(newline="") as f:
        header = next(csv.reader(f))
    assert header == list(schema.COLUMNS)
    rows = read(out / schema.RESULTS_CSV)
    assert len(rows) == 16
    for row in rows:
        assert row["case_id"] == schema.case_id(row)
        if row["status"] == "ok":
            assert row["kv_cache_bytes"] == row["kv_cache_bytes_measured"]
            assert float(row["latency_ms_p10"]) <= float(row["latency_ms"]) <= float(row["latency_ms_p90"])
            assert float(row["rel_err"]) < 1e-4
            assert row["kv_cache_bytes_allocator"] == "" and row["kv_cache_bytes_nvml"] == ""  # CPU
        else:
            assert row["variant"] == "linformer" and row["mode"] == "decode"
            assert "no incremental decode" in row["error"]
    samples = read(out / schema.SAMPLES_CSV)
    ok_ids = {r["case_id"] for r in rows if r["status"] == "ok"}
    assert {s["case_id"] for s in samples} == ok_ids
    per_case = {cid: sum(s["case_id"] == cid for s in samples) for cid in ok_ids}
    assert all(per_case[r["case_id"]] == int(float(r["n_samples"])) for r in rows if r["status"] == "ok")
    meta = json.loads((out / schema.META_JSON).read_text())
    assert meta["suite"] == "unit" and meta["device"]["type"] == "cpu" and meta["torch"]
    assert meta["interrupted"] is False


def test_existing_out_dir_needs_resume(tmp_path: Path, suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--no-probe", "--variant", "mha"]
    assert run_cli(args, capsys)[0] == 0
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "--resume" in stderr
    assert run_cli([*args, "--resume"], capsys)[0] == 0
    assert len(read(out / schema.RESULTS_CSV)) == 4  # nothing re-run, nothing duplicated


def test_resume_after_sigkill_has_no_duplicates(tmp_path: Path, suite: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    # Slow enough that the kill lands mid-sweep (it waits for 3 of 16 rows), and the resume runs the rest.
    slow = SUITE.replace("budget_s = 0.005", "budget_s = 0.1")
    suite.write_text(slow)
    cmd = [sys.executable, "-m", "mlabench", "sweep", "--suite", str(suite), "--out", str(out), "--no-report",
           "--no-probe"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / schema.RESULTS_CSV
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 4:  # header + 3 rows
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read(results))
    assert 3 <= done_before < 16
    with results.open("a") as f:  # as if the kill hit in the middle of writing a row
        f.write("unit,tiny,mha,eager,pre")
    resume = ["sweep", "--suite", str(suite), "--out", str(out), "--resume", "--no-report", "--no-probe"]
    suite.write_text(SUITE)  # another budget: the run's rows would mix two measurement settings
    code, _, stderr = run_cli(resume, capsys)
    assert code == 3 and "budget_s 0.1 -> 0.005" in stderr
    suite.write_text(slow)
    assert run_cli(resume, capsys)[0] == 0
    rows = read(results)
    assert len(rows) == 16
    assert len({r["case_id"] for r in rows}) == 16
    samples = read(out / schema.SAMPLES_CSV)
    ok = {r["case_id"]: int(float(r["n_samples"])) for r in rows if r["status"] == "ok"}
    for cid, n in ok.items():
        assert sum(s["case_id"] == cid for s in samples) == n


def test_shards_then_merge_equal_the_whole(tmp_path: Path, suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = []
    for k in (1, 2):
        d = tmp_path / f"shard{k}"
        assert run_cli(["sweep", "--suite", str(suite), "--out", str(d), "--shard", f"{k}/2", "--no-report",
                        "--no-probe"], capsys)[0] == 0
        dirs.append(d)
    merged = tmp_path / "merged"
    assert run_cli(["merge", *map(str, dirs), "--out", str(merged), "--no-report"], capsys)[0] == 0
    rows = read(merged / schema.RESULTS_CSV)
    assert len(rows) == 16 and len({r["case_id"] for r in rows}) == 16
    assert run_cli(["merge", str(dirs[0]), str(dirs[0]), "--out", str(tmp_path / "dup"), "--no-report"], capsys)[0] == 2


def test_merge_of_round_shards_keeps_every_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two shards of a `--rounds 2` sweep, merged: each case's journalled rounds (rounds.jsonl)
    and its samples by round are the shard's, so `compare` counts the same rounds in the merged
    run as in the shard, and a resume of the merged run finds every round done."""
    suite = tmp_path / "rounds.toml"
    suite.write_text(SUITE.replace('["mha", "gqa", "mla-absorbed", "linformer"]', '"mha"')
                     .replace('["prefill", "decode"]', '"decode"').replace("threads = 1", "threads = 1\nrounds = 2"))
    shards = [tmp_path / "shard1", tmp_path / "shard2"]
    for k, out in enumerate(shards, start=1):
        code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--shard", f"{k}/2", "--no-report",
                                "--no-probe"], capsys)
        assert code == 0, err
    merged = tmp_path / "merged"
    assert run_cli(["merge", *map(str, shards), "--out", str(merged), "--no-report"], capsys)[0] == 0

    def journal(run: Path) -> list[tuple[str, int, str]]:
        lines = [json.loads(line) for line in (run / schema.ROUNDS_JSONL).read_text().splitlines()]
        return sorted((e["row"]["case_id"], e["round"], json.dumps(e["row"], sort_keys=True)) for e in lines)

    def by_round(run: Path) -> set[tuple[str, str, str, str]]:
        return {(s["case_id"], s["round"], s["sample"], s["latency_ms"]) for s in read(run / schema.SAMPLES_CSV)}

    rows = read(merged / schema.RESULTS_CSV)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert journal(merged) == sorted(journal(shards[0]) + journal(shards[1]))
    assert sorted((cid, k) for cid, k, _ in journal(merged)) == sorted((r["case_id"], k) for r in rows for k in (0, 1))
    assert by_round(merged) == by_round(shards[0]) | by_round(shards[1])
    for shard in shards:
        code, stdout, _ = run_cli(["compare", str(shard), str(merged), "--json"], capsys)
        assert code == 0
        (case,) = [c for c in json.loads(stdout)["cases"] if c["verdict"] != "only-candidate"]
        # the same samples in the same rounds on both sides
        assert case["n_base"] == case["n_cand"] > 0 and case["ratio"] == 1.0, case
        assert any("2 rounds per side" in note for note in case["notes"]), case
    code, stdout, err = run_cli(["sweep", "--suite", str(suite), "--out", str(merged), "--resume", "--no-report",
                                 "--no-probe"], capsys)
    assert code == 0 and "nothing new" in stdout + err, err
    assert len(read(merged / schema.RESULTS_CSV)) == 2
    assert journal(merged) == sorted(journal(shards[0]) + journal(shards[1]))


def test_cpu_preflight_skips_cases_that_cannot_fit(tmp_path: Path, suite: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--no-probe", "--model",
                    "deepseek-v3", "--variant", "mla-expanded", "--mode", "decode", "--batch", "64", "--seq-len",
                    "1048576"], capsys)[0]
    assert code == 0
    (row,) = read(out / schema.RESULTS_CSV)
    assert row["status"] == "skipped" and "GiB" in row["error"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sweep", "--suite", "nope"], "unknown suite"),
        (["sweep", "--variant", "mah"], "variant 'mah'"),
        (["sweep", "--batch", "1,x"], "--batch"),
        (["sweep", "--device", "tpu"], "--device"),
        (["sweep", "--shard", "5/2"], "--shard"),
        (["sweep", "--resume"], "--resume needs --out"),
        (["sweep", "--set", "num_kv_heads=3", "--variant", "gqa"], "no valid case"),
        (["kv", "--preset", "gpt-17"], "gpt-17"),
        (["kv", "--memory", "lots"], "--memory"),
        (["run", "--variant", "gqa", "--backend", "triton"], "does not serve"),
        (["run", "--seq-len", "4", "--q-len", "8"], "q_len"),
        (["merge", "/no/such/run", "--out", "/tmp/x"], "not found"),
        (["sweep", "--compile-mode", "ludicrous"], "compile_mode"),
        (["sweep", "--sdpa-kernel", "warp"], "sdpa_kernel"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (an escaping exception fails the test as a traceback would); the entry point as its own
    # process is checked once below: a fresh interpreter per input would cost a torch import each.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLABENCH_DEBUG", raising=False)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()  # rejected before any work


def test_bad_input_from_the_command_line_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mlabench", "sweep", "--variant", "mah"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "MLABENCH_DEBUG": ""}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("mlabench: error: ") and "variant 'mah'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_ctrl_c_stops_after_the_current_case_and_keeps_rows(tmp_path: Path, suite: Path) -> None:
    out = tmp_path / "run"
    suite.write_text(SUITE.replace("budget_s = 0.005", "budget_s = 0.3"))
    cmd = [sys.executable, "-m", "mlabench", "sweep", "--suite", str(suite), "--out", str(out), "--no-report",
           "--no-probe"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / schema.RESULTS_CSV
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(results.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    rows = read(results)
    assert 2 <= len(rows) < 16
    assert json.loads((out / schema.META_JSON).read_text())["interrupted"] is True
