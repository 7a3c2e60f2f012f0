"""The report's serving frontier: attention tokens per second per GPU against context, one line per
variant, each point at the largest batch whose KV cache fits the run's budget (B_max in the
hover), and a table of the winner at each context. Drawn only for a `mlabench frontier` run
(its plan, frontier.json, beside the rows)."""

from __future__ import annotations

from html import escape

import pandas as pd
import plotly.graph_objects as go

from mlabench.frontier.record import FrontierPlan
from mlabench.frontier.table import CAVEAT, frontier_rows, winners
from mlabench.report.charts import Chart, distinct_colors
from mlabench.report.tables import human_bytes

TITLE = "Serving frontier: attention tokens/s per GPU vs context"


def _description(plan: FrontierPlan) -> str:
    tp = f" at tensor-parallel degree {plan.tp}" if plan.tp > 1 else ""
    return (f"Each point: one decode step of one layer of {plan.model} at the largest batch B_max whose whole-model "
            f"KV cache ({plan.kv_dtype}, {plan.layers} layers) fits {human_bytes(plan.budget_bytes)} per GPU{tp}, "
            f"capped at {plan.max_batch}; the fastest ok backend's median. tokens/s per GPU = B_max / (tp x layers x "
            f"step latency). Attention layers only: MLP and MoE time are not in it. A smaller cache holds more "
            f"sequences, which is the whole of its advantage here.")


def frontier_chart(plan: FrontierPlan, results: pd.DataFrame) -> Chart:
    rows = [r for r in frontier_rows(plan, results) if r.tokens_per_s is not None]
    if not rows:
        return Chart("chart-frontier", TITLE, _description(plan), note="No point was measured ok.")
    variants = list(dict.fromkeys(r.variant for r in rows))
    fig = go.Figure()
    for variant, color in zip(variants, distinct_colors(len(variants)), strict=True):
        mine = [r for r in rows if r.variant == variant]
        fig.add_trace(go.Scatter(
            x=[r.context for r in mine], y=[r.tokens_per_s for r in mine], name=variant, mode="lines+markers",
            line_color=color, marker_color=color,
            customdata=[[r.max_batch, r.backend, r.step_ms, human_bytes(r.kv_bytes_per_gpu)] for r in mine],
            hovertemplate=(f"{escape(variant)}<br>context %{{x:,}} tokens<br>%{{y:,.4g}} tokens/s per GPU<br>"
                           "B_max %{customdata[0]} (%{customdata[3]} of KV per GPU)<br>"
                           "%{customdata[1]}: step %{customdata[2]:.4g} ms<extra></extra>")))
    fig.update_layout(xaxis=dict(type="log", title="context (tokens)", tickvals=list(plan.contexts)),
                      yaxis=dict(type="log", title="attention tokens/s per GPU"), legend_title_text="variant",
                      margin=dict(t=30))
    missing = [f"{r.variant} T={r.context:,} ({r.status})" for r in frontier_rows(plan, results)
               if r.tokens_per_s is None]
    note = f"Not drawn: {'; '.join(missing)}." if missing else ""
    return Chart("chart-frontier", TITLE, _description(plan), fig, note)


def winners_table(plan: FrontierPlan, results: pd.DataFrame) -> str:
    """One row per context: the variant with the most tokens/s, its batch, backend and step."""
    best = winners(frontier_rows(plan, results))
    body = "".join(
        f"<tr><td data-v=\"{t}\">{t:,}</td><td>{escape(r.variant)}</td><td>{escape(str(r.backend))}</td>"
        f"<td>{r.max_batch}{'+' if r.capped else ''}</td><td>{r.step_ms:.4g}</td><td>{r.tokens_per_s:,.0f}</td></tr>"
        for t, r in best.items())
    head = "".join(f"<th>{h}</th>" for h in ("context", "winner", "backend", "B_max", "step ms", "tokens/s per GPU"))
    return (f'<table class="claims"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f'<p class="note">{escape(CAVEAT)}.</p>')


__all__ = ["frontier_chart", "winners_table"]
