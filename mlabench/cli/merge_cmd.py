"""`mlabench merge DIR... --out DIR`: join sharded run directories into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlabench.cli.common import ReportOpt, err_console, out_console, write_report_or_warn


def merge(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to join (e.g. one per shard).",
                                                   show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the merged run.", metavar="DIR",
                                      show_default=False)],
    report: ReportOpt = True,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Merge an incomplete shard set or "
                                                "unfinished runs (refused by default).")] = False,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Merge runs of different suites or case "
                                              "lists (refused by default).")] = False,
) -> None:
    """Join run directories: rows and samples concatenated, duplicates by case refused."""
    from mlabench.merge import merge_runs

    summary = merge_runs(run_dirs, out, allow_partial=allow_partial, allow_mixed=allow_mixed)
    err_console.print(f"merged {len(run_dirs)} runs: {summary.rows} rows, {summary.samples} samples")
    if report:
        path = write_report_or_warn(out)
        if path:
            out_console.print(f"report:  {path}")
    out_console.print(f"results: {out}")
