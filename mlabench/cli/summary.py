"""Rendering finished cases: the end-of-sweep table, one case's details, and their JSON forms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from mlabench.cli.common import clean_for_json, human_bytes, out_console, print_json

STATUS_STYLE = {"ok": "green", "inaccurate": "red", "error": "red", "oom": "red", "timeout": "red", "skipped": "yellow",
                "unsupported": "dim"}


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


KEY_COLUMNS = ("model", "variant", "backend", "mode", "batch", "seq_len", "q_len", "dtype", "kv_dtype")


def rows_table(rows: list[dict[str, Any]]) -> tuple[Table, list[str]]:
    """A table narrow enough for a terminal: key columns that never vary move to the title,
    and reasons for non-ok rows come back as separate lines."""
    constant = [c for c in KEY_COLUMNS if len({str(r[c]) for r in rows}) == 1]
    varying = [c for c in KEY_COLUMNS if c not in constant]
    title = "  ".join(f"{c}={rows[0][c]}" for c in constant) if rows else None
    table = Table(title=title, title_justify="left", header_style="bold", pad_edge=False)
    for col in varying:
        table.add_column(col, justify="right" if col in ("batch", "seq_len", "q_len") else "left")
    for col in ("status", "ms", "p10-p90", "KV cache", "rel_err"):  # KV cache: the cache tensors' nbytes
        table.add_column(col, justify="left" if col == "status" else "right", no_wrap=True)
    notes = []
    for r in rows:
        status = str(r["status"])
        spread = "-" if r.get("latency_ms_p10") is None else f"{_ms(r['latency_ms_p10'])}-{_ms(r['latency_ms_p90'])}"
        rel = r.get("rel_err")
        table.add_row(
            *(str(r[c]) for c in varying), f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            _ms(r.get("latency_ms")), spread, human_bytes(r.get("kv_cache_bytes_measured") or r.get("kv_cache_bytes")),
            "-" if rel is None else f"{rel:.1e}",
        )
        if status != "ok" and r.get("error"):
            notes.append(f"{status}: {r['variant']}/{r['backend']} {r['mode']} b={r['batch']} T={r['seq_len']}"
                         f"{' q=' + str(r['q_len']) if r['mode'] == 'decode' else ''}: {r['error']}")
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
            "rows": rows,
        }))
        return
    if rows:
        table, notes = rows_table(rows)
        out_console.print(table)
        for note in notes:
            out_console.print(f"  [dim]{note}[/]", soft_wrap=True)  # one line each, however long (CI logs)
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing new"
    if outcome.skipped_finished:
        tally += f"; {outcome.skipped_finished} already finished"
    out_console.print(f"[bold]{len(rows)} cases[/]: {tally}")
    out_console.print(f"results: {outcome.out_dir}")
    if report_path:
        out_console.print(f"report:  {report_path}")
