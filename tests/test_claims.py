"""fl_lab.analysis.claims: seeded results judged against their noise."""

import math
import statistics

import pytest

from fl_lab.analysis import FAILS, HOLDS, NOT_TESTED, WITHIN_NOISE, Claim, SeedStats, compare_seeds, format_claims


def test_seed_stats_are_the_sample_mean_std_and_standard_error():
    s = SeedStats((0.2, 0.3, 0.4))
    assert s.n == 3 and s.mean == pytest.approx(0.3) and s.std == pytest.approx(0.1)
    assert s.sem == pytest.approx(0.1 / math.sqrt(3))
    assert s.format() == "30.0 ± 10.0" and SeedStats((0.5,)).format() == "50.0 ± 0.0 (n=1)"
    with pytest.raises(ValueError, match="at least one"):
        SeedStats(())


def _welch(a, b):  # the rule written out: difference of means over the root of summed squared SEs
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return (statistics.fmean(a) - statistics.fmean(b)) / se


def test_a_claim_holds_fails_or_is_within_noise():
    clear = compare_seeds("a beats b", [0.30, 0.31, 0.29], [0.20, 0.22, 0.21])
    assert clear.verdict == HOLDS and _welch([0.30, 0.31, 0.29], [0.20, 0.22, 0.21]) > 2
    assert "+9.0 ±" in clear.detail and "30.0 ± 1.0 vs 21.0 ± 1.0" in clear.detail
    reversed_ = compare_seeds("a beats b", [0.10, 0.12, 0.11], [0.20, 0.22, 0.21])
    assert reversed_.verdict == FAILS
    # the same means, but a noisy arm: the difference is inside 2 standard errors
    noisy = compare_seeds("a beats b", [0.30, 0.05, 0.55], [0.20, 0.22, 0.21])
    assert noisy.verdict == WITHIN_NOISE and abs(_welch([0.30, 0.05, 0.55], [0.20, 0.22, 0.21])) < 2
    assert compare_seeds("t", [0.3], [0.1, 0.2]).verdict == NOT_TESTED
    tie = compare_seeds("t", [0.0, 0.0], [0.0, 0.0])
    assert tie.verdict == WITHIN_NOISE  # no noise and no difference: no win
    exact = compare_seeds("t", [0.3, 0.3], [0.2, 0.2])
    assert exact.verdict == HOLDS  # no noise at all and a difference


def test_the_margin_is_the_number_of_standard_errors():
    a, b = [0.30, 0.32, 0.34], [0.28, 0.30, 0.32]  # difference 2, standard error ~1.63 (×100)
    assert 1 < _welch(a, b) < 2
    assert compare_seeds("t", a, b, margin=1.0).verdict == HOLDS
    assert compare_seeds("t", a, b, margin=2.0).verdict == WITHIN_NOISE


def test_claims_check_their_verdict_and_format():
    assert Claim.check("x", True, "d").verdict == HOLDS and Claim.check("x", False, "d").verdict == FAILS
    assert Claim.check("x", None, "d").verdict == NOT_TESTED
    with pytest.raises(ValueError, match="verdict"):
        Claim("x", "probably", "d")
    text = format_claims([Claim.check("one", True, "1 vs 0"), compare_seeds("two", [0.1, 0.3], [0.2, 0.2])])
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
