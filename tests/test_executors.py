"""Executors without Ray: `--isolate` survives a crashing and a hanging case, `--shard auto`
reads Slurm's array variables, and bad executor flags are one line and exit 2. A run over
mixed device kinds is charted per kind by `report` and refused by `compare`."""

from __future__ import annotations

import csv
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import run_cli

from mlabench import schema
from mlabench.executors.slurm import slurm_shard

ISOLATE_SUITE = """
name = "crash"
[settings]
budget_s = 0.005
warmup_s = 0.001
min_samples = 3
[[grid]]
model = "tiny"
variant = ["mha", "test-abort"]
backend = ["eager", "test-hang"]
mode = "decode"
batch = [1]
seq_len = [16]
"""


@pytest.fixture
def crash_backends() -> Iterator[None]:
    """Registers the test-only backends for one test (a module-level import would show them
    to every registry-parametrized test collected after this one)."""
    module = importlib.import_module("crash_backends")
    try:
        yield
    finally:
        module.unregister()
        sys.modules.pop("crash_backends", None)


def rows(path: Path) -> dict[str, dict[str, str]]:
    with (path / schema.RESULTS_CSV).open(newline="") as f:
        return {f"{r['variant']}/{r['backend']}": r for r in csv.DictReader(f)}


def test_isolate_turns_an_abort_and_a_hang_into_rows(crash_backends: None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Two rounds: the healthy case runs twice, each time in its own process, and keeps the round
    of every sample; the failed ones end in round 0."""
    suite = tmp_path / "crash.toml"
    suite.write_text(ISOLATE_SUITE)
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--isolate", "--timeout", "1",
                            "--rounds", "2", "--no-probe", "--no-report"], capsys)
    assert code == 1, err  # failed cases, and the sweep went on past them
    by_case = rows(out)
    assert len(by_case) == 3
    assert by_case["mha/eager"]["status"] == "ok"
    assert 0 < float(by_case["mha/eager"]["rel_err"]) < 1e-4  # checked against float64 in the child
    assert by_case["mha/eager"]["kv_cache_bytes"] == by_case["mha/eager"]["kv_cache_bytes_measured"]
    assert by_case["mha/eager"]["host"] and by_case["mha/eager"]["device_name"]
    assert by_case["test-abort/eager"]["host"] == by_case["mha/eager"]["host"]
    assert by_case["test-abort/eager"]["status"] == "error"
    assert "killed by SIGABRT" in by_case["test-abort/eager"]["error"]
    assert by_case["mha/test-hang"]["status"] == "timeout"
    assert "wall limit of 1 s" in by_case["mha/test-hang"]["error"]
    for row in by_case.values():  # a row the child never wrote still has its identity and analytic columns
        assert row["case_id"] == schema.case_id(row) and row["kv_cache_bytes"]
    with (out / schema.SAMPLES_CSV).open(newline="") as f:
        samples = list(csv.DictReader(f))
    eager = by_case["mha/eager"]["case_id"]
    assert {s["case_id"] for s in samples} == {eager}
    assert sorted({s["round"] for s in samples}) == ["0", "1"]
    assert all(sum(s["round"] == r for s in samples) >= 3 for r in ("0", "1"))
    assert int(by_case["mha/eager"]["n_samples"]) == len(samples)  # the row summarises both rounds
    meta = json.loads((out / schema.META_JSON).read_text())
    assert meta["executor"] == "isolate" and meta["interrupted"] is False
    assert list(meta["devices"]) == [meta["device"]["name"]]


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 4)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (4, 4)),
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "2",
      "SLURM_ARRAY_TASK_STEP": "2"}, (3, 3)),
])
def test_shard_auto_reads_the_array_task(env: dict[str, str], expected: tuple[int, int]) -> None:
    assert slurm_shard(env) == expected


def test_shard_auto_selects_the_same_slice_as_k_of_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    code, auto, err = run_cli(["sweep", "--suite", "smoke", "--device", "cpu", "--shard", "auto", "--dry-run",
                               "--json"], capsys)
    assert code == 0, err
    code, explicit, err = run_cli(["sweep", "--suite", "smoke", "--device", "cpu", "--shard", "2/3", "--dry-run",
                                   "--json"], capsys)
    assert code == 0, err
    assert json.loads(auto)["cases"] == json.loads(explicit)["cases"] > 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--executor", "bogus"], "--executor: unknown executor 'bogus'"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --executor ray"),
    (["--isolate", "--ray-accelerator", "H100"], "--ray-accelerator needs --executor ray"),
    (["--isolate", "--executor", "local"], "--isolate contradicts --executor local"),
    (["--shard", "auto"], "--shard auto: not in a Slurm array job"),
])
def test_bad_executor_flags_are_one_line_exit_2(args: list[str], needle: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(["sweep", "--out", str(tmp_path / "run"), *args], capsys)
    assert code == 2
    assert err.startswith("mlabench: error: ") and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_shard_auto_refuses_an_array_with_gaps() -> None:
    from mlabench.errors import UsageError

    with pytest.raises(UsageError, match="not in a contiguous array"):
        slurm_shard({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"})


def test_ray_accelerator_must_be_a_kind_the_cluster_has() -> None:
    from mlabench.errors import UsageError
    from mlabench.executors.ray_cluster import check_accelerator

    cluster = {"CPU": 64.0, "GPU": 16.0, "accelerator_type:H100": 1.0, "accelerator_type:H200": 1.0}
    check_accelerator("H200", cluster)
    with pytest.raises(UsageError, match=r"--ray-accelerator B200: .* \(it has: H100, H200\)"):
        check_accelerator("B200", cluster)
    with pytest.raises(UsageError, match=r"\(it has: none\)"):
        check_accelerator("H100", {"CPU": 2.0})


def test_compare_refuses_a_run_over_mixed_device_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthetic_runs import make_meta, make_run

    base = make_run(tmp_path / "base", claims=False, failures=False, seq_lens=(512,), batches=(1,))
    meta = make_meta()
    h200 = {**meta["device"], "name": "NVIDIA H200"}
    meta["devices"] = {"NVIDIA H100 80GB HBM3": meta["device"], "NVIDIA H200": h200}
    cand = make_run(tmp_path / "cand", meta=meta, claims=False, failures=False, seq_lens=(512,), batches=(1,))
    code, _, err = run_cli(["compare", str(base), str(cand)], capsys)
    assert code == 3
    assert "candidate ran on mixed device kinds (NVIDIA H100 80GB HBM3, NVIDIA H200)" in err


def _section(page: str, sid: str) -> str:
    return page.split(f'id="{sid}"', 1)[1].split("</section>", 1)[0]


def test_report_charts_each_device_kind_on_its_own(tmp_path: Path) -> None:
    from synthetic_runs import build_rows, make_meta, write_run

    from mlabench.report.html import render_report
    from mlabench.rundir import load_run

    rows, draws = build_rows(variants=("mha", "mla-absorbed"), backends=("eager", "flashmla"), modes=("decode",),
                             seq_lens=(1024,), batches=(1,), failures=False, claims=False)
    for row in rows:  # two kinds of GPU in one cluster run: eager cases landed on one, flashmla on the other
        row["device_name"] = "NVIDIA H100" if row["backend"] == "eager" else "NVIDIA H200"
    page = render_report(load_run(write_run(tmp_path / "run", rows, draws, make_meta())))
    assert "ran on 2 device kinds (NVIDIA H100, NVIDIA H200)" in page
    h100, h200 = _section(page, "sec-headline-0"), _section(page, "sec-headline-1")
    assert "Headline (NVIDIA H100)" in h100 and "eager" in h100 and "flashmla" not in h100
    assert "Headline (NVIDIA H200)" in h200 and "flashmla" in h200 and "eager" not in h200
    assert 'id="sec-headline"' not in page  # no chart over both kinds
