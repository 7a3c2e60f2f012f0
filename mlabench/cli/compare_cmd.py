"""`mlabench compare BASELINE CANDIDATE`: the regression gate's command line.

Thin: parse options, call `mlabench.compare`, render. Exit 0 pass, 1 a
regression (or, with --strict, an inconclusive or one-sided case), 2 bad input,
3 not comparable. Baseline cases missing from the candidate are always listed
and fail the gate past --max-missing. With --json, stdout carries exactly one
JSON document.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlabench.cli.common import JsonOpt, err_console
from mlabench.errors import UsageError


class OutputFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"
    html = "html"


def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline run directory (or its results.csv).", show_default=False)],
    candidate: Annotated[Path, typer.Argument(help="Candidate run directory (or its results.csv).",
                                              show_default=False)],
    threshold: Annotated[float, typer.Option(help="Smallest slowdown that counts, as a fraction of the "
                                                  "baseline median (0.05 = 5%).")] = 0.05,
    alpha: Annotated[float, typer.Option(help="Family-wise error rate for the significance test "
                                              "(Holm-corrected over all cases).")] = 0.01,
    strict: Annotated[bool, typer.Option("--strict", help="Also fail on inconclusive cases, on cases present on "
                                                          "one side only, and when most timed cases are "
                                                          "underpowered.")] = False,
    allow_env_change: Annotated[bool, typer.Option("--allow-env-change", help="Compare even when device, torch, "
                                                   "dtype or shapes differ (pairs cases ignoring them).")] = False,
    sample_test: Annotated[bool, typer.Option("--sample-test", help="Also judge timings that lack 3+ rounds on "
                                              "each side, on one run's samples: blind to run-to-run noise, so "
                                              "only for a machine known to be quiet; the verdict says WEAK.")
                           ] = False,
    noise_floor: Annotated[bool | None, typer.Option("--noise-floor/--no-noise-floor", hidden=True,
                                                     help="No effect: run noise now comes from rounds.")] = None,
    max_missing: Annotated[float, typer.Option(help="Fail when more than this share of the baseline's cases is "
                                                    "missing from the candidate (0.1 = 10%; the count is always "
                                                    "shown).")] = 0.1,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output on stdout.",
                                                        case_sensitive=False)] = OutputFormat.table,
    as_json: JsonOpt = False,  # the same as --format json
    output: Annotated[Path | None, typer.Option("--markdown", help="Also write the markdown report to this file "
                                                "(e.g. for a PR comment).", metavar="PATH")] = None,
    old_output: Annotated[Path | None, typer.Option("--output", "-o", hidden=True, help="Old spelling of "
                                                    "--markdown.")] = None,
) -> None:
    """Compare two runs case by case; exit 1 on a regression.

    Exact metrics (KV-cache bytes analytic and measured, params, FLOPs, bytes) and
    status changes (ok -> error, inaccurate, ...) fail always. A timing change fails
    only when both runs have 3+ rounds of the case (sweep --rounds 3 on both, or
    mlabench ab); with fewer it is listed as indicative and never fails, since one
    run's samples cannot see how far the same code moves between runs
    (--sample-test opts back in, marked WEAK).

    \b
    Calibration on a 2-core CPU shared with busy jobs, 10 trials per mode
    (unchanged code failing / a variant planted 1.5x slower failing):
      two sweeps without rounds      0/10   0/10   timing indicative
      the same with --sample-test    4/10   6/10
      two sweeps with --rounds 6     1/10   2/10
      mlabench ab --rounds 6         0/10  10/10   only that variant flagged
    """
    from mlabench.compare import GateSettings, compare_paths

    fmt = OutputFormat.json if as_json else output_format
    output = output or old_output
    if noise_floor is not None:
        err_console.print("note: --noise-floor has no effect any more; run-to-run noise is measured with rounds "
                          "(sweep --rounds, mlabench ab)", markup=False)
    settings = GateSettings(threshold=threshold, alpha=alpha, strict=strict, allow_env_change=allow_env_change,
                            max_missing=max_missing, sample_test=sample_test)
    result = compare_paths(baseline, candidate, settings)
    # After loading, so that a refused input is the only line printed.
    err_console.print(f"comparing {baseline} -> {candidate}", markup=False, soft_wrap=True)
    render_comparison(result, fmt, output)
    if not result.passed:
        raise typer.Exit(1)


def render_comparison(result: Any, fmt: OutputFormat, output: Path | None) -> None:
    """Write the markdown file when asked, then the chosen format on stdout (shared with `ab`)."""
    from mlabench.compare import render

    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(render.to_markdown(result), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{output}: cannot write ({exc.strerror or exc})") from None
    if fmt is OutputFormat.json:
        sys.stdout.write(render.to_json(result) + "\n")
    elif fmt is OutputFormat.markdown:
        sys.stdout.write(render.to_markdown(result))
    elif fmt is OutputFormat.html:
        from mlabench.compare.html import render_html

        sys.stdout.write(render_html(result))
    else:
        render.print_table(result)
