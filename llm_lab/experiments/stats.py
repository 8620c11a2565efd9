"""Small-sample statistics for comparing runs over seeds: mean, standard deviation, a 95% interval, Welch's t-test.

Written out here (no scipy) because a sweep has 2-10 seeds per setting and needs only Student's t distribution:

- :func:`t_cdf` is the CDF of Student's t with ``df`` degrees of freedom (``df`` may be fractional, as Welch's
  is), from the regularised incomplete beta function ``I_x(a, b)``: for ``t >= 0``,
  ``P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2``. ``I_x`` is evaluated with its continued fraction (modified
  Lentz), which converges fast for ``x < (a+1)/(a+b+2)``, and through ``I_x(a, b) = 1 - I_{1-x}(b, a)`` otherwise.
- :func:`t_quantile` inverts it by bisection (the CDF is monotone), for confidence intervals.
- :func:`welch_t_test`: two-sided test of equal means without assuming equal variances (Welch 1947), with the
  Welch-Satterthwaite degrees of freedom.

The values are checked in ``tests/experiments/test_stats.py`` against closed forms (df 1, 2 and 4) and the
textbook table of t quantiles.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SIGNIFICANCE_LEVEL",
    "Summary",
    "WelchResult",
    "significance_marker",
    "summarize",
    "t_cdf",
    "t_quantile",
    "welch_t_test",
]

SIGNIFICANCE_LEVEL = 0.05
"""Two-sided level at which a difference is marked significant (one star); ``**`` below 0.01, ``***`` below 0.001."""

_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (modified Lentz); converges for ``x < (a + 1) / (a + b + 2)``."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")  # pragma: no cover


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the CDF of a Beta(a, b) variable at ``x`` (``a, b > 0``, ``0 <= x <= 1``)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"incomplete beta needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom (fractional ``df`` allowed)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``t`` with ``t_cdf(t, df) == p`` (bisection to ~1e-12), e.g. ``t_quantile(0.975, 4) = 2.776``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # the tail of df ~ 1 is heavy: widen until the bracket holds p
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and the 95% t interval of the mean, over ``n`` values (seeds).

    With one value the standard deviation and interval are ``None`` (there is no spread to estimate).
    """

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summarise ``values``; the interval is ``mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``.

    Raises:
        ValueError: no values.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("cannot summarise an empty list of values")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = statistics.stdev(values)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of ``mean(a) - mean(b)``: the difference, ``t``, the degrees of freedom and the p-value."""

    difference: float
    t: float
    df: float
    p_value: float


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Two-sided Welch's t-test of equal means; ``None`` when either side has fewer than two values.

    ``t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b)`` and
    ``df = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``.

    When both samples have no spread at all (runs that are bitwise repeatable give equal losses) the test is
    degenerate: equal means give p = 1, different means p = 0.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = summarize(a), summarize(b)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n  # type: ignore[operator]
    difference = sa.mean - sb.mean
    if va + vb == 0.0:
        same = difference == 0.0
        return WelchResult(difference, 0.0 if same else math.copysign(math.inf, difference), math.nan,
                           1.0 if same else 0.0)  # fmt: skip
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    p = regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # = 2 P(T > |t|), without 1 - F cancelling
    return WelchResult(difference, t, df, min(1.0, max(0.0, p)))


def significance_marker(p_value: float | None, alpha: float = SIGNIFICANCE_LEVEL) -> str:
    """``***`` (p < 0.001), ``**`` (p < 0.01), ``*`` (p < alpha), ``n.s.``; ``n/a`` without a test (one seed)."""
    if p_value is None:
        return "n/a"
    if p_value < 0.001:
        return "***"
    if p_value < 0.01:
        return "**"
    if p_value < alpha:
        return "*"
    return "n.s."
