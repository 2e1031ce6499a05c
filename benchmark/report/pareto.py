"""Pareto frontiers (maximize accuracy, minimize a cost) and the paper's critical points.

Huang et al. 2017 overlay an "optimality frontier" on mAP vs time (Figure 2): the
configurations for which better accuracy can only be had by spending more time. Table 3
names three kinds of "critical" points on it: the fastest, the sweet spot (the elbow of the
curve, R-FCN / Faster R-CNN with ResNet in the paper) and the most accurate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Cost axes of the frontier table and figures: column -> short name used in file names.
COST_AXES = {"latency_ms": "latency", "gmacs": "gmacs", "peak_mem_mb": "memory"}
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


def noise_verdicts(front: pd.DataFrame, accuracy: str = "map") -> pd.DataFrame:
    """Whether each frontier point is really more accurate than its cheaper neighbour.

    The cheaper neighbour is the most accurate configuration that costs less, so the
    question is whether the extra cost buys accuracy beyond noise: ``better`` only when the
    point's interval (``<accuracy>_ci_low``/``_ci_high``) lies entirely above the
    neighbour's, ``not distinguishable`` when they overlap, ``no interval`` when either
    has none; empty for the cheapest point.

    Args:
        front: one frontier, sorted by cost.

    Returns:
        ``vs_cheaper`` and ``cheaper_label`` (the neighbour's label), aligned with ``front``.
    """
    out = pd.DataFrame({"vs_cheaper": "", "cheaper_label": ""}, index=front.index, dtype=object)
    low_col, high_col = f"{accuracy}_ci_low", f"{accuracy}_ci_high"
    nan = pd.Series(np.nan, index=front.index)
    lows = pd.to_numeric(front.get(low_col, nan), errors="coerce")
    highs = pd.to_numeric(front.get(high_col, nan), errors="coerce")
    labels = front.get("label", pd.Series("", index=front.index))
    for i in range(1, len(front)):
        low, cheaper_high = lows.iloc[i], highs.iloc[i - 1]
        if np.isnan(low) or np.isnan(cheaper_high) or np.isnan(lows.iloc[i - 1]):
            verdict = "no interval"
        else:
            verdict = "better" if low > cheaper_high else "not distinguishable"
        out.iloc[i] = [verdict, labels.iloc[i - 1]]
    return out


def frontier_table(
    df: pd.DataFrame, accuracy: str = "map", axes: dict[str, str] | None = None
) -> pd.DataFrame:
    """All frontiers in one table: ``axis`` (latency / gmacs / memory), ``critical``,
    ``vs_cheaper`` (:func:`noise_verdicts`), rows.

    Args:
        df: the results table (:func:`benchmark.report.table.load_results`), or its
            repeat summary (:func:`benchmark.report.repeats.summarize_repeats`), on which
            the report computes frontiers.
        accuracy: the accuracy column to maximize.
        axes: cost column -> axis name; default :data:`COST_AXES`.

    Returns:
        Frontier rows of every axis, cheapest first within an axis, with the identifying
        columns first; empty (with those columns) when nothing is plottable.
    """
    parts = []
    for cost, name in (axes or COST_AXES).items():
        if cost not in df or accuracy not in df:
            continue
        front = frontier(df, cost, accuracy)
        if front.empty:
            continue
        front = front.assign(
            axis=name, cost_column=cost, critical=critical_points(front, cost, accuracy)
        )
        parts.append(pd.concat([front, noise_verdicts(front, accuracy)], axis=1))
    lead = [
        "axis",
        "critical",
        "vs_cheaper",
        "cheaper_label",
        "label",
        "meta_arch",
        "extractor",
        "image_size",
        "num_proposals",
        "output_stride",
        "neck",
        accuracy,
        f"{accuracy}_ci_low",
        f"{accuracy}_ci_high",
        "n",
        *(axes or COST_AXES),
        "job",
    ]
    if not parts:
        return pd.DataFrame(columns=lead)
    table = pd.concat(parts, ignore_index=True)
    lead = [c for c in lead if c in table]
    return table[lead + [c for c in table.columns if c not in lead]]


_UNITS = {"latency_ms": "ms", "gmacs": "GMACs", "peak_mem_mb": "MiB"}


def indistinguishable_critical_points(front_table: pd.DataFrame, accuracy: str = "map") -> list:
    """Sentences for the critical points not distinguishable from their cheaper neighbour.

    Args:
        front_table: :func:`frontier_table` (one block per axis, cheapest first).

    Returns:
        One sentence per such point, e.g. ``latency: RefineDet w/ ResNet-18 (most accurate,
        25 ms) and SSD w/ ResNet-18 (23 ms): not distinguishable at this budget (mAP 31.2 %
        [29.0, 33.4] vs 30.1 % [27.9, 32.2])``.
    """
    out = []
    if front_table.empty or "vs_cheaper" not in front_table:
        return out
    low_col, high_col = f"{accuracy}_ci_low", f"{accuracy}_ci_high"

    def ap(row) -> str:
        return f"{100 * row[accuracy]:.1f} % [{100 * row[low_col]:.1f}, {100 * row[high_col]:.1f}]"

    for _, axis in front_table.groupby("axis", sort=False):
        for i in range(1, len(axis)):
            row, cheaper = axis.iloc[i], axis.iloc[i - 1]
            if not row["critical"] or row["vs_cheaper"] != "not distinguishable":
                continue
            cost = row["cost_column"]
            unit = _UNITS.get(cost, cost)
            out.append(
                f"{row['axis']}: {row['label']} ({row['critical']}, {row[cost]:.3g} {unit}) and "
                f"{cheaper['label']} ({cheaper[cost]:.3g} {unit}): not distinguishable at this "
                f"budget (mAP {ap(row)} vs {ap(cheaper)})"
            )
    return out
