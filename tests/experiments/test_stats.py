"""Student's t and Welch's test (llm_lab/experiments/stats.py) against closed forms and the textbook table."""

from __future__ import annotations

import math

import pytest

from llm_lab.experiments.stats import (
    significance_marker,
    summarize,
    t_cdf,
    t_quantile,
    welch_t_test,
)


def cdf_df4(t: float) -> float:
    """Student's t CDF with 4 degrees of freedom in closed form:
    ``1/2 + (3/8) u (1 - u^2 / 12)`` with ``u = t / sqrt(1 + t^2/4)`` (the even-df series, two terms)."""
    u = t / math.sqrt(1 + t * t / 4)
    return 0.5 + 3 / 8 * u * (1 - u * u / 12)


@pytest.mark.parametrize("t", [-7.0, -1.3, 0.0, 0.4, 1.0, 2.5, 12.0])
def test_t_cdf_matches_closed_forms(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    assert t_cdf(t, 4) == pytest.approx(cdf_df4(t), abs=1e-13)
    assert t_cdf(t, 1e7) == pytest.approx(0.5 * (1 + math.erf(t / math.sqrt(2))), abs=1e-6)  # -> normal


@pytest.mark.parametrize(
    ("p", "df", "table"),
    # Two-sided 95% and 99% critical values as printed in every statistics textbook (3 decimals).
    [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 5, 2.571),
     (0.975, 10, 2.228), (0.975, 30, 2.042), (0.995, 4, 4.604), (0.995, 9, 3.250)],
)  # fmt: skip
def test_t_quantile_matches_the_table(p, df, table):
    assert round(t_quantile(p, df), 3) == table
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    assert t_quantile(1 - p, df) == pytest.approx(-t_quantile(p, df))


def test_welch_worked_by_hand():
    """a = (1, 2, 3), b = (4, 5, 6): means 2 and 5, sample variances 1 and 1.
    t = (2 - 5) / sqrt(1/3 + 1/3) = -3 / sqrt(2/3) = -3.6742; df = (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = 4;
    p = 2 (1 - F_4(3.6742)) = 0.021312 (F_4 in closed form above): significant at 5%, not at 1%."""
    result = welch_t_test([1, 2, 3], [4, 5, 6])
    assert result.difference == -3.0
    assert result.t == pytest.approx(-3 / math.sqrt(2 / 3), rel=1e-12)
    assert result.df == pytest.approx(4.0, rel=1e-12)
    assert result.p_value == pytest.approx(2 * (1 - cdf_df4(3 / math.sqrt(2 / 3))), rel=1e-9)
    assert round(result.p_value, 6) == 0.021312
    assert significance_marker(result.p_value) == "*"


def test_welch_unequal_variances_uses_satterthwaite_df():
    """a = (1, 2, 3, 4): mean 2.5, var 5/3, n 4; b = (2, 4, 6, 8, 10): mean 6, var 10, n 5.
    va = 5/12, vb = 2; df = (29/12)^2 / ((5/12)^2/3 + 2^2/4) = 5.8403 / 1.05787 = 5.5208."""
    result = welch_t_test([1, 2, 3, 4], [2, 4, 6, 8, 10])
    assert result.t == pytest.approx(-3.5 / math.sqrt(5 / 12 + 2), rel=1e-12)
    assert result.df == pytest.approx((29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 1), rel=1e-12)
    assert 0.05 < result.p_value < 0.1  # |t| = 2.251 lies between the df-5/6 critical values at 10% and 5%
    assert significance_marker(result.p_value) == "n.s."


def test_identical_samples_are_not_significant_and_a_broken_one_is():
    seeds = [3.01, 2.98, 3.03]
    same = welch_t_test(seeds, list(seeds))
    assert same.difference == 0.0 and same.p_value == 1.0 and significance_marker(same.p_value) == "n.s."
    broken = welch_t_test([4.17, 4.18, 4.16], seeds)
    assert broken.p_value < 0.001 and significance_marker(broken.p_value) == "***"
    # Bitwise-repeatable runs have no spread at all: equal means are not significant, different ones are.
    assert welch_t_test([2.0, 2.0], [2.0, 2.0]).p_value == 1.0
    assert welch_t_test([2.0, 2.0], [3.0, 3.0]).p_value == 0.0
    assert welch_t_test([2.0], [3.0, 3.1]) is None and significance_marker(None) == "n/a"


def test_summary_interval():
    """(1, 2, 3): mean 2, std 1, interval 2 +- 4.303 / sqrt(3) = [-0.4841, 4.4841]."""
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci_low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-6)
    assert s.ci_high == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-6)
    one = summarize([5.0])
    assert (one.mean, one.std, one.ci_low) == (5.0, None, None)
    with pytest.raises(ValueError, match="empty"):
        summarize([])
