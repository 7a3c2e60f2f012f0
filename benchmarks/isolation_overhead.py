"""What running cases isolated costs: the same sweep in-process, `--isolate` and on Ray.

Whole runs (the default): each executor runs the same cases in its own `mlabench sweep` process,
timed whole, back to back; `--repeat N` alternates them N times. Printed: each run's wall time,
and per executor the median ratio to the in-process run of the same round and the overhead per
case ((wall - in-process wall) / cases). The ratio is what to read on a busy machine: the runs
of a round share whatever else loads it. With `ray` among the executors, each round also times
a bare local Ray instance started, given one task and stopped (what any Ray run pays before and
after its cases, mlabench or not), and prints the Ray ratio without it.

`--per-case`: in this one process, each case runs in-process and then isolated, alternately,
after the fork server has started (its start is timed on its own): the cost of isolation per
case, apart from the one-time start that a whole run pays.

    python benchmarks/isolation_overhead.py                       # the smoke suite's mha and mla-absorbed cases
    python benchmarks/isolation_overhead.py --repeat 3 --executors local,ray
    python benchmarks/isolation_overhead.py --per-case
    python benchmarks/isolation_overhead.py -- --device cpu --variant mha --backend eager

Arguments after `--` replace the default case selection in every sweep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CASES = ["--device", "cpu", "--variant", "mha,mla-absorbed"]
FIXED = ["--no-report", "--no-probe", "--json"]


def timed_sweep(executor: str, cases: list[str], out: Path) -> tuple[float, int]:
    """Wall seconds of one whole sweep process and its case count."""
    command = [sys.executable, "-m", "mlabench", "sweep", *cases, *FIXED, "--executor", executor, "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some case failed, the sweep itself ran
        sys.exit(f"{executor}: exit {done.returncode}\n{done.stderr[-2000:]}")
    counts = json.loads(done.stdout)["status_counts"]
    print(f"  {executor:8s} {wall:7.1f} s  {counts}", flush=True)
    return wall, sum(counts.values())


# A local Ray instance over this machine's CPUs, one trivial task, stopped: Ray's own fixed cost.
BARE_RAY = """
import logging, os, ray
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
ray.get(ray.remote(lambda: 0).remote())
ray.shutdown()
"""


def timed_bare_ray() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_RAY], check=True, capture_output=True)
    wall = time.perf_counter() - started
    print(f"  {'bare ray':8s} {wall:7.1f} s  (start, one task, stop)", flush=True)
    return wall


def whole_runs(executors: list[str], cases: list[str], repeat: int) -> None:
    walls: dict[str, list[float]] = {e: [] for e in executors}
    bare: list[float] = []
    n = 0
    with tempfile.TemporaryDirectory(prefix="mlabench-isolation-") as tmp:
        for round_ in range(repeat):
            print(f"round {round_ + 1}/{repeat}", flush=True)
            for executor in executors:
                wall, n = timed_sweep(executor, cases, Path(tmp) / f"{executor}-{round_}")
                walls[executor].append(wall)
            if "ray" in executors:
                bare.append(timed_bare_ray())
    base = executors[0]
    print(f"\n{n} cases; base {base}: median {statistics.median(walls[base]):.1f} s")
    for executor in executors[1:]:
        ratios = [w / b for w, b in zip(walls[executor], walls[base], strict=True)]
        overheads = [(w - b) / n for w, b in zip(walls[executor], walls[base], strict=True)]
        print(f"{executor:8s} ratio median {statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"
              f"   overhead per case median {statistics.median(overheads):+.2f} s")
    if bare:
        beyond = [(w - r) / b for w, r, b in zip(walls["ray"], bare, walls[base], strict=True)]
        print(f"bare Ray start and stop median {statistics.median(bare):.1f} s; ray without it, ratio median "
              f"{statistics.median(beyond):.2f} ({', '.join(f'{r:.2f}' for r in beyond)})")


def _ready() -> int:
    return 0


def per_case(cases: list[str]) -> None:
    """Each case in-process, then isolated, after the server has started."""
    import torch

    from mlabench.cli.app import main as cli_main  # noqa: F401  (the CLI's imports, as in a sweep)
    from mlabench.executors.forkserver import run_isolated
    from mlabench.executors.isolate import isolate_case, warm_server
    from mlabench.runner import run_case
    from mlabench.suites import load_suite
    from mlabench.sweep import Overrides, plan_sweep, run_context

    args = dict(zip(cases[::2], cases[1::2], strict=False))
    axes = {k.lstrip("-").replace("-", "_"): v.split(",") for k, v in args.items() if k not in ("--device", "--suite")}
    plan = plan_sweep(load_suite(args.get("--suite", "smoke")), torch.device(args.get("--device", "cpu")),
                      Overrides(axes=axes), Path(tempfile.gettempdir()) / "unused")
    ctx = run_context(plan, probe=False)
    started = time.perf_counter()
    warm_server()
    assert run_isolated(_ready).ok
    print(f"fork server start (imports torch and mlabench once): {time.perf_counter() - started:.1f} s")
    local = isolated = 0.0
    for case in plan.cases:
        a = time.perf_counter()
        run_case(case, ctx)
        b = time.perf_counter()
        isolate_case(case, ctx)
        c = time.perf_counter()
        local, isolated = local + b - a, isolated + c - b
    n = len(plan.cases)
    print(f"{n} cases: in-process {local:.1f} s, isolated {isolated:.1f} s, ratio {isolated / local:.2f}, "
          f"overhead per case {(isolated - local) / n:+.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", default="local,isolate,ray", help="comma-separated; the first is the base")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of whole runs, executors alternating")
    parser.add_argument("--per-case", action="store_true", help="in-process and isolated alternately, per case")
    parser.add_argument("sweep_args", nargs="*", help="after --: case selection for every sweep")
    args = parser.parse_args()
    cases = args.sweep_args or DEFAULT_CASES
    if args.per_case:
        per_case(cases)
    else:
        whole_runs(args.executors.split(","), cases, args.repeat)


if __name__ == "__main__":
    main()
