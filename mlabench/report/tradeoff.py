"""The design question in one picture and one table: KV-cache bytes per token against latency.

`tradeoff_chart` puts every variant x backend of a model and mode at one context
on memory-vs-time axes and marks the Pareto front (the designs nothing beats on
both). `headline_table` is the page's first table: per variant, its KV bytes per
token, the fastest backend and its latency at each context, and both as ratios
to MHA. Both pick one batch per model and mode, where the most pairs ran.

What the cache stores is part of the design: the chart gives each cache kind (`cache_kind`:
the cache dtype, FP8 or not, and the cache layout where a run records one) its own marker
shape, and the table its own rows, so an FP8 cache sits beside the same variant unquantized.
"""

from __future__ import annotations

import math
from html import escape

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlabench.report.charts import Chart, _colors, _log_ticks, _style, natural_key, ok_rows
from mlabench.report.tables import human_bytes
from mlabench.rundir import series_labels

# Marker shapes per cache kind, in order of first use (the compute dtype's kinds come first).
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "star", "x", "hexagon", "cross")


def cache_kind(rows: pd.DataFrame) -> pd.Series:
    """What each row's cache stores and how: its `kv_dtype` (the dtype for runs without the column),
    then its `cache_layout` where the run has that column ('fp8_e4m3', 'bfloat16 paged')."""
    dtype = rows["dtype"].astype(str)
    kind = rows["kv_dtype"].astype(str).where(rows["kv_dtype"].astype(str) != "", dtype) \
        if "kv_dtype" in rows.columns else dtype
    if "cache_layout" in rows.columns:
        layout = rows["cache_layout"].fillna("").astype(str)
        kind = kind.where(layout == "", kind + " " + layout)
    return kind


def _symbols(kinds: pd.Series, dtypes: pd.Series) -> dict[str, str]:
    """Kind -> marker shape: unquantized contiguous caches first, then the rest by name."""
    order = sorted(kinds.unique(), key=lambda k: (k not in set(dtypes), natural_key(k)))
    return {k: SYMBOLS[i % len(SYMBOLS)] for i, k in enumerate(order)}


def kv_per_token(rows: pd.DataFrame) -> pd.Series:
    """KV-cache bytes per cached token (one layer): the analytic bytes over batch x seq_len."""
    return rows["kv_cache_bytes"] / (rows["batch"] * rows["seq_len"])


def headline_context(rows: pd.DataFrame) -> tuple[int, int]:
    """(batch, seq_len) where the most variant x backend pairs ran: longest context, then smallest batch."""
    counts = rows.groupby(["batch", "seq_len"]).size().reset_index(name="n")
    best = counts.sort_values(["n", "seq_len", "batch"], ascending=[False, False, True]).iloc[0]
    return int(best["batch"]), int(best["seq_len"])


def pareto_front(x: pd.Series, y: pd.Series) -> pd.Series:
    """True where no other point is at least as small on both axes and smaller on one (both minimised)."""
    order = sorted(range(len(x)), key=lambda i: (x.iloc[i], y.iloc[i]))
    front = pd.Series(False, index=x.index)
    best = math.inf
    for i in order:
        if y.iloc[i] < best:
            front.iloc[i] = True
            best = y.iloc[i]
    return front


def tradeoff_chart(df: pd.DataFrame) -> Chart:
    """KV bytes per token against latency, one panel per model and mode, the Pareto front marked."""
    chart = Chart("chart-tradeoff", "Trade-off: KV-cache bytes per token vs latency",
                  "Every variant x backend at one context per model and mode (the batch and sequence length "
                  "where most of them ran). Lower-left is better on both; the line joins the Pareto front, "
                  "the designs no other design beats on both memory and time. The marker's shape is what the "
                  "cache stores (its dtype, FP8 or not, and its layout where the run records one); FP8 bytes "
                  "count their scales.")
    ok = ok_rows(df)
    ok = ok[ok["kv_cache_bytes"].notna() & (ok["kv_cache_bytes"] > 0)]
    if ok.empty:
        return Chart(chart.id, chart.title, chart.description, note="No ok row records both KV bytes and latency.")
    panels = []
    for (model, mode), rows in ok.groupby(["model", "mode"], sort=True):
        batch, seq = headline_context(rows)
        at = rows[(rows["batch"] == batch) & (rows["seq_len"] == seq)]
        at = at.assign(kv_token=kv_per_token(at), kind=cache_kind(at),
                       series=series_labels(at, exclude=("seq_len", "mode", "batch", "model", "q_len")))
        # One point per series: several rows of a series at one context (q_len, ...) keep the fastest.
        at = at.sort_values("latency_ms").drop_duplicates("series")
        panels.append((f"{model}, {mode} (batch {batch}, seq_len {seq})", at.assign(front=pareto_front(
            at["kv_token"], at["latency_ms"]))))
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[t for t, _ in panels], vertical_spacing=0.12
                        if len(panels) > 1 else 0.0)
    colors = _colors(pd.concat([p["series"] for _, p in panels]))
    every = pd.concat([p for _, p in panels])
    symbols = _symbols(every["kind"], every["dtype"].astype(str))
    shown: set[str] = set()
    for i, (_, at) in enumerate(panels, start=1):
        for label, g in at.groupby("series", sort=True):
            fig.add_trace(go.Scatter(
                x=g["kv_token"], y=g["latency_ms"], mode="markers", name=label, legendgroup=label,
                showlegend=label not in shown, marker=dict(color=colors[label], size=11,
                                                           symbol=[symbols[k] for k in g["kind"]],
                                                           line=dict(width=2, color="#1f2328") if g["front"].any()
                                                           else dict(width=0)),
                customdata=g[["case_id", "kind"]], hovertemplate=f"{label}<br>cache %{{customdata[1]}}"
                "<br>%{x:.4g} B/token<br>%{y:.4g} ms<br>%{customdata[0]}<extra></extra>"), row=i, col=1)
            shown.add(label)
        front = at[at["front"]].sort_values("kv_token")
        fig.add_trace(go.Scatter(x=front["kv_token"], y=front["latency_ms"], mode="lines", line_shape="hv",
                                 name="Pareto front", legendgroup="front", showlegend=i == 1,
                                 line=dict(color="#1f2328", dash="dot", width=1.5), hoverinfo="skip"), row=i, col=1)
        fig.update_xaxes(type="log", title_text="KV cache per token, one layer (bytes, as stored)", row=i, col=1,
                         **_log_ticks(at["kv_token"], si=True))
        fig.update_yaxes(type="log", title_text="latency (ms)", row=i, col=1, **_log_ticks(at["latency_ms"]))
    if len(symbols) > 1:  # a legend entry per marker shape: which cache kind it is
        for kind, symbol in symbols.items():
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"cache: {kind}",
                                     legendgroup=f"cache-{kind}", marker=dict(symbol=symbol, size=11, color="#8c959f"),
                                     hoverinfo="skip"), row=1, col=1)
    return Chart(chart.id, chart.title, chart.description, _style(fig, max(420, 360 * len(panels))))



def _ratio(reference: float | None, value: float) -> str:
    """reference / value, e.g. MHA's latency over a variant's: above 1 means the variant does better."""
    if reference is None or not value or not math.isfinite(value) or not math.isfinite(reference):
        return ""
    return f"{reference / value:.2f}x"


def headline_table(df: pd.DataFrame) -> str:
    """Per model and mode: one row per variant with KV bytes/token, best backend and latency per seq_len."""
    ok = ok_rows(df)
    ok = ok[ok["kv_cache_bytes"].notna()]
    if ok.empty:
        return '<p class="empty">No ok row with KV bytes and latency.</p>'
    parts = []
    for (model, mode), rows in ok.groupby(["model", "mode"], sort=True):
        batch, _ = headline_context(rows)
        rows = rows[rows["batch"] == batch].assign(kv_token=lambda r: kv_per_token(r))
        kinds = cache_kind(rows)
        if kinds.nunique() > 1:  # one row per variant and cache kind: an FP8 cache is another design
            rows = rows.assign(variant=rows["variant"].where(kinds == rows["dtype"].astype(str),
                                                             rows["variant"] + " (" + kinds + ")"))
        seqs = sorted(rows["seq_len"].unique())
        best = rows.sort_values("latency_ms").drop_duplicates(["variant", "seq_len"]).set_index(["variant", "seq_len"])
        variants = sorted(rows["variant"].unique(), key=natural_key)
        mha_kv = rows.loc[rows["variant"] == "mha", "kv_token"].min() if "mha" in variants else None
        # Both ratios read as the speedup chart does: above 1 is better than MHA (smaller, faster).
        kv_help = "MHA's KV bytes per token / this variant's: above 1 is a smaller cache"
        speed_help = "MHA's best latency / this variant's best, same seq_len: above 1 is faster (as the speedup chart)"
        head = (f'<th>variant</th><th>KV bytes/token</th><th title="{kv_help}">KV smaller than MHA</th>'
                + "".join(f'<th>seq_len {int(s)}: best backend</th><th>ms</th>'
                          f'<th title="{speed_help}">speedup vs MHA</th>' for s in seqs))
        body = []
        for v in variants:
            kv = float(rows.loc[rows["variant"] == v, "kv_token"].min())
            cells = [f"<td>{escape(v)}</td>", f'<td class="num">{escape(human_bytes(kv))}</td>',
                     f'<td class="num">{_ratio(mha_kv, kv)}</td>']
            for s in seqs:
                if (v, s) not in best.index:
                    cells += ["<td>-</td>", "<td></td>", "<td></td>"]
                    continue
                r = best.loc[(v, s)]
                ref = float(best.loc[("mha", s), "latency_ms"]) if ("mha", s) in best.index else None
                cells += [f"<td>{escape(str(r['backend']))}</td>", f'<td class="num">{r["latency_ms"]:.4g}</td>',
                          f'<td class="num">{_ratio(ref, float(r["latency_ms"]))}</td>']
            body.append(f"<tr>{''.join(cells)}</tr>")
        parts.append(f"<h3>{escape(str(model))}, {escape(str(mode))} (batch {batch})</h3>"
                     f'<div class="scroll"><table class="headline"><thead><tr>{head}</tr></thead>'
                     f"<tbody>{''.join(body)}</tbody></table></div>")
    return "".join(parts)
