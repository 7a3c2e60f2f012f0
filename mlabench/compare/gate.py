"""The regression gate: refuse incomparable runs, join cases, give every case a verdict.

Verdicts, in order of severity:
- regressed: slower past the threshold and significant, or status ok -> not ok
  (or skipped/unsupported -> failed);
- changed: a deterministic metric (schema.EXACT_COLUMNS) differs at all;
- inconclusive: neither clearly the same nor clearly different (fails with --strict);
- only-baseline / only-candidate: the case exists on one side (fails with --strict);
- underpowered: not significant, and the test could not have detected a change of
  twice the threshold (too few rounds or samples, too noisy); never `same`. A
  suite whose tested cases are mostly underpowered fails with --strict;
- improved: faster past the threshold and significant, or a failed case now ok;
- not-timed: not ok on both sides, nothing to compare;
- indicative: timing shown, not judged: fewer than 3 rounds on a side (`timing`);
- same.
A timing verdict needs replication on both sides (`mlabench.compare.timing`):
cases with 3+ rounds on each side are tested on their per-round medians, paired
only when both runs come from one `mlabench ab` job. Exact metrics and status
changes gate always, with rounds or without. Imports no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlabench import schema
from mlabench.compare import stats, timing
from mlabench.compare.env import check_environment, check_keys, check_profiled, check_timing, drift_join_columns
from mlabench.errors import UsageError
from mlabench.rundir import RunData, case_labels, join_ids, key_frame

Verdict = Literal[
    "regressed", "changed", "inconclusive", "only-baseline", "only-candidate", "underpowered", "improved",
    "indicative", "not-timed", "same"
]
SEVERITY: tuple[str, ...] = (
    "regressed", "changed", "inconclusive", "only-baseline", "only-candidate", "underpowered", "improved",
    "indicative", "not-timed", "same"
)
FAILING: frozenset[str] = frozenset({"regressed", "changed"})
STRICT_FAILING: frozenset[str] = frozenset({"inconclusive", "only-baseline", "only-candidate"})
REL_ERR_GROWTH = 10.0  # noted (not failed) when rel_err grows this much while still within tolerance
UNDERPOWERED_SHARE = 0.5  # --strict fails when more than this share of tested cases is underpowered


@dataclass(frozen=True)
class GateSettings:
    threshold: float = 0.05
    alpha: float = 0.01
    strict: bool = False
    allow_env_change: bool = False
    # Share of baseline cases the candidate may lack before the gate fails: a killed or
    # partial candidate sweep must not pass by having measured less.
    max_missing: float = 0.1
    # Judge unreplicated timings on one run's samples (blind to run-to-run noise; marked WEAK).
    sample_test: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_missing <= 1:
            raise UsageError(f"--max-missing must be a share between 0 and 1 (0.1 = 10%), got {self.max_missing}")
        if not 0 < self.threshold < 1:
            raise UsageError(f"--threshold must be between 0 and 1 (a fraction, 0.05 = 5%), got {self.threshold}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"--alpha must be between 0 and 1, got {self.alpha}")


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    label: str
    key: dict[str, str]
    verdict: Verdict
    base_status: str | None = None
    cand_status: str | None = None
    base_ms: float | None = None
    cand_ms: float | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None  # Holm-adjusted, in the direction of the change
    n_base: int = 0
    n_cand: int = 0
    rounds_base: int = 0
    rounds_cand: int = 0
    method: str = ""  # rounds | samples | medians; empty when not timed
    detectable: float | None = None  # smallest change this case could call significant (fraction)
    notes: tuple[str, ...] = ()

    def fails(self, strict: bool) -> bool:
        return self.verdict in FAILING or (strict and self.verdict in STRICT_FAILING)


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    settings: GateSettings
    cases: tuple[CaseResult, ...]
    env_notes: tuple[str, ...] = ()
    joined_ignoring: tuple[str, ...] = ()
    tested: int = 0  # cases in the multiple-comparison family
    evidence: str = "none"  # rounds | samples (weak: no run-to-run noise seen) | mixed | none
    paired: bool = False  # rounds paired: both runs from one `ab` job
    indicative: int = 0  # timed cases shown but not judged (fewer than 3 rounds on a side)
    fewest_rounds: int = 0  # the fewest rounds of a side among those cases
    method: str = field(default=stats.METHOD_ROUNDS)

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(c.verdict for c in self.cases)
        return {v: found.get(v, 0) for v in SEVERITY}

    @property
    def weak(self) -> bool:
        """Some tested case was judged on samples alone, blind to run-to-run noise."""
        return self.evidence in ("samples", "mixed")

    @property
    def detectable(self) -> float | None:
        """The median over tested cases of the smallest change each could detect."""
        values = [math.inf if c.detectable is None else c.detectable for c in self.cases
                  if c.method in ("rounds", "samples") and c.verdict != "indicative"]
        return float(np.median(values)) if values else None

    @property
    def underpowered_share(self) -> float:
        timed = [c for c in self.cases if c.method and c.verdict != "indicative"]
        return sum(c.verdict == "underpowered" for c in timed) / len(timed) if timed else 0.0

    @property
    def mostly_underpowered(self) -> bool:
        return self.underpowered_share > UNDERPOWERED_SHARE

    @property
    def failing(self) -> list[CaseResult]:
        return [c for c in self.cases if c.fails(self.settings.strict)]

    @property
    def missing(self) -> int:
        """Baseline cases the candidate does not have."""
        return sum(c.verdict == "only-baseline" for c in self.cases)

    @property
    def missing_share(self) -> float:
        in_baseline = sum(c.verdict != "only-candidate" for c in self.cases)
        return self.missing / in_baseline if in_baseline else 0.0

    @property
    def too_many_missing(self) -> bool:
        return self.missing_share > self.settings.max_missing

    @property
    def passed(self) -> bool:
        underpowered = self.settings.strict and self.mostly_underpowered
        return not self.failing and not self.too_many_missing and not underpowered

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def _exact_changes(b: dict[str, Any], c: dict[str, Any]) -> list[str]:
    notes = []
    for col in schema.EXACT_COLUMNS:
        bv, cv = schema.finite_number(b.get(col)), schema.finite_number(c.get(col))
        if bv is not None and cv is not None and bv != cv:
            notes.append(f"{col} {bv:,.0f} -> {cv:,.0f}")
    return notes


def _status_verdict(bs: str, cs: str, error: str) -> tuple[Verdict, str] | None:
    """The verdict when a side is not ok; None when both are ok (time decides)."""
    reason = f": {error}" if error else ""
    if bs == "ok" and cs != "ok":
        return "regressed", f"status ok -> {cs}{reason}"
    if bs != "ok" and cs == "ok":
        return "improved", f"now ok (was {bs})"
    if bs != "ok" and cs != "ok":
        if cs in schema.FAILED_STATUSES and bs not in schema.FAILED_STATUSES:
            return "regressed", f"status {bs} -> {cs}{reason}"
        return "not-timed", (f"{bs} on both sides" if bs == cs else f"status {bs} -> {cs}")
    return None


@dataclass(frozen=True)
class _Joined:
    """Both runs' rows keyed by join id, in baseline order then candidate-only cases."""

    base: dict[str, dict[str, Any]]
    cand: dict[str, dict[str, Any]]
    order: list[str]
    labels: dict[str, str]
    ignored: tuple[str, ...]
    notes: list[str]


def _join(base: RunData, cand: RunData, settings: GateSettings) -> _Joined:
    """Refuse incomparable runs, then key every row (ignoring drift columns only when allowed)."""
    for run in (base, cand):
        if run.results.empty:
            raise UsageError(f"{run.results_path}: has no rows; nothing to compare")
    notes = check_environment(base, cand, settings.allow_env_change)
    notes += check_timing(base, cand, settings.allow_env_change)
    notes += check_profiled(base, cand, settings.allow_env_change)
    bk, ck = key_frame(base.results), key_frame(cand.results)
    notes += check_keys(bk, ck, settings.allow_env_change)
    ignored = drift_join_columns(bk, ck) if settings.allow_env_change else ()
    if ignored:
        notes.append(f"cases joined ignoring {', '.join(ignored)} (--allow-env-change); exact metrics not failed")
    frames = []
    for run, keys in ((base, bk), (cand, ck)):
        frame = run.results.assign(_join=join_ids(keys, frozenset(ignored)))
        if frame["_join"].duplicated().any():
            notes.append(f"{run.results_path}: duplicate case keys; the last row of each is used")
        frame = frame.drop_duplicates("_join", keep="last")
        frames.append((frame, keys.loc[frame.index].set_axis(frame["_join"].to_numpy())))
    (b, b_keys), (c, c_keys) = frames
    # Plain dicts: row lookups by join id in a loop are much faster than .loc.
    b_rows = {r["_join"]: r for r in b.to_dict("records")}
    c_rows = {r["_join"]: r for r in c.to_dict("records")}
    order = list(b_rows) + [i for i in c_rows if i not in b_rows]
    keys = pd.concat([c_keys, b_keys])
    keys = keys[~keys.index.duplicated()].loc[order]
    labels = dict(zip(order, case_labels(keys.reset_index(drop=True)), strict=True))
    return _Joined(b_rows, c_rows, order, labels, tuple(ignored), notes)


def _from_rows(case: CaseResult, br: dict[str, Any] | None, cr: dict[str, Any] | None,
               ignored: tuple[str, ...]) -> tuple[CaseResult, tuple[str, ...], bool]:
    """The case as its two rows alone judge it, the exact-metric changes to apply last
    (`_finish`), and whether it still needs a timing verdict."""
    if br is None or cr is None:
        if br is None:
            assert cr is not None
            return replace(case, verdict="only-candidate", cand_status=str(cr["status"]),
                           notes=("new in the candidate",)), (), False
        return replace(case, verdict="only-baseline", base_status=str(br["status"]),
                       notes=("missing from the candidate",)), (), False
    case = replace(case, base_status=str(br["status"]), cand_status=str(cr["status"]),
                   base_ms=schema.finite_number(br["latency_ms"]), cand_ms=schema.finite_number(cr["latency_ms"]))
    notes: list[str] = []
    exact = _exact_changes(br, cr)
    if exact and ignored:
        notes.extend(f"{n} (not failed: {', '.join(ignored)} differ)" for n in exact)
        exact = []
    status = _status_verdict(str(br["status"]), str(cr["status"]), str(cr["error"]))
    if status is not None:
        verdict, note = status
        return replace(case, verdict=verdict, notes=(*notes, note)), tuple(exact), False
    rb, rc = schema.finite_number(br.get("rel_err")), schema.finite_number(cr.get("rel_err"))
    if rb and rc and rc > REL_ERR_GROWTH * rb:
        notes.append(f"rel_err grew {rc / rb:.0f}x ({rb:.1e} -> {rc:.1e}), still within tolerance")
    return replace(case, notes=tuple(notes)), tuple(exact), True


def _timed(case: CaseResult, result: stats.TimeResult) -> CaseResult:
    """The case with its timing verdict and statistics."""
    s = result.stats
    return replace(case, verdict=result.verdict, base_ms=s.base_median, cand_ms=s.cand_median,
                   ratio=s.ratio if math.isfinite(s.ratio) else None, ci_low=s.ci_low, ci_high=s.ci_high,
                   p_value=result.p_adjusted, n_base=s.n_base, n_cand=s.n_cand, rounds_base=s.rounds_base,
                   rounds_cand=s.rounds_cand, method=s.method,
                   detectable=result.detectable if math.isfinite(result.detectable) else None,
                   notes=((result.note,) if result.note else ()) + case.notes)


def _finish(case: CaseResult, exact: tuple[str, ...]) -> CaseResult:
    """Exact-metric changes override a same/improved/inconclusive time verdict."""
    verdict = "changed" if exact and case.verdict != "regressed" else case.verdict
    ratio = case.ratio
    if ratio is None and case.base_ms and case.cand_ms:
        ratio = case.cand_ms / case.base_ms
    return replace(case, verdict=verdict, ratio=ratio, notes=case.notes + exact)


def compare_runs(base: RunData, cand: RunData, settings: GateSettings) -> Comparison:
    """Join two runs on their case key and judge every case."""
    joined = _join(base, cand, settings)
    base_samples, cand_samples = timing.sample_map(base), timing.sample_map(cand)
    judged: dict[str, CaseResult] = {}
    exact: dict[str, tuple[str, ...]] = {}
    timed: list[str] = []
    pairs: list[timing.Pair] = []
    for jid in joined.order:
        br, cr = joined.base.get(jid), joined.cand.get(jid)
        row = cr or br
        assert row is not None
        case = CaseResult(case_id=str(row["case_id"]), label=joined.labels[jid], verdict="not-timed",
                          key={k: schema.normalize_key_value(row[k]) for k in schema.KEY_COLUMNS})
        judged[jid], exact[jid], needs_timing = _from_rows(case, br, cr, joined.ignored)
        if not needs_timing:
            continue
        assert br is not None and cr is not None
        timed.append(jid)
        pairs.append((base_samples.get(str(br["case_id"])), cand_samples.get(str(cr["case_id"])),
                      judged[jid].base_ms or math.nan, judged[jid].cand_ms or math.nan))

    # Rounds where both sides have 3+; the rest indicative (or, when asked, on samples). One Holm family.
    found = timing.time_pairs(pairs, timing.paired_runs(base, cand), settings.alpha, settings.sample_test)
    family = [st for st, g in zip(found.stats, found.gated, strict=True) if g]
    verdicts = iter(stats.judge(family, settings.threshold, settings.alpha))
    shown = [(st, timing.rounds_of(p)) for st, p, g in zip(found.stats, pairs, found.gated, strict=True) if not g]
    for jid, st, gated, pair in zip(timed, found.stats, found.gated, pairs, strict=True):
        result = next(verdicts) if gated else timing.indicative(st, settings.threshold, timing.rounds_of(pair))
        judged[jid] = _timed(judged[jid], result)
    methods = {s.method for s in family if s.has_test}
    evidence = "none" if not methods else methods.pop() if len(methods) == 1 else "mixed"

    # Worst first: by verdict, then the biggest change in that verdict's direction.
    cases = sorted((_finish(judged[j], exact[j]) for j in joined.order), key=lambda r: (
        SEVERITY.index(r.verdict), (r.ratio or 1.0) if r.verdict == "improved" else -(r.ratio or 0.0), r.label))
    missing = sum(c.verdict == "only-baseline" for c in cases)
    if missing:  # always shown, whether or not it fails the gate
        in_baseline = sum(c.verdict != "only-candidate" for c in cases)
        joined.notes.append(f"{missing} of {in_baseline} baseline cases missing from the candidate "
                            f"({missing / in_baseline:.0%}; the gate fails past --max-missing "
                            f"{settings.max_missing:.0%})")
    return Comparison(
        baseline=str(base.path), candidate=str(cand.path), settings=settings, cases=tuple(cases),
        env_notes=tuple(joined.notes), joined_ignoring=joined.ignored, tested=sum(s.has_test for s in family),
        evidence=evidence, paired=found.paired, indicative=len(shown),
        fewest_rounds=min((r for _, r in shown), default=0),
        method=_method(evidence),
    )


def _method(evidence: str) -> str:
    """How the timings were tested, for the report's method line."""
    if evidence == "none":
        return (f"no timing test (a timing verdict needs {timing.MIN_ROUNDS}+ rounds on each side; "
                "exact metrics and statuses compared)")
    if evidence in ("rounds", "samples"):
        return stats.METHOD_ROUNDS if evidence == "rounds" else stats.METHOD_SAMPLES
    return f"{stats.METHOD_ROUNDS} where both runs have {timing.MIN_ROUNDS}+ rounds; else {stats.METHOD_SAMPLES}"
