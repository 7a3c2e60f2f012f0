"""`mlabench ab BASELINE CANDIDATE`: the CI gate, both sides measured in one job, round by round.

Thin: resolve the two sides, run the rounds (progress on stderr), compare the two
run directories, write the verdict next to them, render. Exit codes as `compare`:
0 pass, 1 regression (or a --strict failure), 2 bad input or a side that cannot
run, 3 not comparable; 130 a second Ctrl-C, 143 SIGTERM (both stop at once). A
first Ctrl-C finishes the round in flight and gives the verdict of the rounds
done (or says that none finished).
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
    rounds: Annotated[int, typer.Option(help="Rounds per side (3 or more); each round is one pass over the whole "
                                             "suite in a fresh process.")] = 10,
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
    interleave: Annotated[str, typer.Option(help="case: the sides' round processes take turns case by case "
                                                 "(both sides need the per-round worker); round: whole sweep "
                                                 "processes in turn; auto: case when both sides can.")] = "auto",
) -> None:
    """Measure BASELINE and CANDIDATE alternately in one job and gate on the difference."""
    from mlabench import ab as ablib
    from mlabench.compare import GateSettings, compare_paths, render
    from mlabench.compare.html import render_html

    settings = GateSettings(threshold=threshold, alpha=alpha, strict=strict)  # bad values fail before any work
    if rounds < 3:
        raise typer.BadParameter("must be at least 3 (a timing verdict needs 3+ rounds on each side)",
                                 param_hint="--rounds")
    if interleave not in ("auto", "case", "round"):
        raise typer.BadParameter("choose auto, case or round", param_hint="--interleave")
    workspace = ablib.Workspace()
    stop = {"requested": False}

    def on_sigint(_signum: int, _frame: object) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt  # unwinds: the side processes are killed, the worktrees removed
        stop["requested"] = True
        err_console.print("[yellow]Ctrl-C: finishing this round, then the verdict of the rounds done "
                          "(again to stop now)[/]")

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise _Terminated  # CI cancelling the job: stop now, but unwind so nothing is left behind

    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        sides = (ablib.resolve_side("baseline", baseline, repo, workspace),
                 ablib.resolve_side("candidate", candidate, repo, workspace))
        protocols = []
        for side in sides:
            where, protocol = ablib.check_side(side)
            protocols.append(protocol)
            err_console.print(f"{side.name}: {side.describe} (mlabench at {where})", markup=False)
        suite_path = ablib.suite_for(suite, sides[1])
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_dir = out or Path("results") / "ab" / f"{stamp}-{Path(suite_path).stem}"
        given = {"budget_s": budget, "min_samples": min_samples}
        settings_in = {k: v for k, v in given.items() if v is not None}
        per_case = min(protocols) >= 2 if interleave == "auto" else interleave == "case"
        if per_case and min(protocols) < 2:
            raise typer.BadParameter("case needs the per-round worker on both sides (one side's mlabench "
                                     "predates it); use round or auto", param_hint="--interleave")
        err_console.print(f"[bold]mlabench ab[/] suite {suite_path}, {rounds} rounds per side, each in a fresh "
                          f"process -> {out_dir}")

        def on_round(ev: ablib.RoundEvent) -> None:
            err_console.print(f"  round {ev.round_index + 1}/{ev.rounds} {ev.side}: {ev.seconds:.0f} s", markup=False)

        done = ablib.run_ab(sides, suite_path, rounds, out_dir, device, settings_in, on_round,
                            lambda: stop["requested"], per_case=per_case)
    except _Terminated:
        err_console.print("mlabench ab: stopped by SIGTERM; no verdict", markup=False)
        raise typer.Exit(143) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        workspace.close()
    if done.startup_s is not None and done.wall_s > 0:
        err_console.print(f"process start-up: {done.startup_s:.1f} s of {done.wall_s:.0f} s "
                          f"({done.startup_s / done.wall_s:.0%} of the job)", markup=False)
    if done.rounds < rounds:
        if not done.rounds:
            err_console.print("mlabench ab: stopped by Ctrl-C before any round finished; no verdict", markup=False)
            raise typer.Exit(130)
        err_console.print(f"stopped by Ctrl-C after {done.rounds} of {rounds} rounds: the verdict of those "
                          "rounds follows", markup=False)
    result = compare_paths(done.baseline, done.candidate, settings)
    (out_dir / "compare.json").write_text(render.to_json(result) + "\n", encoding="utf-8")
    (out_dir / "compare.md").write_text(render.to_markdown(result), encoding="utf-8")
    (out_dir / "compare.html").write_text(render_html(result), encoding="utf-8")
    err_console.print(f"verdict written to {out_dir}/compare.json, compare.md and compare.html", markup=False)
    render_comparison(result, OutputFormat.json if as_json else output_format, output or old_output)
    if not result.passed:
        raise typer.Exit(1)
    sys.stdout.flush()


class _Terminated(BaseException):
    """SIGTERM inside `ab`: a BaseException, so that nothing on the way out mistakes it for an error."""
