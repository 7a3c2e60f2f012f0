"""The regression gate's statistics on synthetic samples whose true answer is known (seeded RNG)."""

from __future__ import annotations

import numpy as np
import pytest

from mlabench.compare.stats import TimeStats, classify, compare_many, compare_samples, holm, judge, noise_floor

THRESHOLD, ALPHA, N = 0.05, 0.05, 30


def lognormal(rng: np.random.Generator, noise: float, n: int = N, scale: float = 1.0) -> np.ndarray:
    return scale * np.exp(rng.normal(0.0, noise, size=n))


def verdicts(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    stats = compare_many([(b, c, np.nan, np.nan) for b, c in pairs])
    return [r.verdict for r in judge(stats, THRESHOLD, ALPHA)]


@pytest.mark.parametrize("noise", [0.01, 0.05, 0.10])
def test_same_distribution_never_regresses(noise: float) -> None:
    rng = np.random.default_rng(1234)
    found = verdicts([(lognormal(rng, noise), lognormal(rng, noise)) for _ in range(200)])
    assert "regressed" not in found
    assert "improved" not in found
    if noise <= 0.05:
        assert found.count("same") == 200


def test_ten_percent_slowdown_at_five_percent_noise_is_flagged() -> None:
    rng = np.random.default_rng(7)
    found = [verdicts([(lognormal(rng, 0.05), lognormal(rng, 0.05, scale=1.10))])[0] for _ in range(20)]
    assert found == ["regressed"] * 20


def test_slowdown_is_flagged_among_many_unchanged_cases() -> None:
    rng = np.random.default_rng(11)
    pairs = [(lognormal(rng, 0.05), lognormal(rng, 0.05)) for _ in range(199)]
    pairs.append((lognormal(rng, 0.05), lognormal(rng, 0.05, scale=1.10)))
    found = verdicts(pairs)
    assert found[-1] == "regressed"
    assert "regressed" not in found[:-1]


def test_ten_percent_speedup_is_improved() -> None:
    rng = np.random.default_rng(8)
    assert verdicts([(lognormal(rng, 0.05), lognormal(rng, 0.05, scale=0.90))]) == ["improved"]


@pytest.mark.parametrize("noise", [0.01, 0.02])
def test_three_percent_change_is_below_threshold(noise: float) -> None:
    # Real and significant, but under the 5% threshold: never a regression.
    rng = np.random.default_rng(9)
    found = [verdicts([(lognormal(rng, noise), lognormal(rng, noise, scale=1.03))])[0] for _ in range(20)]
    assert set(found) <= {"same", "inconclusive"}
    if noise == 0.01:
        assert found == ["same"] * 20  # precise enough that the CI sits inside +-5%


def test_three_percent_change_at_five_percent_noise_is_not_flagged() -> None:
    # At this noise a median ratio can land past 5% by chance (about one draw in ten), so one seeded draw.
    rng = np.random.default_rng(3)
    assert verdicts([(lognormal(rng, 0.05), lognormal(rng, 0.05, scale=1.03))])[0] in ("same", "inconclusive")


def test_one_outlier_does_not_flip_a_verdict() -> None:
    rng = np.random.default_rng(10)
    base = lognormal(rng, 0.05)
    spiked = base.copy()
    spiked[3] *= 100.0  # one preempted sample
    assert verdicts([(base, base.copy())]) == ["same"]
    assert verdicts([(base, spiked)]) == ["same"]
    assert verdicts([(spiked, base)]) == ["same"]
    slower = lognormal(rng, 0.05, scale=1.10)
    slower_spiked = slower.copy()
    slower_spiked[0] *= 100.0
    base_spiked = base.copy()
    base_spiked[5] *= 100.0
    assert verdicts([(base, slower)]) == ["regressed"]
    assert verdicts([(base, slower_spiked)]) == ["regressed"]
    assert verdicts([(base_spiked, slower)]) == ["regressed"]


def test_large_change_without_significance_is_inconclusive() -> None:
    rng = np.random.default_rng(12)
    # Three samples a side: no U test can reach p < 0.05 after correction.
    found = verdicts([(lognormal(rng, 0.05, n=3), lognormal(rng, 0.05, n=3, scale=1.5))])
    assert found == ["inconclusive"]


def test_missing_samples_fall_back_to_medians_and_are_never_significant() -> None:
    s = compare_samples(None, None, base_median=1.0, cand_median=1.5)
    assert s.ratio == pytest.approx(1.5)
    assert not s.has_test
    result = judge([s], THRESHOLD, ALPHA)[0]
    assert result.verdict == "inconclusive"
    assert "medians only" in result.note
    same = judge([compare_samples(None, [1.0], base_median=1.0)], THRESHOLD, ALPHA)[0]
    assert same.verdict == "same"


def test_classify_needs_the_ci_inside_the_threshold_to_call_a_significant_change_same() -> None:
    crossing = TimeStats(1.0, 1.04, 30, 30, p_slower=1e-4, p_faster=1.0, ci_low=1.01, ci_high=1.07)
    assert classify(crossing, 1e-4, 1.0, THRESHOLD, ALPHA).verdict == "inconclusive"
    inside = TimeStats(1.0, 1.02, 30, 30, p_slower=1e-4, p_faster=1.0, ci_low=1.01, ci_high=1.03)
    assert classify(inside, 1e-4, 1.0, THRESHOLD, ALPHA).verdict == "same"
    noisy = TimeStats(1.0, 1.04, 30, 30, p_slower=0.3, p_faster=0.7, ci_low=0.9, ci_high=1.2)
    assert classify(noisy, 0.3, 0.7, THRESHOLD, ALPHA).verdict == "same"


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.5, None]) == [None, 0.5, None]
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_verdicts_are_deterministic() -> None:
    rng = np.random.default_rng(13)
    b, c = lognormal(rng, 0.05), lognormal(rng, 0.05, scale=1.04)
    assert compare_samples(b, c) == compare_samples(b, c)


# --- the run-noise floor ---------------------------------------------------------------------
def floor_verdicts(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[str]]:
    stats = compare_many([(b, c, np.nan, np.nan) for b, c in pairs])
    floor = noise_floor(stats)
    return floor, [r.verdict for r in judge(stats, THRESHOLD, ALPHA, floor)]


def test_run_level_scatter_is_not_a_regression() -> None:
    """Two runs of the same code on a noisy host: every case moves by its own factor
    (sigma 25%) while its samples stay tight (2%). Without the floor most would 'regress'."""
    rng = np.random.default_rng(21)
    pairs = [(lognormal(rng, 0.02), lognormal(rng, 0.02, scale=float(np.exp(rng.normal(0, 0.25)))))
             for _ in range(60)]
    without = verdicts(pairs)
    assert without.count("regressed") > 10
    floor, found = floor_verdicts(pairs)
    assert floor > 0.4
    assert "regressed" not in found


def test_uniform_slowdown_has_no_scatter_and_is_flagged() -> None:
    """Every case x1.15 (a candidate whose samples were made 15% slower): no scatter, no floor."""
    rng = np.random.default_rng(22)
    base = [lognormal(rng, 0.05) for _ in range(40)]
    floor, found = floor_verdicts([(b, b * 1.15) for b in base])
    assert floor == pytest.approx(0.0, abs=1e-9)
    assert found == ["regressed"] * 40


def test_floor_ignores_a_block_of_regressed_cases() -> None:
    """45 of 100 cases 12% slower on a quiet device (1% noise): the unchanged majority sets the floor."""
    rng = np.random.default_rng(23)
    pairs = [(lognormal(rng, 0.01), lognormal(rng, 0.01, scale=1.12 if i < 45 else 1.0)) for i in range(100)]
    floor, found = floor_verdicts(pairs)
    assert floor < THRESHOLD
    assert found[:45] == ["regressed"] * 45
    assert "regressed" not in found[45:]


def test_floor_needs_enough_cases() -> None:
    rng = np.random.default_rng(24)
    pairs = [(lognormal(rng, 0.02), lognormal(rng, 0.02, scale=s)) for s in (0.5, 2.0, 1.0, 1.5)]
    floor, _ = floor_verdicts(pairs)
    assert floor == 0.0
