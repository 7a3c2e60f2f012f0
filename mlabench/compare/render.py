"""Render a `Comparison`: a rich table for the terminal, markdown for PR comments, one JSON document.

The markdown puts a one-line verdict first, then the cases that need a look,
and folds the unchanged ones into a <details> block so a sweep of hundreds of
cases still fits in a PR comment.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape as _escape
from rich.table import Table

from mlabench.compare.gate import CaseResult, Comparison
from mlabench.compare.timing import MIN_ROUNDS

VERDICT_STYLE = {
    "regressed": "bold red", "changed": "bold red", "inconclusive": "yellow", "only-baseline": "yellow",
    "only-candidate": "cyan", "underpowered": "magenta", "improved": "green", "indicative": "blue",
    "not-timed": "dim", "same": "dim",
}
VERDICT_MARK = {
    "regressed": "❌", "changed": "❌", "inconclusive": "⚠️", "only-baseline": "➖", "only-candidate": "➕",
    "underpowered": "🔍", "improved": "✅", "indicative": "ℹ️", "not-timed": "·", "same": "·",
}
QUIET = frozenset({"same", "not-timed", "underpowered"})
# GitHub rejects comments over 65,536 characters; unchanged rows are the ones to cut.
MD_QUIET_ROWS = 250


def _pct(v: float) -> str:
    return f"{v:.1%}" if v < 0.1 else f"{v:.0%}"


def evidence_text(cmp: Comparison) -> str:
    """How the timing verdicts were reached, and how much to trust them."""
    if cmp.evidence == "rounds":
        text = "timing on rounds, paired (one ab job)" if cmp.paired else "timing on rounds"
    elif cmp.evidence == "samples":
        text = "WEAK: timing judged on one run's samples (--sample-test), run-to-run noise not measured"
    elif cmp.evidence == "mixed":
        text = "partly WEAK: some timings judged on one run's samples only (--sample-test)"
    else:
        text = "no timing test"
    if cmp.indicative:
        rounds = cmp.fewest_rounds
        text += (f"; {cmp.indicative} timings indicative only, not gated: {rounds} round"
                 f"{'s' if rounds != 1 else ''} on a side, and a timing verdict needs {MIN_ROUNDS}+ on each to see "
                 f"run-to-run noise (record both runs with sweep --rounds {MIN_ROUNDS} or more, or use mlabench ab)")
    return text


def summary(cmp: Comparison) -> str:
    """'FAIL: 1 regressed, 190 same (...)': the one line a reviewer reads, with the gate's power."""
    head = "PASS" if cmp.passed else "FAIL"
    counts = ", ".join(f"{n} {v}" for v, n in cmp.counts.items() if n)
    s = cmp.settings
    rule = f"threshold {_pct(s.threshold)}, alpha {s.alpha:g}, {cmp.tested} cases tested"
    det = cmp.detectable
    if det is not None:
        rule += f", detects {_pct(det)} (median case)" if math.isfinite(det) else ", cannot reach significance"
    rule += f"; {evidence_text(cmp)}"
    if s.strict and cmp.mostly_underpowered:
        rule += f"; {cmp.underpowered_share:.0%} of timed cases underpowered (strict)"
    if cmp.missing:
        rule += f"; {cmp.missing_share:.0%} of baseline cases missing (limit {s.max_missing:.0%})"
    rule += "; strict" if s.strict else ""
    return f"{head}: {counts or 'no cases'} ({rule})"


def quiet(c: CaseResult, threshold: float) -> bool:
    """Folded out of the terminal table: unchanged, untimed, underpowered, or indicative within the threshold."""
    if c.verdict == "indicative":
        return c.ratio is None or abs(c.ratio - 1) <= threshold
    return c.verdict in QUIET


def _ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}"


def _change(c: CaseResult) -> str:
    if c.ratio is None or not math.isfinite(c.ratio):
        return "-"
    return f"{(c.ratio - 1) * 100:+.1f}%"


def _ci(c: CaseResult) -> str:
    if c.ci_low is None or c.ci_high is None:
        return "-"
    return f"[{(c.ci_low - 1) * 100:+.1f}%, {(c.ci_high - 1) * 100:+.1f}%]"


def _p(c: CaseResult) -> str:
    return "-" if c.p_value is None else f"{c.p_value:.2g}"


def _detectable(c: CaseResult) -> str:
    if not c.method or c.method == "medians":
        return "-"
    return "none" if c.detectable is None else f"{c.detectable * 100:.1f}%"


def _replicates(c: CaseResult) -> str:
    if c.method == "rounds":
        return f"{c.rounds_base}/{c.rounds_cand} rounds"
    if c.method == "samples":
        return f"{c.n_base}/{c.n_cand} samples"
    return "-"


def _status(c: CaseResult) -> str:
    if c.base_status == c.cand_status:
        return c.base_status or "-"
    return f"{c.base_status or '-'} -> {c.cand_status or '-'}"


def _row(c: CaseResult) -> list[str]:
    return [c.verdict, c.label, _status(c), _ms(c.base_ms), _ms(c.cand_ms), _change(c), _ci(c), _p(c),
            _detectable(c), _replicates(c), "; ".join(c.notes)]


HEADERS = ["verdict", "case", "status", "base ms", "cand ms", "change", "CI (change)", "p (Holm)", "detects",
           "replicates", "note"]
TERMINAL_HEADERS = [h for h in HEADERS if h != "replicates"]  # the summary line says rounds or samples


def print_table(cmp: Comparison, console: Console | None = None) -> None:
    """The terminal view: cases that need a look, worst first, then the notes and the summary line."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=240)  # piped output: keep each case on one line
    table = Table(title=f"{cmp.baseline} -> {cmp.candidate}", title_justify="left", show_lines=False)
    for h in TERMINAL_HEADERS:
        table.add_column(h, overflow="fold", justify="right" if h in ("base ms", "cand ms", "change", "p (Holm)",
                                                                      "detects") else "left")
    threshold = cmp.settings.threshold
    loud = [c for c in cmp.cases if not quiet(c, threshold)]
    for c in loud:
        cells = [x for h, x in zip(HEADERS, _row(c), strict=True) if h in TERMINAL_HEADERS]
        cells[0] = f"[{VERDICT_STYLE[c.verdict]}]{c.verdict}[/]"
        table.add_row(*cells[:1], *(_escape(x) for x in cells[1:]))
    if loud:
        console.print(table)
    folded_counts = Counter(c.verdict for c in cmp.cases if quiet(c, threshold))
    if folded_counts:
        # Hundreds of unchanged cases would bury the few that matter; JSON and markdown list them all.
        folded = " and ".join(f"{n} {v}" for v, n in folded_counts.items())
        console.print(f"[dim]{folded} cases not listed (--format markdown or --json lists every case)[/]")
    for note in cmp.env_notes:
        console.print(f"[yellow]note:[/] {_escape(note)}")
    style = "bold green" if cmp.passed else "bold red"
    console.print(f"[{style}]{_escape(summary(cmp))}[/]")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(cases: list[CaseResult]) -> list[str]:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for c in cases:
        cells = _row(c)
        cells[0] = f"{VERDICT_MARK[c.verdict]} {c.verdict}"
        cells[1] = f"`{cells[1]}`"
        lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
    return lines


def shown_path(path: str) -> str:
    """A run's path relative to the working directory: a PR comment must not carry the runner's
    absolute paths."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows): nothing relative to say
        return path


def to_markdown(cmp: Comparison) -> str:
    """A PR-comment-ready report: verdict line, cases needing attention, the rest folded."""
    mark = "✅" if cmp.passed else "❌"
    lines = [f"**mlabench compare {mark} {summary(cmp)}**", ""]
    lines.append(f"Baseline `{shown_path(cmp.baseline)}`, candidate `{shown_path(cmp.candidate)}`. "
                 f"Method: {cmp.method}.")
    lines += [f"- note: {_md_cell(n)}" for n in cmp.env_notes]
    lines.append("")
    loud = [c for c in cmp.cases if not quiet(c, cmp.settings.threshold)]
    rest = [c for c in cmp.cases if quiet(c, cmp.settings.threshold)]
    if loud:
        lines += _md_table(loud)
    else:
        lines.append("No case changed beyond the threshold.")
    if rest:
        lines += ["", f"<details><summary>{len(rest)} unchanged or not-timed cases</summary>", ""]
        lines += _md_table(rest[:MD_QUIET_ROWS])
        if len(rest) > MD_QUIET_ROWS:
            lines += ["", f"... and {len(rest) - MD_QUIET_ROWS} more (the --json output lists every case)."]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _key_value(text: str) -> int | str:
    """Shape fields as JSON numbers ('8' -> 8); names stay strings."""
    return int(text) if text.lstrip("-").isdigit() else text


def to_dict(cmp: Comparison) -> dict[str, Any]:
    s = cmp.settings
    return {
        "verdict": "pass" if cmp.passed else "fail",
        "exit_code": cmp.exit_code,
        "summary": summary(cmp),
        "counts": cmp.counts,
        "baseline": cmp.baseline,
        "candidate": cmp.candidate,
        "settings": {"threshold": s.threshold, "alpha": s.alpha, "strict": s.strict,
                     "allow_env_change": s.allow_env_change, "max_missing": s.max_missing,
                     "sample_test": s.sample_test},
        "missing": cmp.missing,
        "evidence": cmp.evidence,
        "weak": cmp.weak,
        "paired": cmp.paired,
        "indicative": cmp.indicative,
        "detectable": _num(cmp.detectable),
        "underpowered_share": cmp.underpowered_share,
        "method": cmp.method,
        "tested": cmp.tested,
        "notes": list(cmp.env_notes),
        "joined_ignoring": list(cmp.joined_ignoring),
        "cases": [
            {
                "case_id": c.case_id, "label": c.label, "verdict": c.verdict, "fails": c.fails(s.strict),
                "key": {k: _key_value(v) for k, v in c.key.items()},
                "base_status": c.base_status, "cand_status": c.cand_status,
                "base_ms": _num(c.base_ms), "cand_ms": _num(c.cand_ms), "ratio": _num(c.ratio),
                "ci_low": _num(c.ci_low), "ci_high": _num(c.ci_high), "p_value": _num(c.p_value),
                "n_base": c.n_base, "n_cand": c.n_cand, "rounds_base": c.rounds_base, "rounds_cand": c.rounds_cand,
                "method": c.method or None, "detectable": _num(c.detectable), "notes": list(c.notes),
            }
            for c in cmp.cases
        ],
    }


def to_json(cmp: Comparison) -> str:
    return json.dumps(to_dict(cmp), indent=2, allow_nan=False)
