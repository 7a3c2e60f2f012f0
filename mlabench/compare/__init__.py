"""`mlabench compare`: the statistical regression gate between two run directories.

`stats` judges timings on raw samples, `env` refuses incomparable runs, `gate`
joins cases and gives verdicts, `render` prints them. No torch anywhere.
"""

from __future__ import annotations

from pathlib import Path

from mlabench.compare.gate import CaseResult, Comparison, GateSettings, compare_runs
from mlabench.rundir import load_run

__all__ = ["CaseResult", "Comparison", "GateSettings", "compare_paths", "compare_runs"]


def compare_paths(baseline: str | Path, candidate: str | Path, settings: GateSettings) -> Comparison:
    """Load both run directories (or results.csv files) and compare them."""
    return compare_runs(load_run(baseline), load_run(candidate), settings)
