"""Which way a case runs: in this process (tp = 1) or on its tensor-parallel ranks (tp > 1).

The executors call `run_any_case` where they used to call `runner.run_case`, so a tp case is
run sharded whichever executor holds it (the ranks are processes of their own already).
"""

from __future__ import annotations

import sys

from mlabench.case import Case
from mlabench.runner import CaseResult, RunContext, run_case


def run_any_case(case: Case, ctx: RunContext) -> CaseResult:
    if case.tp == 1:
        return run_case(case, ctx)
    from mlabench.tp.pool import run_tensor_parallel  # torch.distributed, only for sharded cases

    return run_tensor_parallel(case, ctx)


def close_rank_groups() -> None:
    """Stop the rank groups the sweep started (none unless a tp > 1 case ran)."""
    pool = sys.modules.get("mlabench.tp.pool")
    if pool is not None:
        pool.close_groups()
