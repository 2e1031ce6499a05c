"""The hypervolume of a speed/accuracy frontier, and how it grows job after job.

For two objectives, accuracy maximized and cost minimized, the hypervolume of a set of
points is the area of the region they dominate, bounded by a reference point
``(ref_cost, ref_accuracy)`` that is worse than every point on both axes (Zitzler & Thiele
1998's S metric). It grows whenever a new point moves the frontier, and only then: the
standard measure of how much of a frontier a search has found.

Cost is taken on a log10 scale by default: detector costs span orders of magnitude and the
report plots them on log axes, so halving the time of a 2 ms model counts as much as halving
that of a 200 ms one (and the area does not depend on the cost's unit). With
``log_cost=False`` the area is in (cost unit x accuracy unit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def hypervolume_2d(
    cost: Sequence[float],
    accuracy: Sequence[float],
    ref_cost: float,
    ref_accuracy: float = 0.0,
    *,
    log_cost: bool = True,
) -> float:
    """Area dominated by the points and bounded by the reference point.

    The frontier sorted by cost ascending (accuracy then ascending too) dominates the
    staircase ``sum_i (ref_cost - c_i) * (a_i - a_{i-1})`` with ``a_0 = ref_accuracy``.
    Points not strictly better than the reference on both axes, and NaNs, add nothing.

    Args:
        cost: shape ``[N]``, positive when ``log_cost``.
        accuracy: shape ``[N]``.
        ref_cost: the reference cost (above every point's).
        ref_accuracy: the reference accuracy (below every point's), 0 by default.
        log_cost: measure cost as log10(cost).

    Returns:
        The hypervolume (0.0 for no point inside the reference box).
    """
    c = np.asarray(cost, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    keep = np.isfinite(c) & np.isfinite(a) & (c < ref_cost) & (a > ref_accuracy)
    if log_cost:
        if ref_cost <= 0:
            raise ValueError(f"log cost needs a positive reference cost, got {ref_cost}")
        keep &= c > 0
        c, r = np.log10(np.where(keep, c, 1.0)), math.log10(ref_cost)
    else:
        r = float(ref_cost)
    c, a = c[keep], a[keep]
    area, best = 0.0, float(ref_accuracy)
    for i in np.lexsort((-a, c)):  # cheapest first; of equal costs the most accurate first
        if a[i] > best:
            area += (r - c[i]) * (a[i] - best)
            best = a[i]
    return float(area)


def reference_cost(costs: Sequence[float], margin: float = 1.1) -> float:
    """The reference cost for a comparison: ``margin`` x the largest finite cost, so the
    costliest point still adds its strip. Use one reference for every set compared."""
    finite = [float(c) for c in costs if c is not None and math.isfinite(float(c))]
    if not finite:
        raise ValueError("no finite cost to set a reference point from")
    return margin * max(finite)


def hypervolume_curve(
    cost: Sequence[float],
    accuracy: Sequence[float],
    ref_cost: float,
    ref_accuracy: float = 0.0,
    *,
    log_cost: bool = True,
) -> list[float]:
    """Hypervolume of the first k points, for k = 1..N (points in the order the jobs ran;
    a failed job is a NaN point: it costs a job and adds nothing)."""
    return [
        hypervolume_2d(cost[:k], accuracy[:k], ref_cost, ref_accuracy, log_cost=log_cost)
        for k in range(1, len(cost) + 1)
    ]


def jobs_to_reach(curve: Sequence[float], target: float) -> int | None:
    """The number of jobs after which ``curve`` first reaches ``target`` (None: never)."""
    for k, value in enumerate(curve, start=1):
        if value >= target - 1e-12 * max(1.0, abs(target)):
            return k
    return None
