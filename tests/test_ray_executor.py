"""`--executor ray` on a local Ray instance with two CPU workers, started once for this module:
a slice of the smoke suite measures the same cases, KV bytes and accuracy as in-process, a
driver killed mid-sweep loses only the cases in flight (`--resume` runs them), and a worker
lost mid-case becomes one error row while the other cases complete."""

from __future__ import annotations

import csv
import importlib
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import run_cli
from suite_text import FAST_SETTINGS

from mlabench import schema

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mlabench[ray]')")
# Ray's workers take both cores: under pytest-xdist one worker runs this module and the other
# process-heavy modules in turn (`--dist loadgroup`), and the module's one Ray instance stays on it.
pytestmark = pytest.mark.xdist_group("processes")

# The smoke suite cut to four tiny cases (MHA and absorbed MLA, prefill and decode, eager): every
# case's process pays for importing torch, so the case count, not the shapes, sets the cost.
SMOKE_SLICE = ["--suite", "smoke", "--device", "cpu", "--variant", "mha,mla-absorbed", "--backend", "eager",
               "--seq-len", "16", "--q-len", "1", "--batch", "1", "--budget", "0.005", "--warmup", "0.001",
               "--min-samples", "3", "--no-probe", "--no-report"]

LOST_SUITE = """
name = "lost"
""" + FAST_SETTINGS + """[[grid]]
model = "tiny"
variant = "mha"
backend = ["eager", "test-kill-worker"]
mode = "decode"
batch = [1]
seq_len = [16]
"""


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[str]:
    """One local Ray instance for the module; yields its address for a second driver."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def crash_backends() -> Iterator[None]:
    module = importlib.import_module("crash_backends")
    try:
        yield
    finally:
        module.unregister()
        sys.modules.pop("crash_backends", None)


def read(run: Path) -> list[dict[str, str]]:
    with (run / schema.RESULTS_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


def facts(rows: list[dict[str, str]]) -> dict[str, tuple[str, ...]]:
    """What must not depend on where a case ran: its status (the accuracy verdict among them),
    KV bytes and parameters."""
    return {r["case_id"]: (r["status"], r["kv_cache_bytes"], r["kv_cache_bytes_measured"], r["params"])
            for r in rows}


def errors(rows: list[dict[str, str]]) -> dict[str, tuple[float, float]]:
    """Each case's error against the float64 reference (rel_err, max_abs_err)."""
    return {r["case_id"]: (float(r["rel_err"]), float(r["max_abs_err"])) for r in rows}


def test_smoke_slice_on_ray_after_a_killed_driver_matches_in_process(local_ray: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "local"
    code, _, err = run_cli(["sweep", *SMOKE_SLICE, "--out", str(local)], capsys)
    assert code == 0, err
    expected = facts(read(local))
    assert len(expected) == 4 and all(f[0] == "ok" for f in expected.values())

    # A second driver on the same Ray instance, killed once a row is on disk.
    run = tmp_path / "ray"
    proc = subprocess.Popen([sys.executable, "-m", "mlabench", "sweep", *SMOKE_SLICE, "--out", str(run),
                             "--executor", "ray", "--ray-address", local_ray],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = run / schema.RESULTS_CSV
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:  # the header and a row
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {r["case_id"]: r for r in read(run)}
    assert 1 <= len(kept) < 4

    code, stdout, err = run_cli(["sweep", *SMOKE_SLICE, "--out", str(run), "--resume", "--executor", "ray",
                                 "--json"], capsys)
    assert code == 0, err
    assert sum(json.loads(stdout)["status_counts"].values()) == 4 - len(kept)  # only the cases not on disk
    rows = read(run)
    assert facts(rows) == expected and len(rows) == 4
    # Float32 against the float64 reference on the same seeded inputs: the error is the same up to
    # the rounding of a different buffer alignment, far inside the float32 tolerance.
    for case, (rel, abs_) in errors(rows).items():
        want_rel, want_abs = errors(read(local))[case]
        assert 0 < rel < 1e-4 and 0 < abs_ < 1e-4
        assert rel == pytest.approx(want_rel, abs=1e-6) and abs_ == pytest.approx(want_abs, abs=1e-6)
    assert all(r == kept[r["case_id"]] for r in rows if r["case_id"] in kept)  # finished rows untouched
    assert all(r["host"] and r["device_name"] for r in rows)
    meta = json.loads((run / schema.META_JSON).read_text())
    assert meta["executor"] == "ray" and meta["interrupted"] is False
    assert list(meta["devices"]) == [meta["device"]["name"]]


def on_this_machine(monkeypatch: pytest.MonkeyPatch, here: bool) -> None:
    """This instance is one node on this machine: the driver forks the cases under Ray's leases.
    `here` False runs them as on a cluster of several machines, each forked by its worker."""
    from mlabench.executors import ray_exec

    monkeypatch.setattr(ray_exec, "one_node_here", lambda: here)


def test_cases_forked_by_their_workers_measure_what_the_drivers_do(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for here in (True, False):
        on_this_machine(monkeypatch, here)
        runs[here] = tmp_path / f"here-{here}"
        code, _, err = run_cli(["sweep", *SMOKE_SLICE, "--executor", "ray", "--out", str(runs[here])], capsys)
        assert code == 0, err
    by_driver, by_workers = read(runs[True]), read(runs[False])
    assert facts(by_driver) == facts(by_workers) and len(by_driver) == 4
    assert all(r["status"] == "ok" and r["host"] for r in by_driver + by_workers)
    assert errors(by_driver) == pytest.approx(errors(by_workers), abs=1e-6)


@pytest.mark.parametrize("here", [True, False], ids=["driver-forks", "workers-fork"])
def test_a_worker_lost_mid_case_is_one_error_row(here: bool, crash_backends: None, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Killing the worker that holds the case's devices ends that case alone, whoever forked it."""
    on_this_machine(monkeypatch, here)
    suite = tmp_path / "lost.toml"
    suite.write_text(LOST_SUITE)
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--executor", "ray", "--no-probe",
                            "--no-report"], capsys)
    assert code == 1, err
    rows = read(out)
    assert len(rows) == 2
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["test-kill-worker"]["status"] == "error"
    assert "Ray worker lost mid-case on node" in by_backend["test-kill-worker"]["error"]
    assert by_backend["test-kill-worker"]["host"]
    assert by_backend["eager"]["status"] == "ok"


@pytest.mark.parametrize(("args", "needle"), [
    (["--device", "cuda"], "--device cuda: the Ray cluster has no GPU"),
    (["--device", "cpu", "--ray-accelerator", "H100"], "--ray-accelerator H100: pins GPU cases"),
])
def test_a_device_the_cluster_lacks_is_refused(args: list[str], needle: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--suite", "smoke", *args, "--executor", "ray", "--out", str(tmp_path / "run")],
                           capsys)
    assert code == 2
    assert err.startswith("mlabench: error: ") and needle in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_tp_case_holds_its_ranks_in_one_placement_group(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """tp = 2 fits the instance's two CPUs in one bundle and runs sharded; tp = 4 cannot be placed:
    a skipped row saying so, not a wait without end."""
    from mlabench.executors import ray_exec

    monkeypatch.setattr(ray_exec, "PLACEMENT_WAIT_S", 2.0)
    run = tmp_path / "tp"
    code, _, err = run_cli(["sweep", "--suite", "smoke", "--device", "cpu", "--variant", "gqa", "--backend", "eager",
                            "--mode", "decode", "--seq-len", "16", "--batch", "1", "--tp", "2,4", "--budget",
                            "0.005", "--warmup", "0.001", "--min-samples", "3", "--threads", "1", "--no-probe",
                            "--no-report", "--executor", "ray", "--out", str(run)], capsys)
    assert code == 0, err
    by_tp = {r["tp"]: r for r in read(run)}
    assert by_tp["2"]["status"] == "ok" and by_tp["2"]["dist_backend"] == "gloo"
    assert by_tp["2"]["kv_cache_bytes_per_gpu_measured"] == by_tp["2"]["kv_cache_bytes_per_gpu"]
    assert by_tp["4"]["status"] == "skipped" and "no Ray node frees 4 x" in by_tp["4"]["error"]
