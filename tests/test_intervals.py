"""Interval helpers against published tables and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.intervals import (
    mean_interval,
    median_interval,
    min_samples,
    percentile_is_supported,
    t_quantile,
)


@pytest.mark.parametrize(
    ("n", "ranks", "coverage"),
    [
        # (l, n - l + 1) and 1 - 2 P(B <= l - 1), B ~ Binomial(n, 1/2), computed by hand:
        (6, (1, 6), 1 - 2 / 64),  # P(B <= 0) = 1/64
        (10, (2, 9), 1 - 2 * 11 / 1024),  # P(B <= 1) = 11/1024; P(B <= 2) = 56/1024 too big
        (100, (40, 61), None),  # the textbook ranks for n = 100 (Conover, Practical
        # Nonparametric Statistics, Table A3)
    ],
)
def test_median_interval_ranks(n, ranks, coverage):
    x = np.arange(1.0, n + 1)[::-1].copy()  # unsorted input: value = rank
    low, high, cov = median_interval(x)
    assert (low, high) == ranks
    assert cov >= 0.95
    if coverage is not None:
        assert cov == pytest.approx(coverage)


def test_median_interval_needs_six_samples():
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # 2/32 > 5 %


def test_median_interval_covers_the_median_of_a_skewed_distribution():
    """Exponential latencies (skewed like real ones), n = 20: coverage >= 95 % (exactly
    95.9 % in theory; one rank further in would give 88.5 %)."""
    rng = np.random.default_rng(0)
    true_median = math.log(2.0)
    trials = 4000
    hits = 0
    for _ in range(trials):
        low, high, _ = median_interval(rng.exponential(1.0, 20))
        hits += low <= true_median <= high
    assert hits / trials > 0.945


@pytest.mark.parametrize(
    ("df", "expected"),
    # Student's t, two-sided 95 % (upper 2.5 % point), from any published t table
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (30, 2.042)],
)
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_other_levels():
    assert t_quantile(0.90, 4) == pytest.approx(2.132, abs=6e-4)
    assert t_quantile(0.99, 7) == pytest.approx(3.499, abs=6e-4)


def test_mean_interval_by_hand():
    # mean 2, sd 1, n 3: 2 +- 4.303 / sqrt(3)
    low, high = mean_interval([1.0, 2.0, 3.0])
    half = 4.3027 / math.sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-3) and high == pytest.approx(2 + half, abs=1e-3)
    assert mean_interval([1.0]) is None and mean_interval([1.0, float("nan")]) is None


def test_percentile_support_rule():
    assert not percentile_is_supported(9, 90) and percentile_is_supported(10, 90)
    assert not percentile_is_supported(99, 99) and percentile_is_supported(100, 99)
    assert min_samples(90) == 10 and min_samples(99) == 100 and min_samples(50) == 2
