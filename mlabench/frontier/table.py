"""The frontier's results: the measured rows joined with the plan, tokens per second per GPU.

tokens/s per GPU = B_max / (tp x L x step latency). One decode step of one layer moves every
one of B_max sequences by one token in one layer; a token needs all L layers; the tp GPUs of a
tensor-parallel group serve the same B_max sequences together. At tp = 1 that is B_max / (L x
latency). It bounds what the attention layers alone allow: MLP and MoE time are not in it.

Pandas only (no torch): the report and the CLI both read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from mlabench.frontier.record import FrontierPlan, FrontierPoint

CAVEAT = ("attention layers only: tokens/s = B_max / (tp x layers x one layer's decode step), an upper bound "
          "set by attention; MLP and MoE time are not in it")


@dataclass(frozen=True)
class FrontierRow:
    """One point of the frontier: the plan's B_max and, when measured, its fastest ok backend."""

    variant: str
    context: int
    max_batch: int
    capped: bool
    kv_bytes_per_gpu: int
    backend: str | None  # the fastest backend with an ok row; None when none measured ok
    step_ms: float | None  # that backend's median step latency (one layer)
    tokens_per_s: float | None  # per GPU, attention-bound
    status: str  # ok, or what kept the point from a figure: no fit, a failed row's status, not run
    note: str = ""


def tokens_per_s(max_batch: int, step_ms: float, layers: int, tp: int = 1) -> float:
    """Attention tokens per second per GPU of one decode step of one layer at `max_batch` sequences."""
    return max_batch / (tp * layers * step_ms / 1e3)


def _measured(point: FrontierPoint, rows: pd.DataFrame, plan: FrontierPlan) -> FrontierRow:
    mine = rows[(rows["variant"] == point.variant) & (rows["seq_len"] == point.context)
                & (rows["batch"] == point.max_batch)]
    base = dict(variant=point.variant, context=point.context, max_batch=point.max_batch, capped=point.capped,
                kv_bytes_per_gpu=point.kv_bytes_per_gpu)
    ok = mine[(mine["status"] == "ok") & mine["latency_ms"].notna()]
    if ok.empty:
        status = str(mine["status"].iloc[0]) if not mine.empty else "not run"
        note = str(mine["error"].iloc[0]) if not mine.empty and "error" in mine and pd.notna(mine["error"].iloc[0]) \
            else ""
        return FrontierRow(**base, backend=None, step_ms=None, tokens_per_s=None, status=status, note=note)
    best = ok.loc[ok["latency_ms"].idxmin()]
    step_ms = float(best["latency_ms"])
    return FrontierRow(**base, backend=str(best["backend"]), step_ms=step_ms,
                       tokens_per_s=tokens_per_s(point.max_batch, step_ms, plan.layers, plan.tp), status="ok")


def frontier_rows(plan: FrontierPlan, results: pd.DataFrame) -> list[FrontierRow]:
    """Every planned point, in plan order (variant, then context), with its figure where measured."""
    rows = results[results["suite"] == "frontier"] if "suite" in results.columns else results
    out = []
    for point in plan.points:
        if not point.measured:
            out.append(FrontierRow(point.variant, point.context, point.max_batch, point.capped, point.kv_bytes_per_gpu,
                                   None, None, None, "no fit" if point.max_batch == 0 else "no backend",
                                   point.reason))
        else:
            out.append(_measured(point, rows, plan))
    return out


def winners(rows: list[FrontierRow]) -> dict[int, FrontierRow]:
    """At each context, the row with the most tokens per second (contexts with no figure left out)."""
    best: dict[int, FrontierRow] = {}
    for row in rows:
        if row.tokens_per_s is None or not math.isfinite(row.tokens_per_s):
            continue
        if row.context not in best or row.tokens_per_s > best[row.context].tokens_per_s:  # type: ignore[operator]
            best[row.context] = row
    return dict(sorted(best.items()))


__all__ = ["CAVEAT", "FrontierRow", "frontier_rows", "tokens_per_s", "winners"]
