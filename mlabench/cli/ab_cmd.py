"""`mlabench ab BASELINE CANDIDATE`: the CI gate, both sides measured in one job, round by round.

Thin: resolve the two sides, run the rounds (progress on stderr), compare the two
run directories, write the verdict next to them, render. Exit codes as `compare`:
0 pass, 1 regression (or a --strict failure), 2 bad input or a side that cannot
run, 3 not comparable.
"""

from __future__ import annotations

import datetime
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlabench.cli.common import err_console
from mlabench.cli.compare_cmd import OutputFormat, render_comparison


def ab(
    baseline: Annotated[str, typer.Argument(help="Baseline: a git ref (e.g. origin/main), a source tree, or a "
                                                 "Python interpreter with mlabench installed.", show_default=False)],
    candidate: Annotated[str, typer.Argument(help="Candidate: same forms (e.g. HEAD, or . for this tree).",
                                             show_default=False)],
    suite: Annotated[str, typer.Option(help="Suite name or .toml path; a name is read from the candidate's tree "
                                            "when it has one.")] = "smoke",
    rounds: Annotated[int, typer.Option(help="Rounds per side; each round is one sweep of the whole suite.")] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for baseline/, candidate/ and the verdict "
                                                  "[default: results/ab/<UTC time>-<suite>].",
                                             show_default=False)] = None,
    repo: Annotated[Path | None, typer.Option(help="Git repository the refs belong to [default: the current "
                                                   "directory's].", show_default=False)] = None,
    threshold: Annotated[float, typer.Option(help="Smallest slowdown that counts (0.05 = 5%).")] = 0.05,
    alpha: Annotated[float, typer.Option(help="Family-wise error rate (Holm over all cases).")] = 0.01,
    strict: Annotated[bool, typer.Option("--strict", help="Also fail on inconclusive or one-sided cases and "
                                                          "when most cases are underpowered.")] = False,
    budget: Annotated[float | None, typer.Option(help="Seconds of sampling per case [suite's].",
                                                 show_default=False)] = None,
    min_samples: Annotated[int | None, typer.Option(help="Fewest samples per case [suite's].",
                                                    show_default=False)] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output on stdout.",
                                                        case_sensitive=False)] = OutputFormat.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output: Annotated[Path | None, typer.Option("--markdown", help="Also write the markdown verdict here.",
                                                metavar="PATH")] = None,
    old_output: Annotated[Path | None, typer.Option("--output", hidden=True, help="Old spelling of --markdown.")
                          ] = None,
    interleave: Annotated[str, typer.Option(help="case: the sides take turns case by case (both need "
                                                 "mlabench.ab_worker); round: whole sweeps in turn; auto: case "
                                                 "when both sides can.")] = "auto",
) -> None:
    """Measure BASELINE and CANDIDATE alternately in one job and gate on the difference."""
    from mlabench import ab as ablib
    from mlabench.compare import GateSettings, compare_paths, render
    from mlabench.compare.html import render_html

    settings = GateSettings(threshold=threshold, alpha=alpha, strict=strict)  # bad values fail before any work
    if rounds < 2:
        raise typer.BadParameter("must be at least 2", param_hint="--rounds")
    if interleave not in ("auto", "case", "round"):
        raise typer.BadParameter("choose auto, case or round", param_hint="--interleave")
    workspace = ablib.Workspace()
    try:
        sides = (ablib.resolve_side("baseline", baseline, repo, workspace),
                 ablib.resolve_side("candidate", candidate, repo, workspace))
        for side in sides:
            where = ablib.check_side(side)
            err_console.print(f"{side.name}: {side.describe} (mlabench at {where})", markup=False)
        suite_path = ablib.suite_for(suite, sides[1])
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_dir = out or Path("results") / "ab" / f"{stamp}-{Path(suite_path).stem}"
        given = {"budget_s": budget, "min_samples": min_samples}
        settings_in = {k: v for k, v in given.items() if v is not None}
        err_console.print(f"[bold]mlabench ab[/] suite {suite_path}, {rounds} rounds per side -> {out_dir}")
        stop = {"requested": False}

        def on_sigint(_signum: int, _frame: object) -> None:
            if stop["requested"]:
                raise KeyboardInterrupt
            stop["requested"] = True
            err_console.print("[yellow]Ctrl-C: stopping after this round (again to stop now)[/]")

        def on_round(ev: ablib.RoundEvent) -> None:
            err_console.print(f"  round {ev.round_index + 1}/{ev.rounds} {ev.side}: {ev.seconds:.0f} s", markup=False)

        def on_sigterm(_signum: int, _frame: object) -> None:
            raise KeyboardInterrupt  # unwind, so the temporary worktrees are removed

        previous = signal.signal(signal.SIGINT, on_sigint)
        previous_term = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            base_dir, cand_dir = ablib.run_ab(sides, suite_path, rounds, out_dir, device, settings_in, on_round,
                                              lambda: stop["requested"], lockstep=None if interleave == "auto"
                                              else interleave == "case")
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
    finally:
        workspace.close()
    result = compare_paths(base_dir, cand_dir, settings)
    (out_dir / "compare.json").write_text(render.to_json(result) + "\n", encoding="utf-8")
    (out_dir / "compare.md").write_text(render.to_markdown(result), encoding="utf-8")
    (out_dir / "compare.html").write_text(render_html(result), encoding="utf-8")
    err_console.print(f"verdict written to {out_dir}/compare.json, compare.md and compare.html", markup=False)
    render_comparison(result, OutputFormat.json if as_json else output_format, output or old_output)
    if not result.passed:
        raise typer.Exit(1)
    sys.stdout.flush()
