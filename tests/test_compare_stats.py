"""The regression gate's statistics on synthetic data whose true answer is known.

Targets are checked over many seeded draws (200 simulated comparisons of 200
cases each), never on one lucky seed: A/A false alarms at most 1% with 2%
per-round noise, one 10% regression among 200 cases found at least 95% of the
time, mixed +-30% changes flagged and never `same`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_runs import round_medians

from mlabench.compare.stats import (
    TimeStats,
    classify,
    compare_many,
    compare_rounds,
    compare_samples,
    fit_prior,
    holm,
    judge,
)

THRESHOLD, ALPHA = 0.05, 0.01
TRIALS, CASES = 200, 200


def round_verdicts(base: np.ndarray, cand: np.ndarray, paired: bool) -> list[str]:
    return [r.verdict for r in judge(compare_rounds(base, cand, paired=paired), THRESHOLD, ALPHA)]


def simulate(seed: int, factors: np.ndarray, *, paired: bool, heavy: bool = False, rounds: int = 10
             ) -> list[list[str]]:
    """Verdicts of TRIALS comparisons: baseline at 1, candidate at `factors` (CASES,)."""
    rng = np.random.default_rng(seed)
    ones = np.ones((TRIALS, len(factors)))
    # Same job (ab): a per-job shift of each case hits both sides alike.
    job = np.exp(rng.normal(0.0, 0.02, size=ones.shape)) if paired else None
    base = round_medians(rng, ones, job=job, heavy=heavy, rounds=rounds)
    cand = round_medians(rng, ones * factors, job=job, heavy=heavy, rounds=rounds)
    return [round_verdicts(base[t], cand[t], paired) for t in range(TRIALS)]


@pytest.mark.parametrize("paired", [True, False], ids=["ab-paired", "rounds-unpaired"])
def test_aa_false_alarms_at_most_one_percent(paired: bool) -> None:
    found = simulate(101, np.ones(CASES), paired=paired)
    alarms = sum("regressed" in v for v in found)
    assert alarms <= TRIALS // 100, f"{alarms} of {TRIALS} A/A comparisons failed"
    # 10 rounds x 10 samples at 2% round noise: most cases can see a 5% change, so --strict passes too.
    underpowered = sum(v.count("underpowered") for v in found) / (TRIALS * CASES)
    assert underpowered < 0.5


def test_aa_with_heavy_tailed_round_noise_stays_quiet() -> None:
    """Rounds that land 2-3x off now and then: the median effect keeps them from failing the gate."""
    found = simulate(102, np.ones(CASES), paired=True, heavy=True)
    assert sum("regressed" in v for v in found) <= TRIALS // 100


@pytest.mark.parametrize("paired", [True, False], ids=["ab-paired", "rounds-unpaired"])
def test_one_ten_percent_regression_among_200_is_found(paired: bool) -> None:
    factors = np.ones(CASES)
    factors[0] = 1.10
    found = simulate(103, factors, paired=paired)
    hits = sum(v[0] == "regressed" for v in found)
    assert hits >= 0.95 * TRIALS, f"found {hits} of {TRIALS}"
    assert sum("regressed" in v[1:] for v in found) <= TRIALS // 100


def test_mixed_thirty_percent_changes_are_flagged_never_same() -> None:
    """30 cases x1.30 and 30 x0.70 among 100 (the mix that a cross-case noise floor absorbed)."""
    factors = np.ones(100)
    factors[:30], factors[30:60] = 1.30, 0.70
    for paired in (True, False):
        for v in simulate(104, factors, paired=paired)[:50]:
            assert v[:30] == ["regressed"] * 30
            assert v[30:60] == ["improved"] * 30
            assert "regressed" not in v[60:]


def test_mixed_changes_with_few_rounds_are_never_same() -> None:
    """Two rounds a side and noisy rounds: the test may not reach significance, but never says same."""
    rng = np.random.default_rng(105)
    factors = np.ones(100)
    factors[:30], factors[30:60] = 1.30, 0.70
    for _ in range(20):
        base = round_medians(rng, np.ones((1, 100)), rounds=2, round_noise=0.15)[0]
        cand = round_medians(rng, factors[None], rounds=2, round_noise=0.15)[0]
        results = judge(compare_rounds(base, cand), THRESHOLD, ALPHA)
        for r in results[:60]:
            if abs(r.stats.ratio - 1) > THRESHOLD:
                assert r.verdict != "same", r


def test_power_is_stated_and_shrinks_with_rounds() -> None:
    rng = np.random.default_rng(106)
    detect = {}
    for rounds in (2, 10, 30):
        base = round_medians(rng, np.ones((1, 50)), rounds=rounds)[0]
        cand = round_medians(rng, np.ones((1, 50)), rounds=rounds)[0]
        results = judge(compare_rounds(base, cand, paired=True), THRESHOLD, ALPHA)
        detect[rounds] = float(np.median([r.detectable for r in results]))
    assert detect[2] > detect[10] > detect[30]
    assert detect[10] < 2 * THRESHOLD  # 10 rounds at 2% round noise see a change just past 5%
    assert detect[2] > 2 * THRESHOLD  # 2 rounds cannot: those cases are underpowered, not same


def test_underpowered_cases_are_not_same() -> None:
    rng = np.random.default_rng(107)
    base = round_medians(rng, np.ones((1, 40)), rounds=3, round_noise=0.10)[0]
    cand = round_medians(rng, np.ones((1, 40)), rounds=3, round_noise=0.10)[0]
    found = [r.verdict for r in judge(compare_rounds(base, cand, paired=True), THRESHOLD, ALPHA)]
    assert "same" not in found and "regressed" not in found
    assert found.count("underpowered") >= 35


def test_one_bad_round_does_not_flip_a_verdict() -> None:
    rng = np.random.default_rng(108)
    base = round_medians(rng, np.ones((1, 50)))[0]
    cand = round_medians(rng, np.ones((1, 50)))[0]
    cand[0, 4] *= 3.0  # one preempted round of one case
    assert judge(compare_rounds(base, cand, paired=True), THRESHOLD, ALPHA)[0].verdict != "regressed"


def test_fit_prior_recovers_a_common_variance() -> None:
    rng = np.random.default_rng(109)
    d = np.full(500, 9.0)
    s2 = 0.02**2 * rng.chisquare(9, size=500) / 9  # every case shares sigma 2%
    s02, d0 = fit_prior(s2, d)
    assert math.sqrt(s02) == pytest.approx(0.02, rel=0.1)
    assert d0 > 50
    assert fit_prior(s2[:2], d[:2]) == (0.0, 0.0)  # too few cases: no prior


# --- without rounds: the samples-only test (weak) ---------------------------------------------
def lognormal(rng: np.random.Generator, noise: float, n: int = 30, scale: float = 1.0) -> np.ndarray:
    return scale * np.exp(rng.normal(0.0, noise, size=n))


def sample_verdicts(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    stats = compare_many([(b, c, np.nan, np.nan) for b, c in pairs])
    return [r.verdict for r in judge(stats, THRESHOLD, ALPHA)]


def test_samples_only_same_distribution_never_regresses() -> None:
    rng = np.random.default_rng(1234)
    found = sample_verdicts([(lognormal(rng, 0.02), lognormal(rng, 0.02)) for _ in range(200)])
    assert "regressed" not in found and "improved" not in found
    assert found.count("same") > 190


def test_samples_only_slowdown_among_many_is_flagged() -> None:
    rng = np.random.default_rng(11)
    pairs = [(lognormal(rng, 0.05), lognormal(rng, 0.05)) for _ in range(99)]
    pairs.append((lognormal(rng, 0.05), lognormal(rng, 0.05, scale=1.3)))
    found = sample_verdicts(pairs)
    assert found[-1] == "regressed"
    assert "regressed" not in found[:-1]


def test_samples_only_mixed_changes_are_never_same() -> None:
    rng = np.random.default_rng(12)
    scales = [1.3] * 30 + [0.7] * 30 + [1.0] * 40
    found = sample_verdicts([(lognormal(rng, 0.05), lognormal(rng, 0.05, scale=s)) for s in scales])
    assert found[:30] == ["regressed"] * 30 and found[30:60] == ["improved"] * 30


def test_five_samples_cannot_reach_significance_and_say_so() -> None:
    """5 samples a side: the smallest U-test p is 1/252, out of reach after Holm over 13+ cases."""
    rng = np.random.default_rng(13)
    results = judge(compare_many([(lognormal(rng, 0.05, n=5), lognormal(rng, 0.05, n=5, scale=s), np.nan, np.nan)
                                  for s in [2.0] + [1.0] * 19]), THRESHOLD, ALPHA)
    assert all(r.verdict == "underpowered" for r in results)
    assert all(math.isinf(r.detectable) for r in results)
    assert "cannot reach significance" in results[0].note


def test_missing_samples_fall_back_to_medians_and_are_never_significant() -> None:
    s = compare_samples(None, None, base_median=1.0, cand_median=1.5)
    assert s.ratio == pytest.approx(1.5)
    assert not s.has_test
    result = judge([s], THRESHOLD, ALPHA)[0]
    assert result.verdict == "inconclusive"
    assert "medians only" in result.note
    flat = judge([compare_samples(None, [1.0], base_median=1.0)], THRESHOLD, ALPHA)[0]
    assert flat.verdict == "underpowered"  # untested is never `same`


def test_classify_needs_the_ci_inside_the_threshold_to_call_a_significant_change_same() -> None:
    crossing = TimeStats(1.0, 1.04, 30, 30, p_slower=1e-4, p_faster=1.0, ci_low=1.01, ci_high=1.07)
    assert classify(crossing, 1e-4, 1.0, THRESHOLD, ALPHA).verdict == "inconclusive"
    inside = TimeStats(1.0, 1.02, 30, 30, p_slower=1e-4, p_faster=1.0, ci_low=1.01, ci_high=1.03)
    assert classify(inside, 1e-4, 1.0, THRESHOLD, ALPHA).verdict == "same"
    noisy = TimeStats(1.0, 1.04, 30, 30, p_slower=0.3, p_faster=0.7, ci_low=0.9, ci_high=1.2)
    assert classify(noisy, 0.3, 0.7, THRESHOLD, ALPHA, detectable=0.03).verdict == "same"
    assert classify(noisy, 0.3, 0.7, THRESHOLD, ALPHA, detectable=0.08).verdict == "same"  # sees 2x threshold
    assert classify(noisy, 0.3, 0.7, THRESHOLD, ALPHA, detectable=0.12).verdict == "underpowered"
    beyond = TimeStats(1.0, 1.30, 30, 30, p_slower=0.3, p_faster=0.7, ci_low=0.9, ci_high=1.6)
    assert classify(beyond, 0.3, 0.7, THRESHOLD, ALPHA, detectable=0.03).verdict == "inconclusive"


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.5, None]) == [None, 0.5, None]
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_verdicts_are_deterministic() -> None:
    rng = np.random.default_rng(14)
    b, c = lognormal(rng, 0.05), lognormal(rng, 0.05, scale=1.04)
    assert compare_samples(b, c) == compare_samples(b, c)
    rb, rc = round_medians(rng, np.ones((1, 20)))[0], round_medians(rng, np.ones((1, 20)))[0]
    assert compare_rounds(rb, rc) == compare_rounds(rb, rc)
