"""What running cases isolated costs: the same sweep in-process, `--isolate` and Ray, timed whole.

Each executor runs the same cases back to back, each in its own `mlabench sweep` process, and
the script prints each one's wall time, its ratio to the in-process run and the overhead per
case ((wall - in-process wall) / cases). The ratio is what to read on a busy machine: the runs
share whatever else loads it, one after another.

    python benchmarks/isolation_overhead.py                       # the smoke suite's mha and mla-absorbed cases
    python benchmarks/isolation_overhead.py --executors local,isolate -- --backend eager,sdpa

Arguments after `--` go to every sweep (they narrow or replace the default case selection).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CASES = ["--device", "cpu", "--variant", "mha,mla-absorbed"]
FIXED = ["--no-report", "--no-probe", "--json"]


def timed_sweep(executor: str, cases: list[str], out: Path) -> tuple[float, int, dict[str, int]]:
    """Wall seconds of one whole sweep process, its case count and status counts."""
    command = [sys.executable, "-m", "mlabench", "sweep", *cases, *FIXED, "--executor", executor, "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some case failed, the sweep itself ran
        sys.exit(f"{executor}: exit {done.returncode}\n{done.stderr[-2000:]}")
    counts = json.loads(done.stdout)["status_counts"]
    return wall, sum(counts.values()), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", default="local,isolate,ray", help="comma-separated; the first is the base")
    parser.add_argument("sweep_args", nargs="*", help="after --: case selection for every sweep")
    args = parser.parse_args()
    cases = args.sweep_args or DEFAULT_CASES
    executors = args.executors.split(",")
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlabench-isolation-") as tmp:
        for executor in executors:
            results[executor] = timed_sweep(executor, cases, Path(tmp) / executor)
            wall, n, counts = results[executor]
            print(f"{executor:8s} {wall:7.1f} s  {n} cases  {counts}", flush=True)
    base_wall, base_n, _ = results[executors[0]]
    print(f"\nbase: {executors[0]} ({base_n} cases, {base_wall:.1f} s)")
    for executor in executors[1:]:
        wall, n, _ = results[executor]
        print(f"{executor:8s} ratio {wall / base_wall:5.2f}   overhead per case {(wall - base_wall) / n:+6.2f} s")


if __name__ == "__main__":
    main()
