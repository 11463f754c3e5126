"""fl_lab.analysis.claims: seeded results judged against their noise."""

import math
import statistics

import pytest

from fl_lab.analysis import FAILS, HOLDS, NOT_TESTED, WITHIN_NOISE, Claim, SeedStats, compare_seeds, format_claims


def test_seed_stats_are_the_sample_mean_std_and_standard_error():
    s = SeedStats((0.2, 0.3, 0.4))
    assert s.n == 3 and s.mean == pytest.approx(0.3) and s.std == pytest.approx(0.1)
    assert s.sem == pytest.approx(0.1 / math.sqrt(3))
    assert s.format() == "30.0 ± 10.0" and SeedStats((0.5,)).format() == "50.0 (1 seed)"
    with pytest.raises(ValueError, match="at least one"):
        SeedStats(())


T2, T4 = 4.303, 2.776  # two-sided 95 % critical values of t with 2 and 4 degrees of freedom (printed tables)


def _paired_interval(a, b, t):  # the rule written out: the per-seed differences' mean ± t · SE
    d = [x - y for x, y in zip(a, b, strict=True)]
    half = t * statistics.stdev(d) / math.sqrt(len(d))
    return statistics.fmean(d) - half, statistics.fmean(d) + half


def _stats(values, seeds=(0, 1, 2)):
    return SeedStats(tuple(values), seeds)


def test_arms_on_the_same_seeds_are_judged_on_their_differences():
    a, b = [0.30, 0.50, 0.70], [0.28, 0.475, 0.67]  # a spread far wider than the steady lead of 2-3 AP
    low, high = _paired_interval(a, b, T2)
    assert low > 0
    paired = compare_seeds("a beats b", _stats(a), _stats(b))
    assert paired.verdict == HOLDS and "paired over 3 seeds" in paired.detail
    assert f"[{100 * low:+.1f}, {100 * high:+.1f}]" in paired.detail
    # the same values without their seeds cannot pair: Welch's interval holds the spread of each arm
    assert compare_seeds("a beats b", a, b).verdict == WITHIN_NOISE
    # other seeds on each side: unpaired too
    assert "Welch" in compare_seeds("a beats b", _stats(a), _stats(b, (3, 4, 5))).detail


def test_a_claim_holds_fails_or_is_within_noise():
    clear = compare_seeds("a beats b", _stats([0.30, 0.31, 0.29]), _stats([0.20, 0.22, 0.21]))
    assert clear.verdict == HOLDS and "+9.0 ±" in clear.detail and "30.0 ± 1.0 vs 21.0 ± 1.0" in clear.detail
    reversed_ = compare_seeds("a beats b", _stats([0.10, 0.12, 0.11]), _stats([0.20, 0.22, 0.21]))
    assert reversed_.verdict == FAILS
    noisy_a, b = [0.30, 0.05, 0.55], [0.20, 0.22, 0.21]  # a noisy arm: its interval holds 0
    low, high = _paired_interval(noisy_a, b, T2)
    assert low < 0 < high and compare_seeds("a beats b", _stats(noisy_a), _stats(b)).verdict == WITHIN_NOISE
    assert compare_seeds("t", [0.3], [0.1, 0.2]).verdict == NOT_TESTED
    exact = compare_seeds("t", _stats([0.3, 0.4], (0, 1)), _stats([0.2, 0.3], (0, 1)))
    assert exact.verdict == HOLDS  # the same difference in every seed: no noise at all


def test_the_interval_uses_t_with_n_minus_1_degrees_of_freedom():
    # five seeds whose differences give a t statistic of 2.1: beyond 1.96 (normal), short of 2.776 (t, 4 df)
    d = [0.04, -0.005, 0.03, 0.0, 0.035]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(5))
    a, b = [0.5 + x for x in d], [0.5] * 5
    assert 2.0 < t < T4 and compare_seeds("t", _stats(a, range(5)), _stats(b, range(5))).verdict == WITHIN_NOISE


def test_an_arm_that_never_detects_is_a_floor_not_a_measurement():
    neither = compare_seeds("t", _stats([0.0, 0.0, 0.0]), _stats([0.0, 0.0, 0.0]))
    assert neither.verdict == NOT_TESTED and "neither detects" in neither.detail
    one = compare_seeds("t", _stats([0.02, 0.025, 0.03]), _stats([0.0, 0.0, 0.0]), names=("FL", "CE"))
    assert one.verdict == HOLDS and "CE detects nothing in any seed" in one.detail
    # differences are not metrics: all below 0 is a measurement, judged when the floor is switched off
    gaps_high, gaps_low = [-0.010, -0.012, -0.011], [-0.030, -0.028, -0.031]
    assert compare_seeds("t", gaps_high, gaps_low).verdict == NOT_TESTED
    assert compare_seeds("t", gaps_high, gaps_low, floor=None).verdict == HOLDS


def test_claims_check_their_verdict_and_format():
    assert Claim.check("x", True, "d").verdict == HOLDS and Claim.check("x", False, "d").verdict == FAILS
    assert Claim.check("x", None, "d").verdict == NOT_TESTED
    with pytest.raises(ValueError, match="verdict"):
        Claim("x", "probably", "d")
    text = format_claims([Claim.check("one", True, "1 vs 0"), compare_seeds("two", [0.1, 0.3], [0.2, 0.25])])
    assert text.splitlines() == ["one: holds — 1 vs 0", text.splitlines()[1]] and "two: within noise" in text


def test_t_critical_values_match_the_tables():
    from fl_lab.analysis import t_critical

    # two-sided 95 % (the 0.975 quantile) from printed tables of Student's t
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert t_critical(df) == pytest.approx(value, abs=5e-4)
    for df, value in ((31, 2.0395), (35, 2.0301), (40, 2.0211), (60, 2.0003), (120, 1.9799), (1000, 1.9623)):
        assert t_critical(df) == pytest.approx(value, abs=2e-4)  # beyond the table: the approximation
    with pytest.raises(ValueError, match="degrees of freedom must be an integer >= 1, got 0"):
        t_critical(0)


def test_paired_difference_is_judged_on_the_differences_seed_by_seed():
    from fl_lab.analysis import paired_difference

    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.5, 2.0])  # differences 1, 1.5, 1
    assert d.differences == (1.0, 1.5, 1.0) and d.mean == pytest.approx(7 / 6)
    sem = math.sqrt(((1 - 7 / 6) ** 2 * 2 + (1.5 - 7 / 6) ** 2) / 2) / math.sqrt(3)
    assert d.sem == pytest.approx(sem)
    assert (d.low, d.high) == pytest.approx((7 / 6 - 4.303 * sem, 7 / 6 + 4.303 * sem))
    # a shared seed effect cancels: large spread in each arm, a steady difference between them
    steady = paired_difference([10.0, 50.0, 90.0], [9.0, 49.2, 88.9])
    assert steady.low > 0
    with pytest.raises(ValueError, match="the same number of seeds, at least 2"):
        paired_difference([1.0, 2.0], [1.0])
