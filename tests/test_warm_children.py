"""What keeps isolated cases cheap: a Ray worker hands cases to its fork server's children as
pickled bytes without importing torch itself, a backend's preload reaches the server only when
the plan has its cases, and torch.compile's warm-up leaves a server that may still fork safely
(no thread, no CUDA) with its per-process work done."""

from __future__ import annotations

import base64
import csv
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlabench import schema
from mlabench.executors.forkserver import run_pickled
from mlabench.executors.isolate import CASE_MODULES, DESCRIBE_IN_CHILD, case_modules
from mlabench.measure.envinfo import device_info
from mlabench.measure.peaks import measure_peaks
from mlabench.suites import load_suite
from mlabench.sweep import Overrides, plan_sweep

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is tested on Linux"),
              pytest.mark.xdist_group("processes")]

WARMUP = "mlabench.backends.inductor_warmup"


def run_python(code: str, *args: str, stdin: bytes = b"") -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], input=stdin, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def test_a_value_crosses_the_caller_as_bytes() -> None:
    outcome = run_pickled("operator:truediv", pickle.dumps((7.0, 2.0)))
    assert outcome.ok and isinstance(outcome.value, bytes)
    assert pickle.loads(outcome.value) == 3.5
    failed = run_pickled("operator:truediv", pickle.dumps((1.0, 0.0)))
    assert failed.status == "error" and "ZeroDivisionError" in failed.error


def test_a_ray_worker_describes_the_device_without_importing_torch() -> None:
    """The worker's side of `describe` in a fresh interpreter: its child measures the device;
    the worker ends with no torch and no mlabench module but the fork server and its own."""
    payload = pickle.dumps((torch.device("cpu"), ["float32"], False, 1))
    out = run_python("""
        import base64, sys
        from mlabench.executors import ray_task, ray_cluster, choice  # what a driver needs before torch
        outcome = ray_task.call_task(sys.argv[1], sys.stdin.buffer.read(), ())
        assert outcome.ok, outcome.error
        heavy = sorted(m for m in sys.modules if m.split(".")[0] == "torch"
                       or (m.startswith("mlabench.") and m not in (
                           "mlabench.executors", "mlabench.executors.forkserver", "mlabench.executors.ray_task",
                           "mlabench.executors.ray_cluster", "mlabench.executors.choice", "mlabench.errors")))
        print(heavy)
        print(base64.b64encode(outcome.value).decode())
    """, DESCRIBE_IN_CHILD, stdin=payload)
    imported, value = out.strip().splitlines()
    assert imported == "[]"
    device, peaks = pickle.loads(base64.b64decode(value))
    assert device == device_info(torch.device("cpu"))  # this machine's fingerprint, measured in the child
    assert peaks == measure_peaks(torch.device("cpu"), ["float32"], False)


def test_a_backends_preload_reaches_the_server_only_with_its_cases() -> None:
    plan = plan_sweep(load_suite("smoke"), torch.device("cpu"),
                      Overrides(axes={"variant": ["mha", "gqa"], "backend": ["eager", "compiled"]}))
    compiled = [c for c in plan.cases if c.backend == "compiled"]
    eager = [c for c in plan.cases if c.backend == "eager"]
    assert len(compiled) >= 2 and eager
    assert case_modules(eager) == CASE_MODULES
    assert case_modules(eager + compiled) == (*CASE_MODULES, WARMUP)


def test_the_compile_warmup_leaves_a_server_that_may_fork() -> None:
    """Importing it does the once-per-process work (the vector-ISA probe is cached) and neither
    starts a thread nor touches CUDA: any CUDA entry point raises here."""
    out = run_python(f"""
        import os, torch
        def refuse(*a, **k):
            raise AssertionError("CUDA touched")
        torch.cuda._lazy_init = torch.cuda.init = torch.cuda.device_count = torch.cuda.is_available = refuse
        threads = sorted(os.listdir("/proc/self/task"))
        import {WARMUP}
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list
        assert sorted(os.listdir("/proc/self/task")) == threads, "a thread was started"
        assert not torch.cuda.is_initialized()
        print(valid_vec_isa_list.cache_info().currsize)
    """)
    assert int(out.strip()) == 1


def test_an_isolated_compiled_case_compiles_in_a_warm_child(tmp_path: Path) -> None:
    """A compiled case under --isolate: the server preloads the warm-up, the child compiles and
    times the step, and the row matches the float64 reference."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "mlabench", "sweep", "--suite", "smoke", "--device", "cpu",
                           "--variant", "mha", "--backend", "compiled", "--mode", "decode", "--seq-len", "16",
                           "--batch", "1", "--budget", "0.005", "--warmup", "0.001", "--min-samples", "3",
                           "--no-probe", "--no-report", "--isolate", "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / schema.RESULTS_CSV).open()))
    assert rows and all(r["status"] == "ok" and float(r["compile_ms"]) > 0 for r in rows)
    assert all(0 < float(r["rel_err"]) < 1e-4 for r in rows)
