"""`mlabench compare` end to end through `main([...])` on synthetic run directories."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_cli
from synthetic_runs import build_rows, make_meta, make_run, write_run

from mlabench import schema

# A smaller grid than the default keeps each compare well under a second; failures and claims stay in.
GRID: dict[str, Any] = dict(seq_lens=(512, 1024, 4096), ranks=(256, 512))


def is_slow_case(key: dict[str, Any]) -> bool:
    return key["variant"] == "gqa" and key["backend"] == "eager" and key["mode"] == "decode" and key["batch"] == 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "base": make_run(root / "base", seed=0, **GRID),
        "rerun": make_run(root / "rerun", seed=1, **GRID),
        "slow": make_run(root / "slow", seed=1, slowdown=1.15, slow=is_slow_case, **GRID),
        "fp16": make_run(root / "fp16", seed=1, dtype="float16", **GRID),
    }


def rows_of(run: Path) -> list[dict[str, str]]:
    with (run / schema.RESULTS_CSV).open(newline="") as fh:
        return list(csv.DictReader(fh))


def rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a run directory, passing its result rows through `edit(rows) -> rows`."""
    shutil.copytree(src, dst)
    rows = edit(rows_of(src))
    with (dst / schema.RESULTS_CSV).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(schema.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def test_same_run_twice_passes(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["base"])], capsys)
    assert code == 0, out
    assert "PASS" in out


def test_rerun_of_the_same_code_passes(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["rerun"])], capsys)
    assert code == 0, out


def test_results_csv_paths_are_accepted(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(["compare", str(runs["base"] / "results.csv"), str(runs["rerun"] / "results.csv")], capsys)
    assert code == 0


def test_slowdown_without_rounds_is_indicative_and_says_what_to_run(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """One round a side cannot see run-to-run noise: a timing change is shown, never failed."""
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["slow"]), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["verdict"] == "pass", doc["summary"]
    slow = [c for c in doc["cases"] if c["method"] and is_slow_case(c["key"])]
    assert slow and all(c["verdict"] == "indicative" and not c["fails"] for c in slow)
    assert all(c["ratio"] > 1.05 for c in slow)
    assert doc["tested"] == 0 and doc["indicative"] == len([c for c in doc["cases"] if c["method"]])
    for words in ("indicative", "not gated", "--rounds", "mlabench ab"):
        assert words in doc["summary"]
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["slow"]), "--strict"], capsys)
    assert code == 0, out  # --strict does not turn an unreplicated timing into a verdict
    assert "gqa:eager" in out and "indicative" in out  # listed, past the threshold


def test_slowdown_fails_and_names_the_case(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["slow"]), "--sample-test"], capsys)
    assert code == 1
    assert "regressed" in out
    assert "gqa:eager" in out
    assert "FAIL" in out and "WEAK" in out


def test_slowdown_in_json(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["compare", str(runs["base"]), str(runs["slow"]), "--json", "--sample-test"], capsys)
    assert code == 1
    doc = json.loads(out)  # exactly one JSON document on stdout
    assert doc["verdict"] == "fail" and doc["exit_code"] == 1
    regressed = [c for c in doc["cases"] if c["verdict"] == "regressed"]
    assert regressed and all(c["key"]["variant"] == "gqa" and c["key"]["batch"] == 8 for c in regressed)
    assert all(c["ratio"] > 1.05 and c["p_value"] < 0.05 for c in regressed)
    assert len(doc["cases"]) == len(rows_of(runs["base"]))
    assert "comparing" in err


def test_format_json_equals_json_flag(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, a, _ = run_cli(["compare", str(runs["base"]), str(runs["rerun"]), "--json"], capsys)
    _, b, _ = run_cli(["compare", str(runs["base"]), str(runs["rerun"]), "--format", "json"], capsys)
    assert json.loads(a) == json.loads(b)


def test_markdown_has_a_verdict_line_and_a_table(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "verdict.md"
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["slow"]), "--format", "markdown",
                            "-o", str(out_file), "--sample-test"], capsys)
    assert code == 1
    first = out.splitlines()[0]
    assert "FAIL" in first and "regressed" in first
    assert "| verdict | case |" in out
    assert "|---|" in out
    assert out_file.read_text() == out


def test_missing_case_is_reported_and_fails_only_when_strict(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dropped = rows_of(runs["base"])[0]
    cand = rewrite(runs["base"], tmp_path / "cand", lambda rows: rows[1:])
    code, out, _ = run_cli(["compare", str(runs["base"]), str(cand)], capsys)
    assert code == 0
    assert "only-baseline" in out and "missing from the candidate" in out
    code, out, _ = run_cli(["compare", str(runs["base"]), str(cand), "--json"], capsys)
    missing = [c for c in json.loads(out)["cases"] if c["verdict"] == "only-baseline"]
    assert [c["case_id"] for c in missing] == [dropped["case_id"]]
    code, _, _ = run_cli(["compare", str(runs["base"]), str(cand), "--strict"], capsys)
    assert code == 1


def test_ok_to_error_is_a_regression(runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def break_one(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        row = next(r for r in rows if r["status"] == "ok" and r["variant"] == "mqa")
        row.update({c: "" for c in schema.TIME_COLUMNS}, status="error", error="RuntimeError: kernel crashed")
        return rows

    cand = rewrite(runs["base"], tmp_path / "cand", break_one)
    code, out, _ = run_cli(["compare", str(runs["base"]), str(cand)], capsys)
    assert code == 1
    assert "status ok -> error" in out and "kernel crashed" in out


def test_inaccurate_candidate_fails(runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def spoil(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        row = next(r for r in rows if r["status"] == "ok")
        row.update(status="inaccurate", error="rel_err 3.0e-01 > tolerance 2.0e-02", rel_err="0.3")
        return rows

    code, out, _ = run_cli(["compare", str(runs["base"]), str(rewrite(runs["base"], tmp_path / "c", spoil))], capsys)
    assert code == 1
    assert "status ok -> inaccurate" in out


@pytest.mark.parametrize(("variant", "column", "change"), [
    ("gqa", "params", lambda n: n * 2),  # a params change fails without rounds
    ("mla-absorbed", "kv_cache_bytes_measured", lambda n: n + 2),  # KV bytes fail on an exact change
], ids=["params", "kv-bytes"])
def test_a_size_change_fails_without_rounds(variant: str, column: str, change: Any, runs: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def edited(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        row = next(r for r in rows if r["status"] == "ok" and r["variant"] == variant)
        row[column] = str(change(int(row[column])))
        return rows

    code, out, _ = run_cli(["compare", str(runs["base"]), str(rewrite(runs["base"], tmp_path / "c", edited)),
                            "--json"], capsys)
    assert code == 1
    changed = [c for c in json.loads(out)["cases"] if c["verdict"] == "changed"]
    assert len(changed) == 1 and column in changed[0]["notes"][-1]


def test_different_dtype_is_not_comparable(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["compare", str(runs["base"]), str(runs["fp16"])], capsys)
    assert code == 3
    assert out == ""
    lines = err.strip().splitlines()
    assert "dtype" in lines[-1] and "bfloat16" in lines[-1] and "float16" in lines[-1]
    code, out, _ = run_cli(["compare", str(runs["base"]), str(runs["fp16"]), "--allow-env-change", "--json"], capsys)
    assert code in (0, 1)
    doc = json.loads(out)
    assert doc["joined_ignoring"] == ["dtype", "kv_dtype"]  # the cache's dtype follows the compute dtype
    assert not [c for c in doc["cases"] if c["verdict"].startswith("only-")]


def test_different_device_is_not_comparable(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cand = tmp_path / "a100"
    shutil.copytree(runs["base"], cand)
    (cand / schema.META_JSON).write_text(json.dumps(make_meta(device_name="NVIDIA A100-SXM4-80GB")))
    code, _, err = run_cli(["compare", str(runs["base"]), str(cand)], capsys)
    assert code == 3
    assert "device name differs" in err and "A100" in err
    code, out, _ = run_cli(["compare", str(runs["base"]), str(cand), "--allow-env-change"], capsys)
    assert code == 0
    assert "device name differs" in out


def test_no_case_in_common_is_not_comparable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", claims=False, failures=False, seq_lens=(512,), batches=(1,))
    b = make_run(tmp_path / "b", claims=False, failures=False, seq_lens=(1024,), batches=(2,), suite="prefill")
    code, _, err = run_cli(["compare", str(a), str(b)], capsys)
    assert code == 3
    assert "no case in common" in err


def test_without_samples_falls_back_to_medians(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows, _ = build_rows(seed=1, slowdown=1.15, slow=is_slow_case, **GRID)
    cand = write_run(tmp_path / "nosamples", rows, None, make_meta())
    code, out, _ = run_cli(["compare", str(runs["base"]), str(cand), "--json", "--sample-test"], capsys)
    doc = json.loads(out)
    assert code == 0  # never significant without raw samples...
    flagged = [c for c in doc["cases"] if c["verdict"] == "inconclusive"]
    assert flagged and all("medians only" in c["notes"][0] for c in flagged)
    code, _, _ = run_cli(["compare", str(runs["base"]), str(cand), "--strict", "--sample-test"], capsys)
    assert code == 1  # ...but inconclusive fails under --strict


GARBAGE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (GARBAGE, "results.csv"),
        (b"hello world\nthis is, not a results file\n", "missing required column"),
        (b"suite,model\ndecode,tiny\n", "missing required column"),
        (b'suite,model\n"unterminated,tiny\n', "results.csv"),
    ],
)
def test_corrupt_csv_exits_2_with_one_line(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, expect: str
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(runs["base"], bad)
    (bad / schema.RESULTS_CSV).write_bytes(content)
    code, out, err = run_cli(["compare", str(runs["base"]), str(bad)], capsys)
    assert code == 2
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("mlabench: error:")]
    assert len(errors) == 1 and expect in errors[0] and str(bad) in errors[0]
    assert "Traceback" not in err


def test_non_numeric_latency_names_column_and_row(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def garble(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        rows[2]["latency_ms"] = "fast"
        return rows

    code, _, err = run_cli(["compare", str(runs["base"]), str(rewrite(runs["base"], tmp_path / "c", garble))], capsys)
    assert code == 2
    assert "'latency_ms' row 4" in err


def test_corrupt_samples_csv_exits_2(runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(runs["base"], bad)
    (bad / schema.SAMPLES_CSV).write_text("case,latency\n1,2\n")
    code, _, err = run_cli(["compare", str(runs["base"]), str(bad)], capsys)
    assert code == 2 and "samples.csv" in err


def test_missing_run_exits_2(runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(["compare", str(runs["base"]), str(tmp_path / "nope")], capsys)
    assert code == 2
    assert "no such run directory" in err


def test_bad_threshold_exits_2(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["compare", str(runs["base"]), str(runs["base"]), "--threshold", "5"], capsys)
    assert code == 2 and "--threshold" in err
