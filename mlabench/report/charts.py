"""The report's plotly figures: latency, KV-cache bytes, speedup, roofline, latent-rank trade-off,
the KV-bytes-per-token vs latency trade-off with its Pareto front, and round-to-round spread.

Each builder takes the loaded results (and meta where needed) and returns a
`Chart`: a figure, or None plus a note saying why it is not drawn (no baseline
rows, no peaks, ...), so the page explains a gap instead of showing empty
axes. Every line also draws markers, so a one-point series is still visible.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlabench.rundir import case_labels, series_labels

PALETTE = px.colors.qualitative.Plotly + px.colors.qualitative.D3 + px.colors.qualitative.Dark24
# Columns a (variant, backend) is matched on against the speedup baseline: the workload, not the design.
MATCH_COLUMNS = ("suite", "model", "mode", "dtype", "device", "batch", "seq_len", "q_len", "num_heads", "tp")
FACET_HEIGHT = 300
SPREAD_CASES = 40  # cases drawn in the round-spread chart


@dataclass(frozen=True)
class Chart:
    """One section of the page: `figure` is None when there is nothing sensible to draw."""

    id: str
    title: str
    description: str
    figure: go.Figure | None = None
    note: str = ""


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & df["latency_ms"].notna() & (df["latency_ms"] > 0)]


def natural_key(text: str) -> list[Any]:
    """'rank=128' before 'rank=1024': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _order(labels: pd.Series) -> list[str]:
    return sorted(labels.unique(), key=natural_key)


def distinct_colors(n: int) -> list[str]:
    """n colours, no two alike: the palette while it lasts; past it, n hues spaced evenly round the
    wheel, neighbours alternating in lightness so adjacent hues still part."""
    if n <= len(PALETTE):
        return PALETTE[:n]
    return [f"hsl({360 * i / n:.1f}, 70%, {45 if i % 2 else 30}%)" for i in range(n)]


def _colors(labels: pd.Series) -> dict[str, str]:
    order = _order(labels)
    return dict(zip(order, distinct_colors(len(order)), strict=True))


def _style(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(
        template="plotly_white", height=height, margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(title_text="", font=dict(size=11)), hovermode="closest",
    )
    # Facet titles ("mode=decode", "batch=8") at the size of the axis titles.
    fig.for_each_annotation(lambda a: a.update(font=dict(size=12)))
    return fig


def _log2_ticks(values: pd.Series) -> dict[str, Any]:
    ticks = sorted({int(v) for v in values.dropna()})
    return dict(tickvals=ticks, ticktext=[str(t) for t in ticks])


def _si(value: float) -> str:
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _log_ticks(*columns: pd.Series, si: bool = False) -> dict[str, Any]:
    """1-2-5 ticks with full labels over the data's range; plotly's own log ticks label 2 and 5 as bare digits."""
    values = pd.concat([c[c > 0] for c in columns]).dropna()
    if values.empty:
        return {}
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    steps = (1, 2, 5) if hi - lo <= 3 else (1,)  # wide ranges: one label per decade
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps]
    return dict(tickvals=ticks, ticktext=[_si(t) if si else f"{t:g}" for t in ticks])


def _facets(df: pd.DataFrame) -> tuple[dict[str, Any], int]:
    """facet_row=mode, facet_col=batch when they vary; the height that fits them."""
    rows = df["mode"].nunique()
    kwargs: dict[str, Any] = {"category_orders": {"series": _order(df["series"])}}
    if rows > 1:
        kwargs["facet_row"] = "mode"
        kwargs["category_orders"]["mode"] = [m for m in ("prefill", "decode") if m in set(df["mode"])]
    if df["batch"].nunique() > 1:
        kwargs["facet_col"] = "batch"
    return kwargs, max(380, FACET_HEIGHT * rows + 80)


def latency_chart(df: pd.DataFrame) -> Chart:
    ok = ok_rows(df).sort_values("seq_len")
    chart = Chart("chart-latency", "Latency vs sequence length",
                  "Median latency per case (error bars p10 to p90), one line per variant and backend; "
                  "rows are modes, columns are batch sizes. Log-log axes.")
    if ok.empty:
        return Chart(chart.id, chart.title, chart.description, note="No ok rows with a latency to plot.")
    ok = ok.assign(series=series_labels(ok, exclude=("seq_len", "mode", "batch", "q_len")),
                   err_hi=ok["latency_ms_p90"] - ok["latency_ms"], err_lo=ok["latency_ms"] - ok["latency_ms_p10"])
    facets, height = _facets(ok)
    fig = px.line(
        ok, x="seq_len", y="latency_ms", color="series", markers=True, log_x=True, log_y=True,
        error_y="err_hi", error_y_minus="err_lo", color_discrete_map=_colors(ok["series"]),
        hover_data={"case_id": True, "tokens_per_s": ":.4g", "latency_ms": ":.4g", "err_hi": False, "err_lo": False},
        labels={"seq_len": "seq_len (tokens)", "latency_ms": "latency (ms)", "series": ""}, **facets,
    )
    fig.update_yaxes(matches=None, showticklabels=True, **_log_ticks(ok["latency_ms"]))
    fig.update_xaxes(**_log2_ticks(ok["seq_len"]))
    return Chart(chart.id, chart.title, chart.description, _style(fig, height))


# Every way a run records cache bytes: column -> legend name, and each name's (dash, marker).
KV_SOURCES = {
    "kv_cache_bytes": "analytic",
    "kv_cache_bytes_measured": "cache tensors (nbytes)",
    "kv_cache_bytes_allocator": "allocator delta",
    "kv_cache_bytes_nvml": "NVML delta",
    "backend_cache_bytes": "backend's paged copy",
    "kv_cache_bytes_per_gpu": "one GPU's share (analytic, tp > 1)",
}
KV_STYLE = {
    "analytic": ("solid", "circle"),
    "cache tensors (nbytes)": ("dash", "circle-open"),
    "allocator delta": ("dot", "square-open"),
    "NVML delta": ("dashdot", "diamond-open"),
    "backend's paged copy": ("longdash", "x"),
    "one GPU's share (analytic, tp > 1)": ("solid", "triangle-up"),
}


def kv_chart(df: pd.DataFrame) -> Chart:
    chart = Chart("chart-kv", "KV-cache bytes vs sequence length",
                  "One layer's cache for the case's batch: the analytic formula (solid) and the nbytes of the "
                  "cache tensors the module allocated (dashed, open markers), which must agree exactly; where "
                  "the run recorded them, the CUDA allocator's delta (dotted) and NVML's device-used delta "
                  "(dash-dot) around the allocation, which show allocator granularity, and the paged copy a "
                  "fused backend keeps beside the cache (long dashes). Tensor-parallel cases (tp > 1) also "
                  "draw what one GPU holds at their degree (triangles; analytic, docs/variants.md §6: heads "
                  "split, a shared latent or RoPE key on every GPU; the tensor-parallel chart sets it beside "
                  "what the ranks measured).")
    rows = df[df["kv_cache_bytes"].notna() | df["kv_cache_bytes_measured"].notna()]
    if rows.empty:
        return Chart(chart.id, chart.title, chart.description, note="No row records KV-cache bytes.")
    rows = rows.assign(series=series_labels(rows, exclude=("seq_len", "batch", "mode", "q_len", "backend"),
                                            group=("variant",)))
    sources = {c: name for c, name in KV_SOURCES.items() if c in rows.columns and rows[c].notna().any()}
    if "tp" not in rows.columns or not (rows["tp"] > 1).any():
        sources.pop("kv_cache_bytes_per_gpu", None)  # at tp 1 it is the analytic line again
    long = rows.melt(id_vars=["series", "batch", "seq_len"], value_vars=list(sources),
                     var_name="source", value_name="kv_bytes").dropna(subset=["kv_bytes"])
    long["source"] = long["source"].map(sources)
    long = long.drop_duplicates().sort_values("seq_len")
    facet = {"facet_col": "batch"} if long["batch"].nunique() > 1 else {}
    fig = px.line(
        long, x="seq_len", y="kv_bytes", color="series", line_dash="source", symbol="source", markers=True,
        log_x=True, log_y=True, color_discrete_map=_colors(long["series"]),
        category_orders={"series": _order(long["series"])},
        symbol_map={name: symbol for name, (_, symbol) in KV_STYLE.items()},
        line_dash_map={name: dash for name, (dash, _) in KV_STYLE.items()},
        labels={"seq_len": "seq_len (tokens)", "kv_bytes": "KV cache (bytes, one layer)", "series": ""}, **facet,
    )
    fig.update_traces(marker_size=7)
    # Cache-tensor markers drawn larger and open, so an exact match rings the analytic point.
    fig.update_traces(marker_size=12, selector=lambda t: "nbytes" in (t.name or ""))
    fig.update_yaxes(showticklabels=True, **_log_ticks(long["kv_bytes"], si=True))
    fig.update_xaxes(**_log2_ticks(long["seq_len"]))
    return Chart(chart.id, chart.title, chart.description, _style(fig, 440))


def parse_baseline(text: str) -> tuple[str, str]:
    variant, sep, backend = text.partition(":")
    if not sep or not variant or not backend:
        raise ValueError(f"--baseline must be VARIANT:BACKEND (e.g. mha:eager), got {text!r}")
    return variant.strip(), backend.strip()


def speedup_chart(df: pd.DataFrame, baseline: tuple[str, str]) -> Chart:
    variant, backend = baseline
    name = f"{variant}:{backend}"
    chart = Chart("chart-speedup", f"Speedup over {name}",
                  f"Baseline latency / case latency, matched on {', '.join(MATCH_COLUMNS)}; above 1 is faster "
                  f"than {name}.")
    ok = ok_rows(df)
    is_base = (ok["variant"] == variant) & (ok["backend"] == backend)
    if not is_base.any():
        present = sorted({f"{v}:{b}" for v, b in zip(ok["variant"], ok["backend"], strict=True)})
        hint = f" Pick one with --baseline VARIANT:BACKEND ({', '.join(present[:8])})." if present else ""
        return Chart(chart.id, chart.title, chart.description,
                     note=f"Baseline {name} has no ok rows in this run, so the speedup chart is skipped.{hint}")
    keys = list(MATCH_COLUMNS)
    base = ok[is_base].groupby(keys, dropna=False)["latency_ms"].median().rename("base_ms").reset_index()
    merged = ok[~is_base].merge(base, on=keys, how="inner")
    if merged.empty:
        return Chart(chart.id, chart.title, chart.description,
                     note=f"No case shares its workload ({', '.join(keys)}) with a {name} row.")
    merged = merged.assign(speedup=merged["base_ms"] / merged["latency_ms"]).sort_values("seq_len")
    merged["series"] = series_labels(merged, exclude=("seq_len", "mode", "batch", "q_len")).to_numpy()
    facets, height = _facets(merged)
    fig = px.line(
        merged, x="seq_len", y="speedup", color="series", markers=True, log_x=True,
        color_discrete_map=_colors(merged["series"]),
        hover_data={"case_id": True, "latency_ms": ":.4g", "base_ms": ":.4g", "speedup": ":.3f"},
        labels={"seq_len": "seq_len (tokens)", "speedup": f"speedup vs {name}", "series": ""}, **facets,
    )
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.update_xaxes(**_log2_ticks(merged["seq_len"]))
    return Chart(chart.id, chart.title, chart.description, _style(fig, height))


def _positive(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def compute_peaks(meta: dict[str, Any], dtypes: list[str]) -> dict[str, float]:
    """Compute ceilings to draw: one per dtype in the rows when meta has per-dtype rates, else the one rate."""
    peaks = meta.get("peaks") if isinstance(meta.get("peaks"), dict) else {}
    by_dtype = peaks.get("flops_per_s_by_dtype") if isinstance(peaks.get("flops_per_s_by_dtype"), dict) else {}
    per_dtype = {d: v for d in dtypes if (v := _positive(by_dtype.get(d))) is not None}
    if per_dtype:
        return per_dtype
    single = _positive(peaks.get("flops_per_s"))
    return {"": single} if single else {}


def _ceiling_traces(bw: float | None, flops: dict[str, float], lo: float, hi: float, source: str) -> list[go.Scatter]:
    """The roof: bandwidth slope up to each compute ceiling's ridge point, flat after it."""
    style = dict(mode="lines", hoverinfo="name")
    dashes = ("solid", "dash", "dot", "dashdot")
    traces = []
    for i, (dtype, pf) in enumerate(flops.items()):
        name = f"roofline {dtype} ({source})".replace("  ", " ") if bw else f"compute ceiling {dtype} ({source})"
        line = dict(color="#444", width=2, dash=dashes[i % len(dashes)])
        if bw:
            xs = sorted({lo, min(max(pf / bw, lo), hi), hi})
            traces.append(go.Scatter(x=xs, y=[min(x * bw, pf) / 1e12 for x in xs], name=name, line=line, **style))
        else:
            traces.append(go.Scatter(x=[lo, hi], y=[pf / 1e12] * 2, name=name, line=line, **style))
    if bw and not flops:
        traces.append(go.Scatter(x=[lo, hi], y=[lo * bw / 1e12, hi * bw / 1e12], name=f"bandwidth ceiling ({source})",
                                 line=dict(color="#444", width=2), **style))
    return traces


def roofline_chart(df: pd.DataFrame, meta: dict[str, Any]) -> Chart:
    chart = Chart("chart-roofline", "Roofline",
                  "Arithmetic intensity (FLOPs per byte moved) against achieved TFLOP/s, with the device's "
                  "bandwidth and compute ceilings from meta.json (one compute ceiling per dtype when probed).")
    ok = ok_rows(df)
    ok = ok[(ok["flops"] > 0) & (ok["bytes"] > 0) & ok["tflops"].notna()]
    if ok.empty:
        return Chart(chart.id, chart.title, chart.description, note="No ok row records flops, bytes and tflops.")
    ok = ok.assign(intensity=ok["flops"] / ok["bytes"], series=ok["variant"] + ":" + ok["backend"])
    fig = px.scatter(
        ok, x="intensity", y="tflops", color="series", symbol="mode", log_x=True, log_y=True,
        color_discrete_map=_colors(ok["series"]), category_orders={"series": _order(ok["series"])},
        hover_data={"case_id": True, "dtype": True, "seq_len": True, "batch": True, "roofline_pct": ":.1f"},
        labels={"intensity": "arithmetic intensity (FLOP/byte)", "tflops": "achieved TFLOP/s", "series": ""},
    )
    fig.update_traces(marker=dict(size=9, opacity=0.85))
    peaks = meta.get("peaks") if isinstance(meta.get("peaks"), dict) else {}
    source = str(peaks.get("source") or "none")
    bw = _positive(peaks.get("bytes_per_s"))
    flops = compute_peaks(meta, sorted(set(ok["dtype"])))
    lo, hi = float(ok["intensity"].min()) / 2, float(ok["intensity"].max()) * 2
    if bw and flops:
        ridges = [pf / bw for pf in flops.values()]
        lo, hi = min(lo, min(ridges) / 4), max(hi, max(ridges) * 4)
    for trace in _ceiling_traces(bw, flops, lo, hi, source):
        fig.add_trace(trace)
    roof = pd.Series([pf / 1e12 for pf in flops.values()], dtype=float)
    fig.update_yaxes(**_log_ticks(ok["tflops"], roof))
    fig.update_xaxes(**_log_ticks(ok["intensity"], pd.Series([lo, hi])))
    note = ""
    if not (bw and flops):
        missing = [n for n, v in (("bandwidth", bw), ("compute", flops)) if not v]
        note = (f"meta.json has no {' or '.join(missing)} peak (source: {source}), so that ceiling is omitted; "
                "run `mlabench env --probe` to measure it.")
    return Chart(chart.id, chart.title, chart.description, _style(fig, 480), note)


def _rank_context(rows: pd.DataFrame) -> pd.DataFrame:
    """The (mode, batch, seq_len) slice with the most ranks: decode, longest context, smallest batch first."""
    counts = rows.groupby(["mode", "batch", "seq_len"])["kv_lora_rank"].nunique().reset_index()
    counts["decode"] = counts["mode"] == "decode"
    best = counts.sort_values(["kv_lora_rank", "decode", "seq_len", "batch"],
                              ascending=[False, False, False, True]).iloc[0]
    keep = (rows["mode"] == best["mode"]) & (rows["batch"] == best["batch"]) & (rows["seq_len"] == best["seq_len"])
    return rows[keep]


def rank_chart(df: pd.DataFrame) -> Chart | None:
    """KV bytes and latency against kv_lora_rank; None when no latent variant has two ranks."""
    # The variants whose rows sweep the latent rank: read from the rows, so a new latent variant
    # joins the chart without a list to update (and the report needs no variant classes).
    ranks = df[df["kv_lora_rank"] > 0].groupby("variant")["kv_lora_rank"].nunique()
    rows = df[df["variant"].isin(ranks[ranks >= 2].index) & (df["kv_lora_rank"] > 0)]
    if rows.empty:
        return None
    rows = _rank_context(rows)
    if rows["kv_lora_rank"].nunique() < 2:
        return None
    first = rows.iloc[0]
    context = f"{first['mode']}, batch {int(first['batch'])}, seq_len {int(first['seq_len'])}"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("KV cache bytes (one layer)", "latency (ms)"),
                        horizontal_spacing=0.1)
    kv = rows.dropna(subset=["kv_cache_bytes"]).sort_values("kv_lora_rank")
    kv = kv.assign(series=series_labels(kv, exclude=("kv_lora_rank", "backend", "q_len"), group=("variant",)))
    kv = kv.drop_duplicates(["series", "kv_lora_rank"])
    ok = ok_rows(rows).sort_values("kv_lora_rank")
    ok = ok.assign(series=series_labels(ok, exclude=("kv_lora_rank", "q_len")))
    colors = _colors(pd.concat([kv["series"], ok["series"]]))
    for label, g in kv.groupby("series", sort=True):
        fig.add_trace(go.Scatter(x=g["kv_lora_rank"], y=g["kv_cache_bytes"], mode="lines+markers", name=label,
                                 legendgroup="kv", legendgrouptitle_text="KV bytes",
                                 line=dict(color=colors[label])), row=1, col=1)
    for label, g in ok.groupby("series", sort=True):
        fig.add_trace(go.Scatter(x=g["kv_lora_rank"], y=g["latency_ms"], mode="lines+markers", name=label,
                                 legendgroup="latency", legendgrouptitle_text="latency",
                                 line=dict(color=colors[label])), row=1, col=2)
    ranks = rows["kv_lora_rank"]
    fig.update_xaxes(title_text="kv_lora_rank", type="log", **_log2_ticks(ranks))
    fig.update_yaxes(tickformat="~s", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    return Chart("chart-rank", "Latent-rank trade-off",
                 f"KV-cache bytes and latency against the latent rank (kv_lora_rank), at {context}.",
                 _style(fig, 420))


def round_spread_chart(df: pd.DataFrame, samples: pd.DataFrame | None) -> Chart | None:
    """Each case's per-round medians relative to the median over rounds; None for a one-round run."""
    if samples is None or samples.empty or "round" not in samples or samples["round"].nunique() < 2:
        return None
    medians = samples.groupby(["case_id", "round"])["latency_ms"].median().rename("round_ms").reset_index()
    medians = medians[medians.groupby("case_id")["round"].transform("nunique") >= 2]
    if medians.empty:
        return None
    center = medians.groupby("case_id")["round_ms"].transform("median")
    medians = medians.assign(dev=100 * (medians["round_ms"] / center - 1))
    labels = dict(zip(df["case_id"], case_labels(df), strict=True))
    medians["case"] = medians["case_id"].map(labels).fillna(medians["case_id"])
    # Spread per case: the robust SD of its log round medians, in percent.
    spread = medians.groupby("case")["dev"].agg(lambda d: 1.4826 * float((d - d.median()).abs().median()))
    # Hundreds of boxes are unreadable: the widest cases, with the whole sweep summarised in the text.
    order = list(spread.sort_values(ascending=False).index[:SPREAD_CASES])
    medians = medians[medians["case"].isin(order)]
    fig = px.box(medians, x="case", y="dev", points="all", category_orders={"case": order},
                 labels={"case": "", "dev": "round median vs median of rounds (%)"},
                 hover_data={"round": True, "round_ms": ":.4g", "case_id": True})
    fig.add_hline(y=0, line_color="#888", line_dash="dot")
    fig.update_xaxes(tickangle=-45, tickfont=dict(size=9))
    rounds = int(samples["round"].nunique())
    return Chart("chart-rounds", "Round-to-round spread",
                 f"{rounds} rounds: each point is one round's median latency of a case, relative to the median "
                 f"over its rounds; the {len(order)} widest of {len(spread)} cases. Median spread over all cases "
                 f"{spread.median():.1f}% (robust SD), widest {spread.max():.1f}%. This is the noise the regression "
                 "gate tests against.",
                 _style(fig, 460))
