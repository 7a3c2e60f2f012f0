"""HTML fragments of the report that are not charts: environment header, claims table, row table.

Every string from the run directory passes through `html.escape` before it
reaches the page. Numbers are shown rounded but carry their raw value in a
`data-v` attribute, which the inline sorter uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape
from typing import Any

import pandas as pd

from mlabench import schema
from mlabench.claims import ClaimResult

BYTE_COLUMNS = frozenset({"bytes", "kv_cache_bytes", "kv_cache_bytes_measured", "kv_cache_bytes_allocator",
                          "kv_cache_bytes_nvml", "backend_cache_bytes", "peak_mem_bytes"})
INT_COLUMNS = frozenset({"batch", "seq_len", "q_len", "num_heads", "num_kv_heads", "head_dim", "q_lora_rank",
                         "kv_lora_rank", "rope_head_dim", "v_head_dim", "n_samples", "params"})
SCI_COLUMNS = frozenset({"max_abs_err", "rel_err", "cos_diff", "flops"})
# What a column holds, shown on its header: names alone have misled ("measured" is nbytes).
COLUMN_MEANING = {
    "kv_cache_bytes": "KV-cache bytes from the analytic formula",
    "kv_cache_bytes_measured": "nbytes of the cache tensors the module allocated (must equal the formula)",
    "kv_cache_bytes_allocator": "CUDA caching allocator's memory_allocated delta around the cache allocation",
    "kv_cache_bytes_nvml": "NVML device-used delta around the cache allocation (allocator segment granularity)",
    "backend_cache_bytes": "a second copy of the cache the backend keeps (FlashMLA/FlashInfer paged pool)",
    "params": "parameters counted on the module",
    "rel_err": "worst element's error vs the float64 reference, relative to max(|ref|, RMS of ref)",
    "cos_diff": "1 - cosine similarity of output and float64 reference (first and last sequence)",
    "unstable": "1 when p90/p10 > 1.5: samples not one distribution",
    "threads": "CPU threads the step ran with",
    "profiled": "1 when the case was profiled (--profile, --nvtx): traced after its samples, NVTX around its calls",
}
# Row-table column order: what a reader scans first, then the rest of the contract.
LEADING = ("variant", "backend", "mode", "model", "dtype", "batch", "seq_len", "q_len", "status", "error",
           "latency_ms")


def human_bytes(v: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(v) >= size:
            return f"{v / size:.4g} {unit}"
    return f"{v:.0f} B"


def fmt(column: str, value: Any) -> str:
    """Display text for one cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    v = float(value)
    if column in BYTE_COLUMNS:
        return human_bytes(v)
    if column in INT_COLUMNS and v == int(v):
        return f"{int(v):,}" if column == "params" else str(int(v))
    if column in SCI_COLUMNS:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _meta(meta: dict[str, Any], *path: str) -> Any:
    value: Any = meta
    for p in path:
        value = value.get(p) if isinstance(value, dict) else None
    return value


def _peak_text(meta: dict[str, Any]) -> str:
    peaks = _meta(meta, "peaks") or {}
    if not isinstance(peaks, dict):
        return "unknown"
    parts = []
    if peaks.get("flops_per_s"):
        parts.append(f"{float(peaks['flops_per_s']) / 1e12:.4g} TFLOP/s")
    if peaks.get("bytes_per_s"):
        used = peaks.get("roofline_bandwidth")
        parts.append(f"{float(peaks['bytes_per_s']) / 1e9:.4g} GB/s" + (f" ({used})" if used else ""))
    if peaks.get("bytes_per_s_copy") and peaks.get("roofline_bandwidth") != "copy":
        parts.append(f"copy {float(peaks['bytes_per_s_copy']) / 1e9:.4g} GB/s")
    text = f"{', '.join(parts) or 'none recorded'} (source: {peaks.get('source', 'none')})"
    if peaks.get("roofline_bandwidth"):
        text += f"; roofline_pct uses the {peaks['roofline_bandwidth']} bandwidth"
    return text


def _threads_text(meta: dict[str, Any], df: pd.DataFrame) -> str | None:
    """The threads the cases ran with (the rows' `threads`), beside torch's default on the host
    when the run started (meta): the two differ whenever a sweep pins its cases' threads."""
    host = _meta(meta, "cpu", "threads")
    ran = sorted({int(t) for t in pd.to_numeric(df.get("threads", pd.Series(dtype=float)), errors="coerce").dropna()})
    if not ran:
        return f"{host} (torch's default on the host; the rows do not say what the cases used)" if host else None
    cases = f"{', '.join(map(str, ran))} per case"
    return f"{cases} (host default {host})" if host else cases


def env_header(meta: dict[str, Any], df: pd.DataFrame) -> str:
    """The environment fingerprint as a definition grid; blanks shown as '-'."""
    suites = sorted(set(df["suite"])) if not df.empty else []
    device = _meta(meta, "device") or {}
    memory = _meta(meta, "device", "memory_bytes")
    fields = [
        ("suite", meta.get("suite") or ", ".join(suites)),
        ("device", f"{device.get('name', '-')} ({device.get('type', '-')})" if isinstance(device, dict) else "-"),
        ("device memory", human_bytes(float(memory)) if isinstance(memory, int | float) else None),
        ("driver", _meta(meta, "device", "driver")),
        ("CUDA", _meta(meta, "device", "cuda")),
        ("capability", _meta(meta, "device", "capability")),
        ("torch", meta.get("torch")),
        ("triton", meta.get("triton")),
        ("CPU", _meta(meta, "cpu", "model")),
        ("CPU threads", _threads_text(meta, df)),
        ("peaks", _peak_text(meta)),
        ("python", meta.get("python")),
        ("platform", meta.get("platform")),
        ("git commit", meta.get("git_commit")),
        ("mlabench", meta.get("mlabench_version")),
        ("created (UTC)", meta.get("created_utc")),
        ("command", meta.get("command")),
    ]
    items = "".join(
        f'<div class="kv"><dt>{escape(k)}</dt><dd>{escape(str(v)) if v not in (None, "") else "-"}</dd></div>'
        for k, v in fields
    )
    missing = "" if meta else '<p class="note">This run has no meta.json: environment unknown.</p>'
    return f'<dl class="env">{items}</dl>{missing}'


def status_summary(df: pd.DataFrame) -> str:
    counts = df["status"].value_counts()
    parts = [f'<span class="pill st-{escape(s)}">{int(counts[s])} {escape(s)}</span>'
             for s in schema.STATUSES if s in counts.index]
    return f'<p class="summary">{len(df)} rows: {" ".join(parts)}</p>'


def _number(v: float | None) -> str:
    """Counts with thousands separators, ratios to six significant digits."""
    if v is None or not math.isfinite(v):
        return "-"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.6g}"


def claims_table(results: Iterable[ClaimResult]) -> str:
    rows = []
    for c in results:
        verdict = c.verdict.replace(" ", "-")
        rows.append(
            "<tr>"
            f"<td>{escape(c.claim)}<div class='src'>{escape(c.source)}</div></td>"
            f"<td class='num'>{escape(_number(c.expected))}</td>"
            f"<td class='num'>{escape(_number(c.measured))}</td>"
            f"<td>{escape(c.unit)}</td>"
            f"<td><span class='pill v-{escape(verdict)}'>{escape(c.verdict)}</span></td>"
            f"<td class='note-cell'>{escape(c.note)}</td>"
            "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("claim", "expected", "measured", "unit", "verdict", "note"))
    return f'<table class="claims"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def row_columns(df: pd.DataFrame) -> list[str]:
    """Leading columns, then the rest of the contract and any extra column; all-empty ones dropped."""
    order = list(LEADING) + [c for c in schema.COLUMNS if c not in LEADING]
    order += [c for c in df.columns if c not in order]
    keep = []
    for c in order:
        col = df[c]
        empty = col.isna().all() if col.dtype.kind in "fiu" else (col.astype(str).str.strip() == "").all()
        if c in LEADING or not empty:
            keep.append(c)
    return keep


def rows_table(df: pd.DataFrame) -> str:
    """Every row, sortable (click a header) and filterable (text box, status menu)."""
    columns = row_columns(df)
    head = "".join(f'<th data-col="{escape(c)}" title="{escape(COLUMN_MEANING.get(c, c))}; click to sort">'
                   f'{escape(c)}</th>' for c in columns)
    body = []
    for _, row in df.iterrows():
        status = str(row["status"])
        cells = []
        for c in columns:
            v = row[c]
            raw = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            text = fmt(c, v)
            cls = ' class="err"' if c == "error" and text else (' class="num"' if not isinstance(v, str) else "")
            if c == "backend" and schema.sdpa_math(row.get("backend_detail")):  # where a reader looks
                text, cls = f"{text} [math]", ' class="err" title="SDPA ran its unfused math kernel: correct, ' \
                    'far slower than a fused one (backend_detail)"'
            cells.append(f'<td data-v="{escape(raw)}"{cls}>{escape(text)}</td>')
        body.append(f'<tr class="st-{escape(status)}" data-status="{escape(status)}">{"".join(cells)}</tr>')
    statuses = [s for s in schema.STATUSES if s in set(df["status"])]
    options = '<option value="">all statuses</option><option value="!ok">not ok</option>' + "".join(
        f'<option value="{escape(s)}">{escape(s)}</option>' for s in statuses
    )
    return (
        '<div class="controls"><input id="row-filter" type="search" placeholder="filter rows (all words must match)">'
        f'<select id="status-filter">{options}</select><span id="row-count"></span></div>'
        f'<div class="scroll"><table id="rows" class="rows"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
    )
