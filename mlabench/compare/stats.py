"""Time verdicts from raw latency samples: median ratio, significance, multiple-comparison control.

Method, and why:
- Effect size is the ratio of medians (candidate / baseline). Medians ignore
  the odd slow sample (a clock dip, a preemption) that drags a mean.
- Significance is a one-sided Mann-Whitney U test per case ("candidate slower"
  for regressions, "candidate faster" for improvements). It is rank-based, so
  it assumes no distribution shape (GPU timings are skewed and often tied at
  the timer's resolution) and one outlier moves at most one rank.
- The p-values of all compared cases are corrected with Holm's step-down
  method. A sweep gates on hundreds of cases and a single false alarm fails
  the whole PR, which is exactly the family-wise error rate Holm bounds at
  `alpha` (Benjamini-Hochberg bounds the expected share of false alarms, a
  weaker promise for a pass/fail gate). Regressions and improvements are two
  separate families, each corrected on its own.
- A percentile bootstrap CI of the median ratio (scipy.stats.bootstrap) tells
  "same" apart from "could not tell": a change inside the threshold whose CI
  still reaches past it is not called same when it is significant.
- A case regresses only when the ratio exceeds 1 + threshold AND the corrected
  test is significant: the threshold keeps tiny real shifts (which many samples
  make significant) from failing, the test keeps noise from failing.
- Samples within one run cannot see run-to-run noise (another tenant, a clock
  or placement change between the runs): on a shared CPU the same code run twice
  moves whole cases by tens of percent while each case's samples stay tight. So
  the effective threshold is raised to a run-noise floor estimated from the
  scatter of the per-case log ratios across the sweep (`noise_floor`). The scale
  is the half-width of the shortest interval holding half the cases (Rousseeuw's
  shorth), which ignores a block of genuinely regressed cases as long as at
  least half of the cases did not move together with them; a uniform shift (every
  case x1.15) has no scatter and keeps the floor at zero. On a quiet GPU the floor
  stays under the threshold and changes nothing.
Without samples a case falls back to the recorded medians and is never
called significant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

TimeVerdict = Literal["regressed", "improved", "same", "inconclusive"]
NOISE_FLOOR_Z = 3.0  # how many run-noise standard deviations a change must exceed
NOISE_FLOOR_MIN_CASES = 8  # fewer cases cannot tell scatter from signal: no floor
BOOTSTRAP_RESAMPLES = 1000  # enough for a 95% percentile interval (Efron: >= 1000)
METHOD = "Mann-Whitney U (one-sided) with Holm correction; percentile bootstrap CI of the median ratio"


@dataclass(frozen=True)
class TimeStats:
    """One case's timing comparison before the multiple-comparison correction."""

    base_median: float
    cand_median: float
    n_base: int
    n_cand: int
    p_slower: float | None = None  # raw one-sided p, H1: candidate slower
    p_faster: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def ratio(self) -> float:
        if self.base_median > 0 and math.isfinite(self.base_median) and math.isfinite(self.cand_median):
            return self.cand_median / self.base_median
        return math.nan

    @property
    def has_test(self) -> bool:
        return self.p_slower is not None


@dataclass(frozen=True)
class TimeResult:
    stats: TimeStats
    verdict: TimeVerdict
    p_adjusted: float | None  # Holm-adjusted p in the direction of the change
    note: str = ""


def _clean(samples: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if samples is None:
        return np.empty(0)
    a = np.asarray(samples, dtype=float)
    return a[np.isfinite(a)]


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """np.median via a sort: for the short sample axis of a bootstrap it is several times faster."""
    s = np.sort(np.moveaxis(x, axis, -1), axis=-1)
    n = s.shape[-1]
    return (s[..., (n - 1) // 2] + s[..., n // 2]) / 2


def _median_ratio(cand: np.ndarray, base: np.ndarray, axis: int = -1) -> np.ndarray:
    return _median(cand, axis) / _median(base, axis)


Samples = Sequence[float] | np.ndarray | None


def compare_samples(
    base: Samples,
    cand: Samples,
    *,
    base_median: float = math.nan,
    cand_median: float = math.nan,
    confidence: float = 0.95,
    seed: int = 0,
) -> TimeStats:
    """Medians, one-sided U-test p-values and the bootstrap CI of the ratio for one case."""
    return compare_many([(base, cand, base_median, cand_median)], confidence=confidence, seed=seed)[0]


def compare_many(
    pairs: Sequence[tuple[Samples, Samples, float, float]], *, confidence: float = 0.95, seed: int = 0
) -> list[TimeStats]:
    """`compare_samples` for many cases: (base samples, cand samples, base median, cand median) each.

    Cases with the same sample counts are stacked and tested in one vectorized
    call (scipy's tests and bootstrap take an `axis`), which keeps a sweep of
    hundreds of cases fast. With fewer than two samples on a side, the recorded
    medians are used and no test is run (the caller notes the fallback).
    """
    out: list[TimeStats | None] = [None] * len(pairs)
    groups: dict[tuple[int, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, (base, cand, base_median, cand_median) in enumerate(pairs):
        b, c = _clean(base), _clean(cand)
        if len(b) < 2 or len(c) < 2:
            bm = float(np.median(b)) if len(b) else float(base_median)
            cm = float(np.median(c)) if len(c) else float(cand_median)
            out[i] = TimeStats(bm, cm, len(b), len(c))
        else:
            groups.setdefault((len(b), len(c)), []).append((i, b, c))
    for (nb, nc), members in groups.items():
        b2 = np.stack([m[1] for m in members])  # (cases, nb)
        c2 = np.stack([m[2] for m in members])  # (cases, nc)
        slower = np.atleast_1d(stats.mannwhitneyu(c2, b2, alternative="greater", axis=-1).pvalue)
        faster = np.atleast_1d(stats.mannwhitneyu(c2, b2, alternative="less", axis=-1).pvalue)
        # Fixed seed: the same two runs always give the same verdict.
        ci = stats.bootstrap(
            (c2, b2), _median_ratio, vectorized=True, paired=False, axis=-1, n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = np.atleast_1d(ci.low), np.atleast_1d(ci.high)
        bmed, cmed = np.median(b2, axis=-1), np.median(c2, axis=-1)
        for k, (i, _, _) in enumerate(members):
            out[i] = TimeStats(float(bmed[k]), float(cmed[k]), nb, nc, float(slower[k]), float(faster[k]),
                               float(low[k]), float(high[k]))
    return [s for s in out if s is not None]


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; None entries are not tested and stay None."""
    tested = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(tested)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))  # monotone: never below an earlier step
        out[i] = running
    return out


def classify(s: TimeStats, p_slower_adj: float | None, p_faster_adj: float | None,
             threshold: float, alpha: float) -> TimeResult:
    """The verdict for one case, given its Holm-adjusted p-values."""
    ratio = s.ratio
    if not math.isfinite(ratio):
        return TimeResult(s, "inconclusive", None, "no usable latency on one side")
    change = f"{(ratio - 1) * 100:+.1f}%"
    slower = p_slower_adj is not None and p_slower_adj < alpha
    faster = p_faster_adj is not None and p_faster_adj < alpha
    p_dir = p_slower_adj if ratio >= 1 else p_faster_adj
    fallback = "" if s.has_test else "no raw samples: medians only, never significant"
    if ratio > 1 + threshold and slower:
        return TimeResult(s, "regressed", p_dir, f"{change} slower, significant")
    if ratio < 1 - threshold and faster:
        return TimeResult(s, "improved", p_dir, f"{change} faster, significant")
    if abs(ratio - 1) <= threshold:
        ci_inside = s.ci_low is not None and s.ci_high is not None and (
            1 - threshold <= s.ci_low and s.ci_high <= 1 + threshold
        )
        if ci_inside or not (slower or faster):
            return TimeResult(s, "same", p_dir, fallback)
        return TimeResult(s, "inconclusive", p_dir,
                          f"{change} is within threshold but the CI [{s.ci_low:.3f}, {s.ci_high:.3f}] reaches past it")
    direction = "slower" if ratio > 1 else "faster"
    why = fallback or "not significant after correction"
    return TimeResult(s, "inconclusive", p_dir, f"{change} {direction} but {why}")


def noise_floor(cases: Sequence[TimeStats]) -> float:
    """Run-to-run noise seen across the sweep, as a fractional change (0.2 = 20%).

    exp(Z * sigma) - 1, where sigma is the shorth scale of the per-case log ratios:
    half the shortest interval holding half (plus one) of them, divided by 0.674
    (the normal quartile), so it equals the standard deviation for Gaussian scatter.
    """
    logs = np.sort([math.log(s.ratio) for s in cases if math.isfinite(s.ratio) and s.ratio > 0])
    n = len(logs)
    if n < NOISE_FLOOR_MIN_CASES:
        return 0.0
    h = n // 2 + 1
    half_width = float(np.min(logs[h - 1:] - logs[: n - h + 1])) / 2
    return math.expm1(NOISE_FLOOR_Z * half_width / 0.674)


def judge(cases: Sequence[TimeStats], threshold: float, alpha: float,
          floor: float = 0.0) -> list[TimeResult]:
    """Verdicts for all compared cases at once: the correction spans the whole sweep.
    `floor` (from `noise_floor`) raises the threshold when the runs themselves are noisy."""
    slower = holm([s.p_slower for s in cases])
    faster = holm([s.p_faster for s in cases])
    effective = max(threshold, floor)
    return [classify(s, ps, pf, effective, alpha) for s, ps, pf in zip(cases, slower, faster, strict=True)]
