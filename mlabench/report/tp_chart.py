"""The report's tensor-parallel chart: what one GPU holds, and what the step costs, against the
number of ranks N.

Left: KV-cache bytes per token per layer on one GPU, measured on the ranks' cache tensors
(solid, markers) over the per-GPU formula (dashed): MLA's latent stays whole on every GPU
while GQA's KV heads, GTA's tied heads and GLA's latent heads split until N reaches their
group count. Right: the step's median latency (solid, the slowest rank) and the all-reduce of
its output alone (dotted), for one backend and mode. Drawn only for a run with tp > 1 rows.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlabench.report.charts import Chart, distinct_colors, natural_key

TITLE = "Tensor parallelism: per-GPU KV cache and step latency vs ranks"
DESCRIPTION = ("Left: KV-cache bytes per token per layer that one GPU holds with the heads split over N ranks, "
               "measured on each rank's cache tensors (solid; at N = 1 the unsharded cache) over the per-GPU "
               "formula (dashed), which must agree on every ok row. Right: the step's median latency, the slowest "
               "rank from a common start (solid), and the all-reduce of the step's output timed alone (dotted): "
               "their ratio is the row's comm_share. On a CPU the ranks are processes sharing its cores, so "
               "latency at N above the core count measures contention, not scaling.")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & df["kv_cache_bytes_per_gpu"].notna()]
    return ok[ok["context"].fillna("").astype(str).eq("")] if "context" in ok.columns else ok


def _pick(rows: pd.DataFrame, column: str) -> str:
    """The most common value of `column` (a chart of one backend and one mode)."""
    return str(rows[column].value_counts().index[0])


def tp_chart(df: pd.DataFrame) -> Chart | None:
    if "tp" not in df.columns or not (pd.to_numeric(df["tp"], errors="coerce") > 1).any():
        return None
    ok = _ok(df)
    if ok.empty:
        return Chart("chart-tp", TITLE, DESCRIPTION, note="No ok tensor-parallel rows to draw.")
    mode = "decode" if (ok["mode"] == "decode").any() else _pick(ok, "mode")
    rows = ok[ok["mode"] == mode]
    backend = _pick(rows, "backend")
    rows = rows[rows["backend"] == backend].assign(series=lambda r: r["model"].astype(str) + " " + r["variant"])
    tokens = rows["batch"] * rows["seq_len"]
    measured = rows["kv_cache_bytes_per_gpu_measured"].where(rows["tp"] > 1, rows["kv_cache_bytes_measured"])
    rows = rows.assign(measured=measured / tokens, analytic=rows["kv_cache_bytes_per_gpu"] / tokens)
    rows = rows.sort_values("tp").drop_duplicates(["series", "tp"])
    order = sorted(rows["series"].unique(), key=natural_key)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"KV cache per GPU ({mode}, {backend})",
                                                        f"step and all-reduce ({mode}, {backend})"))
    for series, color in zip(order, distinct_colors(len(order)), strict=True):
        s = rows[rows["series"] == series]
        shown = dict(legendgroup=series, marker_color=color, line_color=color)
        fig.add_trace(go.Scatter(x=s["tp"], y=s["measured"], name=series, mode="lines+markers", **shown), 1, 1)
        fig.add_trace(go.Scatter(x=s["tp"], y=s["analytic"], name=f"{series} (formula)", mode="lines",
                                 line_dash="dash", showlegend=False, **shown), 1, 1)
        fig.add_trace(go.Scatter(x=s["tp"], y=s["latency_ms"], name=f"{series} step", mode="lines+markers",
                                 showlegend=False, **shown), 1, 2)
        comm = s[s["tp"] > 1]
        fig.add_trace(go.Scatter(x=comm["tp"], y=comm["comm_ms"], name=f"{series} all-reduce", mode="lines+markers",
                                 line_dash="dot", marker_symbol="circle-open", showlegend=False, **shown), 1, 2)
    ticks = sorted({int(v) for v in rows["tp"]})
    fig.update_xaxes(title_text="ranks N (tp)", type="log", tickvals=ticks, ticktext=[str(t) for t in ticks])
    fig.update_yaxes(title_text="bytes per token per layer per GPU", type="log", row=1, col=1)
    fig.update_yaxes(title_text="ms (median)", type="log", row=1, col=2)
    fig.update_layout(template="plotly_white", height=460, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(title_text="", font=dict(size=11)), hovermode="closest")
    return Chart("chart-tp", TITLE, DESCRIPTION, fig)
