"""Pareto frontiers (maximize accuracy, minimize a cost) and the paper's critical points.

Huang et al. 2017 overlay an "optimality frontier" on mAP vs time (Figure 2): the
configurations for which better accuracy can only be had by spending more time. Table 3
names three kinds of "critical" points on it: the fastest, the sweet spot (the elbow of the
curve, R-FCN / Faster R-CNN with ResNet in the paper) and the most accurate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.schema import cost_axes

# Default cost axes of the frontier table and figures: column -> short name used in file
# names; declared in benchmark/schema/keys.py (``axis=``).
COST_AXES = cost_axes()
CRITICAL = ("fastest", "cheapest", "sweet spot", "most accurate")


def pareto_mask(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Which points are Pareto-optimal for (min cost, max accuracy).

    A point is kept when no other point is at most as costly and strictly more accurate, or
    strictly cheaper and at least as accurate. Of exact duplicates the first is kept. NaNs
    are never on the frontier.

    Args:
        cost: shape ``[N]``.
        accuracy: shape ``[N]``.

    Returns:
        Boolean mask of shape ``[N]``.
    """
    cost = np.asarray(cost, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    mask = np.zeros(len(cost), dtype=bool)
    valid = np.flatnonzero(np.isfinite(cost) & np.isfinite(accuracy))
    # Cheapest first, and among equal costs the most accurate first: a point is then optimal
    # exactly when it beats the best accuracy seen so far (a stable sort keeps the first twin).
    order = valid[np.lexsort((-accuracy[valid], cost[valid]))]
    best = -np.inf
    for i in order:
        if accuracy[i] > best:
            mask[i] = True
            best = accuracy[i]
    return mask


def frontier(df: pd.DataFrame, cost: str, accuracy: str = "map") -> pd.DataFrame:
    """The Pareto-optimal rows of ``df`` (status ok), sorted by increasing cost."""
    rows = df[df["status"] == "ok"] if "status" in df else df
    rows = rows.dropna(subset=[cost, accuracy])
    mask = pareto_mask(rows[cost].to_numpy(), rows[accuracy].to_numpy())
    return rows[mask].sort_values(cost, kind="stable")


def sweet_spot(cost: np.ndarray, accuracy: np.ndarray, *, log_cost: bool = True) -> int | None:
    """Index of the elbow of a frontier sorted by cost, or None with fewer than three points.

    The elbow is the interior point farthest above the chord from the fastest to the most
    accurate point, after scaling both axes to [0, 1] (cost on a log scale by default, since
    costs of detectors span orders of magnitude and the paper's elbow is a relative notion:
    "most accuracy per extra millisecond").
    """
    if len(cost) < 3:
        return None
    x = np.log(np.maximum(cost, 1e-12)) if log_cost else np.asarray(cost, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    span_x, span_y = x[-1] - x[0], y[-1] - y[0]
    if span_x <= 0 or span_y <= 0:
        return None
    xn, yn = (x - x[0]) / span_x, (y - y[0]) / span_y
    height = yn - xn  # distance above the diagonal chord, up to a constant factor
    interior = height[1:-1]
    return int(np.argmax(interior)) + 1 if interior.max() > 0 else None


def cheapest_name(cost: str) -> str:
    """``fastest`` on a time axis (the paper's word), ``cheapest`` on GMACs or memory."""
    return "fastest" if cost.endswith("_ms") else "cheapest"


def critical_points(front: pd.DataFrame, cost: str, accuracy: str = "map") -> pd.Series:
    """Name the critical points of a frontier (sorted by cost): a Series aligned with it.

    Returns:
        ``"fastest"`` (``"cheapest"`` when the cost is not a time) / ``"sweet spot"`` /
        ``"most accurate"`` or ``""`` per frontier row; a one-point frontier is both the
        cheapest and the most accurate (named after its cost and listed once).
    """
    names = pd.Series("", index=front.index, dtype=object)
    if front.empty:
        return names
    names.iloc[-1] = "most accurate"
    names.iloc[0] = cheapest_name(cost)
    spot = sweet_spot(front[cost].to_numpy(float), front[accuracy].to_numpy(float))
    if spot is not None:
        names.iloc[spot] = "sweet spot"
    return names


def frontier_table(
    df: pd.DataFrame, accuracy: str = "map", axes: dict[str, str] | None = None
) -> pd.DataFrame:
    """All frontiers in one table: ``axis`` (latency / gmacs / memory), ``critical``, rows.

    Args:
        df: the results table (:func:`benchmark.report.table.load_results`).
        accuracy: the accuracy column to maximize.
        axes: cost column -> axis name; default :func:`benchmark.schema.cost_axes`.

    Returns:
        Frontier rows of every axis, cheapest first within an axis, with the identifying
        columns first; empty (with those columns) when nothing is plottable.
    """
    axes = axes or cost_axes()
    parts = []
    for cost, name in axes.items():
        if cost not in df or accuracy not in df:
            continue
        front = frontier(df, cost, accuracy)
        if front.empty:
            continue
        front = front.assign(
            axis=name, cost_column=cost, critical=critical_points(front, cost, accuracy)
        )
        parts.append(front)
    lead = [
        "axis",
        "critical",
        "label",
        "meta_arch",
        "extractor",
        "image_size",
        "num_proposals",
        "output_stride",
        "neck",
        accuracy,
        *axes,
        "job",
    ]
    if not parts:
        return pd.DataFrame(columns=lead)
    table = pd.concat(parts, ignore_index=True)
    lead = [c for c in lead if c in table]
    return table[lead + [c for c in table.columns if c not in lead]]
