"""What `mlabench frontier` shows: the plan (B_max per variant and context) and, after the run,
tokens per second per GPU with the winner at each context, as a table or one JSON document."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from mlabench.cli.common import clean_for_json, err_console, human_bytes, out_console, print_json


def _rate(v: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.3g}"


def _batch(point: Any) -> str:
    return "-" if point.max_batch == 0 else f"{point.max_batch}{'+' if point.capped else ''}"


def _title(plan: Any) -> str:
    tp = f", tp {plan.tp}" if plan.tp > 1 else ""
    layout = f", {plan.cache_layout}" if plan.cache_layout else ""
    reserve = f" - {human_bytes(plan.reserve_bytes)} reserve" if plan.reserve_bytes else ""
    return (f"{plan.model}, {plan.layers} layers, cache {plan.kv_dtype}{layout}{tp}: KV budget "
            f"{human_bytes(plan.memory_bytes)}{reserve} = {human_bytes(plan.budget_bytes)} per GPU")


def _grid(plan: Any, title: str, cell: Callable[[Any], str]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("variant")
    for t in plan.contexts:
        table.add_column(f"T={t:,}", justify="right")
    for variant in dict.fromkeys(p.variant for p in plan.points):
        table.add_row(variant, *(cell(p) for p in plan.points if p.variant == variant))
    return table


def print_plan(plan: Any, as_json: bool, swept: Any) -> None:
    """The planned batch per point; with `swept` (a dry run), also the estimate and the cases."""
    if as_json:
        doc: dict[str, Any] = {"plan": plan.as_dict()}
        if swept is not None:
            from mlabench.estimate import estimate_sweep

            est = estimate_sweep(swept.cases, swept.settings, swept.device.type, None, frozenset())
            doc.update(cases=len(swept.cases), estimate=est.as_dict())
        print_json(doc)
        return
    console = out_console if swept is not None else err_console
    console.print(_grid(plan, f"B_max, the largest batch that fits ({_title(plan)}; + = capped at "
                              f"{plan.max_batch})", _batch))
    for p in plan.points:
        if p.reason and (p.max_batch or p.context == plan.contexts[0]):
            console.print(f"  [dim]{p.variant} T={p.context:,}: {p.reason}[/]", soft_wrap=True)
    if swept is not None:
        from mlabench.cli.sweep_view import print_estimate

        print_estimate(swept, False)


def summary_printer(plan: Any) -> Callable[[Any, Path | None, bool], None]:
    """The end of a frontier run: tokens/s per GPU per point and the winner at each context."""

    def summary(outcome: Any, report_path: Path | None, as_json: bool) -> None:
        from mlabench.frontier.table import CAVEAT, frontier_rows, winners
        from mlabench.rundir import load_run

        rows = frontier_rows(plan, load_run(outcome.out_dir, samples=False).results)
        best = winners(rows)
        counts = dict(outcome.status_counts)
        if as_json:
            print_json(clean_for_json({"run_dir": str(outcome.out_dir), "report": str(report_path) if report_path
                                       else None, "interrupted": outcome.interrupted, "status_counts": counts,
                                       "plan": plan.as_dict(), "frontier": [r.__dict__ for r in rows],
                                       "winners": {t: r.variant for t, r in best.items()}, "caveat": CAVEAT}))
            return
        by_point = {(r.variant, r.context): r for r in rows}

        def cell(p: Any) -> str:
            r = by_point[(p.variant, p.context)]
            if r.tokens_per_s is None:
                return r.status if r.status != "no fit" else "-"
            star = "[bold green]*[/]" if best.get(r.context) is r else ""
            return f"{star}{_rate(r.tokens_per_s)} ({_batch(p)})"

        out_console.print(_grid(plan, f"attention tokens/s per GPU (B_max), {_title(plan)}", cell))
        out_console.print(f"[dim]{CAVEAT}; * the winner at that context[/]", soft_wrap=True)
        for t, r in best.items():
            out_console.print(f"  T={t:,}: {r.variant} ({r.backend}) {_rate(r.tokens_per_s or 0)} tokens/s at batch "
                              f"{r.max_batch}, step {r.step_ms:.3g} ms")
        out_console.print(f"results: {outcome.out_dir}" + (f"\nreport:  {report_path}" if report_path else ""))

    return summary


__all__ = ["print_plan", "summary_printer"]
