"""Which per-GPU cache formulas a measured tensor-parallel run has confirmed.

A run's ok rows at tp = N hold each rank's measured cache bytes beside the per-GPU formula
(they must agree on an ok row); a variant whose rows at N agree is confirmed at N, on the
models it ran. `mlabench kv --tp N` says so beside its analytic figures, reading a run
directory given to it or, by default, the newest `tp` suite run under results/runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlabench.rundir import load_run

RUNS = Path("results") / "runs"


def newest_tp_run(root: Path = RUNS) -> Path | None:
    """The newest run directory of the tp suite under `root` (their names start with a UTC stamp)."""
    runs = sorted(p for p in root.glob("*-tp-*") if (p / "results.csv").is_file()) if root.is_dir() else []
    return runs[-1] if runs else None


def confirmed_variants(run_dir: Path, tp: int) -> dict[str, list[str]]:
    """variant -> the models on which its measured per-GPU cache equalled the formula at degree tp."""
    df = load_run(run_dir).results
    if "kv_cache_bytes_per_gpu_measured" not in df.columns:
        return {}
    rows = df[(df["status"] == "ok") & (pd.to_numeric(df["tp"], errors="coerce") == tp)]
    agree = rows[rows["kv_cache_bytes_per_gpu_measured"] == rows["kv_cache_bytes_per_gpu"]]
    return {variant: sorted(group["model"].astype(str).unique()) for variant, group in agree.groupby("variant")}
