"""Time verdicts: a test on per-round medians, Holm correction, a stated power per case.

Method, and why:
- The unit of replication is the round (one pass over the whole case list, see
  `mlabench.rounds`). Samples inside one run cannot see run-to-run noise (another
  tenant, clocks, placement): on a shared CPU the same code run twice moves whole
  cases by tens of percent while each case's samples stay tight, so a test on
  samples alone calls that noise a regression. Per-round medians carry it.
- Per case, the log per-round medians of the two sides are compared with a
  t-test whose variance is shrunk toward the cross-case estimate (empirical Bayes:
  Smyth's moderated t, limma's `fitFDist`). With 5-10 rounds a per-case variance
  has few degrees of freedom and the plain t-test has little power; the cases of
  one sweep share a machine, so their variances inform each other. The prior
  (s0^2, d0) is fitted to the per-case variances, not to the cases' ratios, so a
  block of genuinely changed cases does not hide itself. When both runs come
  from one `mlabench ab` job, round k of each side ran back to back, so the test
  is paired on rounds, which also cancels drift common to both sides. Two runs
  recorded apart (two `sweep --rounds`) are never paired: their round k have
  nothing in common, and pairing them would understate the noise.
- Effect size, compared with the threshold, is the ratio of the two medians the
  comparison prints (per side, the median of the per-round medians), with an
  interval of that same ratio: one preempted round moves a median little.
- Without rounds the test is a one-sided Mann-Whitney U test on the raw samples.
  It cannot see run-to-run noise, so the gate uses it only when asked (its
  verdict is marked WEAK), and a case past the threshold is never called `same`.
- p-values are Holm-corrected over all tested cases and both directions at once
  (2m one-sided tests, i.e. two-sided): a single false alarm fails the whole PR,
  and a reported improvement should be as trustworthy as a regression, so the
  family-wise error rate Holm bounds at `alpha` covers every flagged case.
- Power: each case states the smallest change it could call significant, the
  change whose expected test statistic reaches the critical value at alpha/(2m)
  (the first Holm step, m tested cases). A case that is not significant and
  cannot detect even twice the threshold (UNDERPOWERED_FACTOR) is `underpowered`,
  never `same`: it could not tell a change well past the threshold from noise.
  So is a case whose test cannot reach alpha/(2m) at all (too few samples for U).
  Between one and two thresholds a `same` is given with its detectable change.
- A case regresses only when the effect exceeds 1 + threshold AND the corrected
  test is significant.
Without samples a case falls back to the recorded medians and is never tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special, stats

TimeVerdict = Literal["regressed", "improved", "same", "inconclusive", "underpowered", "indicative"]
Method = Literal["rounds", "samples", "medians"]
UNDERPOWERED_FACTOR = 2.0  # not significant and cannot detect this many thresholds: underpowered
BOOTSTRAP_RESAMPLES = 1000  # enough for a percentile interval (Efron: >= 1000)
METHOD_ROUNDS = ("moderated t-test on per-round medians (empirical-Bayes variance), Holm correction")
MEDIAN_SE_FACTOR = 1.2533  # sqrt(pi / 2): a median's standard error over a mean's, normal noise
METHOD_SAMPLES = "Mann-Whitney U (one-sided) on samples with Holm correction; percentile bootstrap CI"


@dataclass(frozen=True)
class TimeStats:
    """One case's timing comparison before the multiple-comparison correction.

    `ratio` is the effect compared with the threshold; `se` and `df` describe the
    test statistic's scale (log ratio) for the power statement; `min_p` is the
    smallest p-value the test can produce (rank tests on few samples).
    """

    base_median: float
    cand_median: float
    n_base: int
    n_cand: int
    p_slower: float | None = None  # raw one-sided p, H1: candidate slower
    p_faster: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    method: Method = "medians"
    rounds_base: int = 0
    rounds_cand: int = 0
    se: float | None = None  # standard error of the log ratio
    df: float | None = None  # degrees of freedom of the test (inf: normal)
    min_p: float = 0.0

    @property
    def ratio(self) -> float:
        """The change compared with the threshold: candidate median / baseline median, as printed."""
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
    detectable: float = math.inf  # smallest significant change at the family's first Holm step
    note: str = ""


def _clean(samples: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if samples is None:
        return np.empty(0)
    a = np.asarray(samples, dtype=float)
    return a[np.isfinite(a) & (a > 0)]


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
    confidence: float = 0.99,
    seed: int = 0,
) -> TimeStats:
    """Medians, one-sided U-test p-values and the bootstrap CI of the ratio for one case."""
    return compare_many([(base, cand, base_median, cand_median)], confidence=confidence, seed=seed)[0]


def _robust_sd(logs: np.ndarray) -> np.ndarray:
    """Scaled MAD along the last axis: the noise of log samples, blind to the odd preempted sample."""
    med = np.median(logs, axis=-1, keepdims=True)
    return 1.4826 * np.median(np.abs(logs - med), axis=-1)


def compare_many(
    pairs: Sequence[tuple[Samples, Samples, float, float]], *, confidence: float = 0.99, seed: int = 0
) -> list[TimeStats]:
    """The samples-only test for many cases: (base samples, cand samples, base median, cand median) each.

    Cases with the same sample counts are stacked and tested in one vectorized
    call. With fewer than two samples on a side, the recorded medians are used
    and no test is run. `se` is the large-sample standard error of the log median
    ratio (1.2533 sigma / sqrt(n) per side), which is all the power statement of
    a test blind to run-to-run noise can use.
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
        sd_b, sd_c = _robust_sd(np.log(b2)), _robust_sd(np.log(c2))
        se = 1.2533 * np.sqrt(sd_b**2 / nb + sd_c**2 / nc)
        min_p = 1.0 / math.comb(nb + nc, nb)  # every candidate sample above every baseline sample
        for k, (i, _, _) in enumerate(members):
            out[i] = TimeStats(float(bmed[k]), float(cmed[k]), nb, nc, float(slower[k]), float(faster[k]),
                               float(low[k]), float(high[k]), method="samples", rounds_base=1, rounds_cand=1,
                               se=float(se[k]), df=math.inf, min_p=min_p)
    return [s for s in out if s is not None]


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x, by Newton's method (Smyth 2004, limma's trigammaInverse)."""
    if x > 1e7:
        return 1.0 / math.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        dif = tri * (1 - tri / x) / float(special.polygamma(2, y))
        y += dif
        if -dif / y < 1e-8:
            break
    return y


def fit_prior(s2: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """(s0^2, d0): the scaled inverse-chi-square prior of per-case variances (limma's fitFDist).

    d0 = inf means the cases' variances scatter no more than sampling explains:
    every case gets the common variance. Fewer than three usable cases: no prior (d0 = 0).
    """
    ok = (s2 > 0) & np.isfinite(s2) & (d > 0)
    if ok.sum() < 3:
        return 0.0, 0.0
    s2, d = s2[ok], d[ok]
    e = np.log(s2) - special.digamma(d / 2) + np.log(d / 2)
    emean = float(np.mean(e))
    evar = float(np.var(e, ddof=1) - np.mean(special.polygamma(1, d / 2)))
    if evar <= 0:
        return math.exp(emean), math.inf
    d0 = 2 * _trigamma_inverse(evar)
    return math.exp(emean + float(special.digamma(d0 / 2)) - math.log(d0 / 2)), d0


RoundMedians = Sequence[float] | np.ndarray


def _round_moments(lb: np.ndarray, lc: np.ndarray, paired: bool) -> tuple[np.ndarray, ...]:
    """Per case (rows): mean log ratio, its variance, the variance's degrees of freedom, the se factor.

    Paired (round k of both sides ran back to back) only with as many rounds on both sides:
    the test is then on the per-round differences, which cancels drift both sides saw.
    Otherwise the two sides' rounds are independent samples (pooled-variance t)."""
    rb, rc = lb.shape[1], lc.shape[1]
    if paired and rb == rc:
        dd = lc - lb  # (cases, rounds)
        return dd.mean(axis=1), dd.var(axis=1, ddof=1), np.full(len(dd), rb - 1.0), np.full(len(dd), (1 / rb) ** 0.5)
    dof = rb + rc - 2
    pooled = ((rb - 1) * lb.var(axis=1, ddof=1) + (rc - 1) * lc.var(axis=1, ddof=1)) / dof
    return (lc.mean(axis=1) - lb.mean(axis=1), pooled, np.full(len(lb), float(dof)),
            np.full(len(lb), (1 / rb + 1 / rc) ** 0.5))


def _t_sf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Student's t survival function, the normal one where df is infinite."""
    finite = np.isfinite(df)
    return np.where(finite, stats.t.sf(t, np.where(finite, df, 1.0)), stats.norm.sf(t))


def _t_isf(p: float, df: np.ndarray) -> np.ndarray:
    finite = np.isfinite(df)
    return np.where(finite, stats.t.isf(p, np.where(finite, df, 1.0)), stats.norm.isf(p))


def compare_rounds(
    base: Sequence[RoundMedians], cand: Sequence[RoundMedians], *, paired: bool = False, confidence: float = 0.99,
    n_base: Sequence[int] | None = None, n_cand: Sequence[int] | None = None,
) -> list[TimeStats]:
    """The moderated t-test for many cases at once; per case, each side's per-round medians (2+ each).

    `paired`: round k of one side was measured next to round k of the other (one
    `ab` job); used for the cases with the same number of rounds on both sides.
    Cases with the same round counts are computed together, vectorized.
    """
    m = len(base)
    diff, s2, d, k, bmed, cmed, rb, rc = (np.zeros(m) for _ in range(8))
    groups: dict[tuple[int, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, (b_raw, c_raw) in enumerate(zip(base, cand, strict=True)):
        lb, lc = np.log(_clean(b_raw)), np.log(_clean(c_raw))
        groups.setdefault((len(lb), len(lc)), []).append((i, lb, lc))
    for (nb, nc), members in groups.items():
        idx = np.array([mm[0] for mm in members])
        lb2, lc2 = np.stack([mm[1] for mm in members]), np.stack([mm[2] for mm in members])  # (cases, rounds)
        diff[idx], s2[idx], d[idx], k[idx] = _round_moments(lb2, lc2, paired)
        bmed[idx], cmed[idx] = np.exp(np.median(lb2, axis=1)), np.exp(np.median(lc2, axis=1))
        rb[idx], rc[idx] = nb, nc
    s02, d0 = fit_prior(s2, d)
    if math.isinf(d0):
        post, df = np.full(m, s02), np.full(m, math.inf)
    else:
        post, df = (d0 * s02 + d * s2) / (d0 + d), d0 + d
    se = np.sqrt(post) * k
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.sign(diff) * np.inf)
    t = np.nan_to_num(t, nan=0.0, posinf=np.inf, neginf=-np.inf)
    p_slower, p_faster = _t_sf(t, df), _t_sf(-t, df)
    # The effect shown and compared with the threshold is the ratio of the two printed medians
    # (medians of per-round medians); its interval is that ratio give or take the test's margin,
    # widened by 1.2533, the median's standard error over the mean's under normal noise.
    ratio = cmed / bmed
    half = _t_isf((1 - confidence) / 2, df) * se * MEDIAN_SE_FACTOR
    low, high = ratio * np.exp(-half), ratio * np.exp(half)
    nb_list = list(n_base) if n_base is not None else rb.astype(int).tolist()
    nc_list = list(n_cand) if n_cand is not None else rc.astype(int).tolist()
    return [
        TimeStats(float(bmed[i]), float(cmed[i]), int(nb_list[i]), int(nc_list[i]), float(p_slower[i]),
                  float(p_faster[i]), float(low[i]), float(high[i]), method="rounds", rounds_base=int(rb[i]),
                  rounds_cand=int(rc[i]), se=float(se[i]), df=float(df[i]))
        for i in range(m)
    ]


def detectable_changes(cases: Sequence[TimeStats], alpha: float) -> np.ndarray:
    """`TimeStats.detectable` for every case at once, the family being the tested cases."""
    tested = sum(s.has_test for s in cases)
    out = np.full(len(cases), math.inf)
    if not tested:
        return out
    level = alpha / (2 * tested)  # the first Holm step over both directions
    idx = [i for i, s in enumerate(cases) if s.has_test and s.se is not None and s.df is not None and s.min_p <= level]
    if idx:
        se = np.array([cases[i].se for i in idx], dtype=float)
        df = np.array([cases[i].df for i in idx], dtype=float)
        out[idx] = np.expm1(_t_isf(level, df) * se)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; None entries are not tested and stay None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if not idx:
        return out
    p = np.array([pvalues[i] for i in idx], dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    # (m - rank) * p, made monotone: a step never falls below an earlier one.
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    for j, a in zip(order, adjusted, strict=True):
        out[idx[j]] = float(a)
    return out


def classify(s: TimeStats, p_slower_adj: float | None, p_faster_adj: float | None,
             threshold: float, alpha: float, detectable: float = 0.0) -> TimeResult:
    """The verdict for one case, given its Holm-adjusted p-values and its detectable change."""
    ratio = s.ratio
    if not math.isfinite(ratio):
        return TimeResult(s, "inconclusive", None, detectable, "no usable latency on one side")
    change = f"{(ratio - 1) * 100:+.1f}%"
    slower = p_slower_adj is not None and p_slower_adj < alpha
    faster = p_faster_adj is not None and p_faster_adj < alpha
    p_dir = p_slower_adj if ratio >= 1 else p_faster_adj
    if ratio > 1 + threshold and slower:
        return TimeResult(s, "regressed", p_dir, detectable, f"{change} slower, significant")
    if ratio < 1 - threshold and faster:
        return TimeResult(s, "improved", p_dir, detectable, f"{change} faster, significant")
    beyond = abs(ratio - 1) > threshold
    if not s.has_test:
        why = "no raw samples: medians only, never significant"
        return TimeResult(s, "inconclusive" if beyond else "underpowered", p_dir, detectable, why)
    if not beyond and (slower or faster):
        ci_inside = s.ci_low is not None and s.ci_high is not None and (
            1 - threshold <= s.ci_low and s.ci_high <= 1 + threshold
        )
        if ci_inside:
            return TimeResult(s, "same", p_dir, detectable)
        return TimeResult(s, "inconclusive", p_dir, detectable,
                          f"{change} is within threshold but the CI [{s.ci_low:.3f}, {s.ci_high:.3f}] reaches past it")
    weak = detectable > UNDERPOWERED_FACTOR * threshold
    reach = ("cannot reach significance" if math.isinf(detectable)
             else f"detects only changes of {detectable:.0%} or more")
    if beyond:
        direction = "slower" if ratio > 1 else "faster"
        if weak:
            return TimeResult(s, "underpowered", p_dir, detectable, f"{change} {direction}, not significant: {reach}")
        return TimeResult(s, "inconclusive", p_dir, detectable, f"{change} {direction} but not significant")
    if weak:
        return TimeResult(s, "underpowered", p_dir, detectable, f"{change}, {reach}")
    return TimeResult(s, "same", p_dir, detectable)


def judge(cases: Sequence[TimeStats], threshold: float, alpha: float) -> list[TimeResult]:
    """Verdicts for all compared cases at once: the correction and the power statement span the sweep."""
    both = holm([s.p_slower for s in cases] + [s.p_faster for s in cases])
    slower, faster = both[: len(cases)], both[len(cases):]
    detect = detectable_changes(cases, alpha)
    return [classify(s, ps, pf, threshold, alpha, float(dt))
            for s, ps, pf, dt in zip(cases, slower, faster, detect, strict=True)]
