"""`mlabench report RUN_DIR`: write the run's self-contained HTML report.

Thin: parse options, call `mlabench.report.html.write_report`, print the path.
Never imports torch (the report is a sink that only reads rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or its results.csv).", show_default=False)],
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the HTML "
                                                "[default: RUN_DIR/report.html].", metavar="PATH",
                                                show_default=False)] = None,
    old_output: Annotated[Path | None, typer.Option("--output", hidden=True, help="Old spelling of --out.")] = None,
    baseline: Annotated[str, typer.Option(help="Speedup baseline as VARIANT:BACKEND.",
                                          metavar="VARIANT:BACKEND")] = "mha:eager",
) -> None:
    """Render RUN_DIR as one HTML page (plotly embedded, opens offline)."""
    from mlabench.report.html import write_report

    path = write_report(run_dir, output or old_output, baseline)
    typer.echo(str(path))
