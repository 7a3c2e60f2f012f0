"""The regression gate end to end on real CPU sweeps (not synthetic rows)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_cli

from mlabench import schema

SUITE = """
name = "gate"
[settings]
budget_s = 0.02
warmup_s = 0.005
min_samples = 15
threads = 1
[[grid]]
model = "tiny"
variant = ["mha", "gqa", "mla-absorbed", "lowrank-kv"]
backend = ["eager", "sdpa"]
mode = ["prefill", "decode"]
batch = [1]
seq_len = [32]
"""
# The two sweeps of the module fixture are the expensive part: under pytest-xdist every test of
# this module goes to one worker, so they run once.
pytestmark = pytest.mark.xdist_group("compare-e2e")
TIME_COLUMNS = ("latency_ms", "latency_ms_p10", "latency_ms_p90", "latency_ms_iqr")


def sweep(suite: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--no-probe",
                            *extra], capsys)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The suite file and the same sweep run twice (separate processes, as CI would)."""
    root = tmp_path_factory.mktemp("gate")
    suite = root / "gate.toml"
    suite.write_text(SUITE)
    dirs = []
    for name in ("a", "b"):
        out = root / name
        proc = subprocess.run([sys.executable, "-m", "mlabench", "sweep", "--suite", str(suite), "--out", str(out),
                               "--no-report", "--no-probe"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        dirs.append(out)
    return suite, dirs[0], dirs[1]


def slowed_copy(run: Path, out: Path, factor: float) -> Path:
    """A candidate whose every sample (and summary latency) is `factor` times the baseline's."""
    shutil.copytree(run, out)
    for name, columns in ((schema.SAMPLES_CSV, ("latency_ms",)), (schema.RESULTS_CSV, TIME_COLUMNS)):
        path = out / name
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
            fields = list(rows[0])
        for row in rows:
            for col in columns:
                if row[col]:
                    row[col] = repr(float(row[col]) * factor)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
    return out


def test_same_code_twice_plumbing(runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Two real CPU sweeps of the same code pair up case by case and agree on every deterministic
    column. Their timing verdict depends on the machine's load, so it is not asserted here: the
    gate's statistics are judged on synthetic runs with known truth (test_compare_stats)."""
    _, a, b = runs
    code, out, _ = run_cli(["compare", str(a), str(b), "--threshold", "0.3", "--json"], capsys)
    doc = json.loads(out)
    assert code in (0, 1), doc["summary"]
    verdicts = [c["verdict"] for c in doc["cases"]]
    assert "only-baseline" not in verdicts and "only-candidate" not in verdicts
    assert doc["counts"]["changed"] == 0  # KV bytes, params, FLOPs: equal code, equal values


def test_slowed_copy_is_never_same(runs: tuple[Path, Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Real samples scaled by 1.5: whether a rank test on 15 of them reaches significance depends on how
    much the machine scattered them, so only what holds either way is asserted: no timed case is `same`
    or `improved`; the unscaled copy passes."""
    _, a, _ = runs
    code, out, _ = run_cli(["compare", str(a), str(slowed_copy(a, tmp_path / "slow", 1.5)), "--json",
                            "--sample-test"], capsys)
    timed = [c for c in json.loads(out)["cases"] if c["method"]]
    assert timed and all(c["verdict"] in ("regressed", "underpowered", "inconclusive") for c in timed)
    assert code == (1 if any(c["verdict"] == "regressed" for c in timed) else 0)
    code, _, _ = run_cli(["compare", str(a), str(slowed_copy(a, tmp_path / "same", 1.0)), "--sample-test"], capsys)
    assert code == 0


def test_missing_case_is_reported(runs: tuple[Path, Path, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, a, _ = runs
    cand = tmp_path / "cand"
    shutil.copytree(a, cand)
    lines = (cand / schema.RESULTS_CSV).read_text().splitlines(keepends=True)
    dropped = next(csv.DictReader(lines[:1] + lines[1:2]))
    (cand / schema.RESULTS_CSV).write_text("".join(lines[:1] + lines[2:]))
    code, out, _ = run_cli(["compare", str(a), str(cand), "--json"], capsys)
    doc = json.loads(out)
    only = [c for c in doc["cases"] if c["verdict"] == "only-baseline"]
    assert [c["case_id"] for c in only] == [dropped["case_id"]]
    assert code == 0
    code, _, _ = run_cli(["compare", str(a), str(cand), "--strict"], capsys)
    assert code == 1


def test_different_dtype_is_not_comparable(runs: tuple[Path, Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    suite, a, _ = runs
    f64 = sweep(suite, tmp_path / "f64", capsys, "--dtype", "float64", "--variant", "mha")
    code, _, err = run_cli(["compare", str(a), str(f64)], capsys)
    assert code == 3
    assert "dtype" in err


TINY = """
name = "tiny-rounds"
[settings]
budget_s = 0.01
warmup_s = 0.002
min_samples = 4
threads = 1
[[grid]]
model = "tiny"
variant = ["mha", "mla-absorbed"]
backend = ["eager", "flashmla"]
mode = ["decode"]
batch = [1]
seq_len = [32]
"""


def test_sweep_rounds_tags_samples_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    run = sweep(suite, tmp_path / "run", capsys, "--rounds", "3")
    with (run / schema.SAMPLES_CSV).open(newline="") as f:
        samples = list(csv.DictReader(f))
    with (run / schema.RESULTS_CSV).open(newline="") as f:
        rows = list(csv.DictReader(f))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(rows) == 3 and len(ok) == 2  # flashmla (MLA only): skipped on the CPU, once, not per round
    for row in ok:
        mine = [s for s in samples if s["case_id"] == row["case_id"]]
        assert {s["round"] for s in mine} == {"0", "1", "2"}
        assert int(row["n_samples"]) == len(mine)
        assert row["rel_err"]  # the accuracy check ran in round 0
    assert json.loads((run / schema.META_JSON).read_text())["settings"]["rounds"] == 3
    code, out, _ = run_cli(["compare", str(run), str(run), "--json"], capsys)
    assert json.loads(out)["evidence"] == "rounds"


def test_ab_of_one_tree_against_itself_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Plumbing only: two sides, two rounds, both run directories and the verdict files. The timing
    verdict of real CPU runs depends on the machine's load and is not asserted."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.replace('variant = ["mha", "mla-absorbed"]', 'variant = ["mha"]'))
    tree = str(Path(__file__).resolve().parent.parent)
    code, out, err = run_cli(["ab", tree, tree, "--suite", str(suite), "--rounds", "3", "--device", "cpu",
                              "--out", str(tmp_path / "ab"), "--json"], capsys)
    assert code in (0, 1), err
    doc = json.loads(out)
    assert doc["evidence"] == "rounds" and doc["paired"]
    assert "process start-up:" in err
    for side in ("baseline", "candidate"):
        meta = json.loads((tmp_path / "ab" / side / schema.META_JSON).read_text())
        assert meta["rounds"] == 3 and meta["ab"]["side"] == side and meta["ab"]["interleave"] == "case"
        assert len(set(meta["ab"]["round_pids"])) == 3  # each round in its own process
    assert {p.name for p in (tmp_path / "ab").iterdir()} >= {"compare.json", "compare.md", "compare.html"}


def test_ab_rejects_a_side_it_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["ab", "no-such-ref-anywhere", str(tmp_path), "--rounds", "3"], capsys)
    assert code == 2 and "baseline" in err
