"""Distribution-free and small-sample confidence intervals (no scipy needed).

* :func:`median_interval` - the interval of a median from order statistics (binomial):
  latency samples are skewed and heavy-tailed, so no normal approximation.
* :func:`mean_interval` - Student's t interval of a mean, for seed repeats (n is 2-5).
* :func:`percentile_is_supported` - whether a sample is large enough for a percentile to be
  more than its largest value.

The accuracy intervals (bootstrap over validation images) are in :mod:`benchmark.bootstrap`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def median_interval(
    samples: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """Distribution-free confidence interval of the median from order statistics.

    With ``n`` independent samples, the number below the true median is Binomial(n, 1/2), so
    ``[x_(l), x_(n-l+1)]`` (1-based order statistics) covers it with probability
    ``1 - 2 P(B <= l - 1)``. ``l`` is the largest rank that keeps this at least
    ``confidence``.

    Returns:
        ``(low, high, coverage)`` with the exact coverage (>= ``confidence``), or None when
        ``n`` is too small for any interval to reach it (n < 6 at 95 %).
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    alpha = 1.0 - confidence
    total = 2**n
    tail = 0  # number of binomial outcomes B <= l - 1, summed exactly as integers
    best = None
    for l in range(1, n // 2 + 1):  # noqa: E741 (the order statistic's rank, as in textbooks)
        tail += math.comb(n, l - 1)
        miss = 2 * tail / total
        if miss > alpha:
            break
        best = (float(x[l - 1]), float(x[n - l]), 1.0 - miss)
    return best


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ...
                term *= c2 * (k - 1) / k
                total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):  # 1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ...
        term *= c2 * (k - 1) / k
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t critical value: ``P(|T| <= t) = confidence`` (bisection)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    low, high = 0.0, 1.0
    while _t_two_sided(high, df) < confidence:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if _t_two_sided(mid, df) < confidence:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * high:
            break
    return 0.5 * (low + high)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval of the mean of ``values`` (None with fewer than two values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    half = t_quantile(confidence, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def percentile_is_supported(n: int, q: float) -> bool:
    """Whether ``n`` samples give a ``q``-percentile (0-100) that is not just the extreme.

    The rule: at least one sample is expected above it, ``n * (1 - q/100) >= 1``, so p90
    needs 10 samples and p99 needs 100.
    """
    return n * (1.0 - q / 100.0) >= 1.0 - 1e-9


def min_samples(q: float) -> int:
    """The smallest ``n`` for which :func:`percentile_is_supported` holds."""
    return math.ceil(1.0 / (1.0 - q / 100.0) - 1e-9)
