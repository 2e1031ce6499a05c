"""The cost analyses of Huang et al. 2017 (Figures 7-10) drawn from a results table: time per
model with its stage split, multiply-adds vs time, memory per model, memory vs time.

Like :mod:`.paper_figures`, each function returns a ``Figure`` or None when the table has
nothing to plot.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmark.report import figures as fg
from benchmark.report.style import colour_for, extractor_name, label, meta_arch_name, styled
from benchmark.report.table import ok_rows


@styled
def latency_breakdown_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 7: time per model (lowest resolution), split into the three stages."""
    rows = fg.representative(ok_rows(df, "latency_ms")).sort_values("latency_ms", ascending=False)
    if rows.empty:
        return None
    n = len(rows)
    fig = Figure(figsize=(8.6, max(2.6, 0.34 * n + 1.6)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)
    stages = [
        ("preprocess_ms", "preprocess", "#9ecae1"),
        ("predict_ms", "network (predict)", "#3182bd"),
        ("postprocess_ms", "postprocess (decode + NMS)", "#fd8d3c"),
    ]
    if rows[[s for s, _, _ in stages]].notna().all(axis=1).any():
        left = np.zeros(n)
        for column, name, colour in stages:
            values = rows[column].fillna(0).to_numpy()
            ax.barh(y, values, left=left, color=colour, edgecolor="0.3", linewidth=0.4, label=name)
            left += values
    else:
        ax.barh(y, rows["latency_ms"], color="#3182bd", label="end to end")
    p90 = rows["latency_ms_p90"] - rows["latency_ms"]
    ax.errorbar(
        rows["latency_ms"],
        y,
        xerr=[np.zeros(n), p90.clip(lower=0).fillna(0)],
        fmt="|",
        color="black",
        ms=10,
        capsize=3,
        lw=0.9,
        label="end-to-end median, whisker to p90",
    )
    ax.set_yticks(
        y, [t.replace("\n", " w/ ", 1).replace("\n", " ") for t in fg.tick_labels(rows)], fontsize=8
    )
    ax.set_xlabel("Time per image, batch 1 (ms; bars = stage medians)")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside right upper")
    fg.axes_title(ax, f"Time per model ({int(rows['image_size'].min())} px)", rows)
    return fig


def _cost_scatter(df: pd.DataFrame, x: str, y: str, title: str) -> Figure | None:
    rows = ok_rows(df, x, y)
    if len(rows) < 2:
        return None
    fig = Figure(figsize=(8.6, 5.0), layout="constrained")
    ax = fig.subplots()
    fg.scatter_models(ax, rows, x, y)
    fg.set_log_axis(ax, "x", rows[x])
    fg.set_log_axis(ax, "y", rows[y])
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    fg.axes_title(ax, title, rows)
    fg.model_legends(ax, rows)
    return fig


@styled
def flops_vs_time_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 8: multiply-adds vs measured latency (how well FLOPs predict time here)."""
    return _cost_scatter(df, "gmacs", "latency_ms", "Multiply-adds vs time")


@styled
def memory_vs_time_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 10: peak inference memory vs latency."""
    return _cost_scatter(df, "peak_mem_mb", "latency_ms", "Memory vs time")


@styled
def memory_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 9: peak memory per model; whiskers span its proposal / stride variants."""
    rows = ok_rows(df, "peak_mem_mb")
    if rows.empty:
        return None
    rows = rows[rows["image_size"] == rows["image_size"].min()]
    stats = rows.groupby(fg.model_key(rows), dropna=False)["peak_mem_mb"].agg(
        ["median", "min", "max"]
    )
    stats = stats.sort_values("median").reset_index()
    n = len(stats)
    fig = Figure(figsize=(8.6, max(2.6, 0.34 * n + 1.6)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)
    ax.barh(
        y,
        stats["median"],
        color=[colour_for(e) for e in stats["extractor"]],
        edgecolor="0.3",
        linewidth=0.4,
    )
    err = [stats["median"] - stats["min"], stats["max"] - stats["median"]]
    if (stats["max"] > stats["min"]).any():
        ax.errorbar(stats["median"], y, xerr=err, fmt="none", color="black", capsize=3, lw=0.9)
    ax.set_yticks(
        y,
        [
            f"{meta_arch_name(m, rows)} w/ {extractor_name(e)}"
            for m, e in zip(stats["meta_arch"], stats["extractor"], strict=True)
        ],
        fontsize=8,
    )
    ax.set_xlabel(label("peak_mem_mb") + "; whiskers: min-max over variants")
    ax.grid(axis="y", visible=False)
    fg.axes_title(ax, f"Memory per model ({int(rows['image_size'].min())} px)", rows)
    return fig
