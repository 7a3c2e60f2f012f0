"""Rendering finished cases: the end-of-sweep table, one case's details, and their JSON forms.

The table fits the terminal: key columns that never vary go to the title, the varying ones
are folded into one `case` column (`gqa/sdpa decode T=256 q=1`), and when the terminal is
still too narrow the secondary columns go first (the spread, then the accuracy, then the
cache size), so at 80 columns every case is still named in full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlabench import schema
from mlabench.cli.common import clean_for_json, human_bytes, out_console, print_json

STATUS_STYLE = {"ok": "green", "inaccurate": "red", "error": "red", "oom": "red", "timeout": "red", "skipped": "yellow",
                "unsupported": "dim"}

# Key columns in reading order, and how each reads inside the case column ('' : the bare value).
CASE_PARTS: dict[str, str] = {"model": "", "variant": "", "backend": "", "mode": "", "batch": "b=", "seq_len": "T=",
                              "q_len": "q=", "dtype": "", "kv_dtype": "kv=", "scope": "", "context": "ctx=",
                              "cache_layout": "", "options": ""}
SHAPE_PARTS: dict[str, str] = {"num_kv_heads": "G=", "kv_lora_rank": "rank="}  # shorter than field=
# Measurement columns, and the order they give way in when the terminal is narrow.
MEASURES = ("status", "ms", "p10-p90", "KV cache", "rel_err")
DROPPED_FIRST = ("p10-p90", "rel_err", "KV cache")
MATH_MARK = "[math]"  # beside sdpa when PyTorch ran its unfused math kernel (schema.sdpa_math)


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def _case_text(row: Any, parts: list[str], axes: dict[str, set[tuple[Any, Any]]]) -> str:
    """The varying key columns of one row as words; variant/backend as one (`gqa/sdpa`). A shape
    field is named only in rows of a (model, variant) where it was an axis (`axes`)."""
    words: list[str] = []
    for col in parts:
        value = row.get(col)
        if value in (None, "") or (col == "q_len" and row.get("mode") == "prefill"):
            continue
        if col in axes and (row.get("model"), row.get("variant")) not in axes[col]:
            continue
        text = f"{CASE_PARTS.get(col, SHAPE_PARTS.get(col, col + '='))}{value}"
        if col == "backend" and schema.sdpa_math(row.get("backend_detail")):
            text += MATH_MARK
        if col == "backend" and words and "variant" in parts:
            words[-1] += f"/{text}"
        else:
            words.append(text)
    return " ".join(words)


def _measures(row: Any) -> dict[str, str]:
    status = str(row["status"])
    rel = row.get("rel_err")
    spread = "-" if row.get("latency_ms_p10") is None else f"{_ms(row['latency_ms_p10'])}-{_ms(row['latency_ms_p90'])}"
    return {"status": f"[{STATUS_STYLE.get(status, '')}]{status}[/]", "ms": _ms(row.get("latency_ms")),
            "p10-p90": spread,
            "KV cache": human_bytes(row.get("kv_cache_bytes_measured") or row.get("kv_cache_bytes")),
            "rel_err": "-" if rel is None else f"{rel:.1e}"}


def rows_table(rows: list[Any], width: int | None = None) -> tuple[Table, list[str]]:
    """A table that fits `width` columns (default: the output console's), and one line per
    non-ok row's reason and per mark, to print below it."""
    width = width or out_console.width
    varying = [c for c in CASE_PARTS if len({str(r.get(c)) for r in rows}) > 1]
    # A shape field counts where it was an axis: where it differs between rows of one model and
    # variant (num_kv_heads differs between mha and gqa of one preset anyway, which the variant says).
    axes: dict[str, set[tuple[Any, Any]]] = {}
    for c in schema.KEY_COLUMNS:
        if c in CASE_PARTS or c in ("suite", "device"):
            continue
        seen: dict[tuple[Any, Any], set[str]] = {}
        for r in rows:
            seen.setdefault((r.get("model"), r.get("variant")), set()).add(str(r.get(c)))
        groups = {g for g, values in seen.items() if len(values) > 1}
        if groups:
            axes[c] = groups
            varying.append(c)
    shown_constant = [c for c in CASE_PARTS if c not in varying and rows and rows[0].get(c) not in (None, "")]
    title = "  ".join(f"{c}={rows[0][c]}" for c in shown_constant) if rows else None
    parts = [c for c in CASE_PARTS if c in varying] + [c for c in varying if c not in CASE_PARTS]
    if "backend" not in parts and any(schema.sdpa_math(r.get("backend_detail")) for r in rows):
        parts.append("backend")  # constant, but its mark is news
    cases = [_case_text(r, parts, axes) or "(one case)" for r in rows]
    cells = [_measures(r) for r in rows]
    columns = list(MEASURES)
    plain = [{k: Console().render_str(v).plain for k, v in c.items()} for c in cells]

    def needed(cols: list[str]) -> int:  # rich's heavy box: a border, and 1 padding + 1 border per column side
        widths = [max(len(t) for t in [*cases, "case"])] + [max(len(p[c]) for p in [*plain, {c: c}]) for c in cols]
        return sum(w + 3 for w in widths) + 1

    for secondary in DROPPED_FIRST:
        if needed(columns) <= width:
            break
        columns.remove(secondary)
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("case", overflow="fold")  # a case never collapses to an ellipsis; at worst it wraps
    for col in columns:
        table.add_column(col, justify="left" if col == "status" else "right", no_wrap=True)
    for case, cell in zip(cases, cells, strict=True):
        table.add_row(escape(case), *(cell[c] for c in columns))
    notes = []
    for case, r in zip(cases, rows, strict=True):
        if str(r["status"]) != "ok" and r.get("error"):
            notes.append(f"{r['status']}: {case}: {r['error']}")
    if any(schema.sdpa_math(r.get("backend_detail")) for r in rows):
        notes.append(f"sdpa{MATH_MARK}: PyTorch's SDPA ran its unfused math kernel (no fused kernel takes these "
                     "inputs here), far slower than a fused one; see backend_detail")
    return table, notes


def print_summary(outcome: Any, report_path: Path | None, as_json: bool) -> None:
    rows = [r.row for r in outcome.results]
    counts = dict(outcome.status_counts)
    if as_json:
        print_json(clean_for_json({
            "run_dir": str(outcome.out_dir),
            "report": str(report_path) if report_path else None,
            "interrupted": outcome.interrupted,
            "already_finished": outcome.skipped_finished,
            "status_counts": counts,
            "rows": [row.as_dict() for row in rows],  # the CSV's columns, as JSON values
        }))
        return
    if rows:
        table, notes = rows_table(rows)
        out_console.print(table)
        for note in notes:
            out_console.print(f"  [dim]{escape(note)}[/]", soft_wrap=True, highlight=False)  # one line each (CI logs)
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing new"
    if outcome.skipped_finished:
        tally += f"; {outcome.skipped_finished} already finished"
    out_console.print(f"[bold]{len(rows)} cases[/]: {tally}")
    out_console.print(f"results: {outcome.out_dir}")
    if report_path:
        out_console.print(f"report:  {report_path}")
