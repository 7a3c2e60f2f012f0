"""Which evidence judges each case's timing: replicated rounds, a run's samples, or nothing.

The rule: a timing verdict needs replication on both sides. A case with at least
`MIN_ROUNDS` rounds on each side is tested on its per-round medians, paired on
rounds only when both runs come from one `mlabench ab` job (round k of each side
ran back to back there; two runs recorded apart have nothing in common at round
k). Any other case is `indicative`: its change is shown with the samples' medians
and interval but never fails the gate, because the samples of one run cannot see
what moves between runs (another tenant, clocks, the process's memory layout).
`GateSettings.sample_test` opts back into judging such cases on their samples,
for a machine known to be quiet; that verdict is marked WEAK. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlabench.compare import stats
from mlabench.rundir import RunData

MIN_ROUNDS = 3  # per side: fewer leaves a round-to-round variance with one degree of freedom or none


@dataclass(frozen=True)
class CaseSamples:
    samples: np.ndarray  # every sample, rounds in order
    rounds: np.ndarray  # per-round medians, by round number


Pair = tuple[CaseSamples | None, CaseSamples | None, float, float]  # base, cand, recorded medians


def sample_map(run: RunData) -> dict[str, CaseSamples]:
    """Every case's samples and per-round medians, by case id."""
    if run.samples is None or run.samples.empty:
        return {}
    frame = run.samples[np.isfinite(run.samples["latency_ms"])]
    ordered = frame.sort_values(["case_id", "round", "sample"])
    medians = ordered.groupby(["case_id", "round"], sort=True)["latency_ms"].median()
    out = {}
    for cid, g in ordered.groupby("case_id", sort=False):
        out[str(cid)] = CaseSamples(g["latency_ms"].to_numpy(dtype=float), medians.loc[cid].to_numpy(dtype=float))
    return out


def ab_job(run: RunData) -> str | None:
    ab = run.meta.get("ab") if isinstance(run.meta, dict) else None
    return str(ab.get("job")) if isinstance(ab, dict) and ab.get("job") else None


def paired_runs(base: RunData, cand: RunData) -> bool:
    """Round k of one run was measured next to round k of the other: both from the same `ab` job."""
    job = ab_job(base)
    return job is not None and job == ab_job(cand)


def replicated(pair: Pair) -> bool:
    b, c = pair[0], pair[1]
    return b is not None and c is not None and len(b.rounds) >= MIN_ROUNDS and len(c.rounds) >= MIN_ROUNDS


@dataclass(frozen=True)
class Timings:
    """Per pair: its statistics, and whether it belongs to the gated family (else indicative)."""

    stats: list[stats.TimeStats]
    gated: list[bool]
    paired: bool  # the round test was paired


def _on_samples(pairs: list[Pair], confidence: float) -> list[stats.TimeStats]:
    return stats.compare_many([(b.samples if b is not None else None, c.samples if c is not None else None, bm, cm)
                               for b, c, bm, cm in pairs], confidence=confidence)


def time_pairs(pairs: list[Pair], paired: bool, alpha: float, sample_test: bool) -> Timings:
    """The statistics of every pair: the round test where both sides are replicated, the samples'
    test elsewhere (gated only with `sample_test`)."""
    confidence = 1 - alpha
    out: list[stats.TimeStats | None] = [None] * len(pairs)
    by_round = [i for i, p in enumerate(pairs) if replicated(p)]
    others = [i for i in range(len(pairs)) if i not in set(by_round)]
    if by_round:
        sel = [pairs[i] for i in by_round]
        found = stats.compare_rounds([p[0].rounds for p in sel if p[0] is not None],
                                     [p[1].rounds for p in sel if p[1] is not None], paired=paired,
                                     confidence=confidence, n_base=[len(p[0].samples) for p in sel if p[0] is not None],
                                     n_cand=[len(p[1].samples) for p in sel if p[1] is not None])
        for i, st in zip(by_round, found, strict=True):
            out[i] = st
    if others:
        for i, st in zip(others, _on_samples([pairs[i] for i in others], confidence), strict=True):
            out[i] = st
    gated = [i in set(by_round) or sample_test for i in range(len(pairs))]
    # The round test pairs only cases with as many rounds on both sides (stats._round_moments).
    used = paired and any(s is not None and s.rounds_base == s.rounds_cand for s in (out[i] for i in by_round))
    return Timings([s for s in out if s is not None], gated, used)


def rounds_of(pair: Pair) -> int:
    """The fewer rounds of the two sides (0: a side has no samples)."""
    b, c = pair[0], pair[1]
    return min(len(b.rounds) if b is not None else 0, len(c.rounds) if c is not None else 0)


def indicative(s: stats.TimeStats, threshold: float, rounds: int) -> stats.TimeResult:
    """A timing the gate does not judge: its change and why it is not a verdict."""
    ratio = s.ratio
    why = (f"not gated: {rounds} round{'s' if rounds != 1 else ''} per side, needs {MIN_ROUNDS}+"
           if rounds else "not gated: no rounds")
    if not math.isfinite(ratio):
        return stats.TimeResult(s, "indicative", None, math.inf, f"no usable latency on one side; {why}")
    beyond = abs(ratio - 1) > threshold
    change = f"{(ratio - 1) * 100:+.1f}%" + (" slower" if beyond and ratio > 1 else " faster" if beyond else "")
    return stats.TimeResult(s, "indicative", None, math.inf, f"{change}, {why}")
