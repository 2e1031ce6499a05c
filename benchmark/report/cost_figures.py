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
from benchmark.schema.format import format_value

_STAGES = [
    ("preprocess_ms", "preprocess", "#9ecae1"),
    ("predict_ms", "network (predict)", "#3182bd"),
    ("postprocess_ms", "postprocess (decode + NMS)", "#fd8d3c"),
]


@styled
def latency_breakdown_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 7: time per model (lowest resolution) and its split into the three stages.

    Left, the end-to-end median on a log axis (whisker to p90), so a 10 ms and a 300 ms model
    are both readable; right, each stage's share of the model's stage medians, so the split
    of the fast models is as visible as that of the slow ones.
    """
    rows = fg.representative(ok_rows(df, "latency_ms")).sort_values("latency_ms", ascending=False)
    if rows.empty:
        return None
    n = len(rows)
    fig = Figure(figsize=(10.0, max(2.6, 0.34 * n + 1.6)), layout="constrained")
    left_ax, right_ax = fig.subplots(1, 2, sharey=True, width_ratios=[1.15, 1])
    y = np.arange(n)
    stages = [s for s, _, _ in _STAGES]
    left_ax.barh(y, rows["latency_ms"], color="#3182bd", edgecolor="0.3", linewidth=0.4)
    p90 = (rows["latency_ms_p90"] - rows["latency_ms"]).clip(lower=0)
    left_ax.errorbar(
        rows["latency_ms"],
        y,
        xerr=[np.zeros(n), p90.fillna(0).to_numpy()],
        fmt="none",
        ecolor="black",
        capsize=3,
        lw=0.9,
    )
    for yi, value in zip(y, rows["latency_ms"], strict=True):
        left_ax.annotate(
            f"{format_value('latency_ms', value)} ms",
            (value, yi),
            xytext=(4, -7),
            textcoords="offset points",
            fontsize=7,
            color="0.25",
        )
    fg.set_log_axis(left_ax, "x", rows["latency_ms"])
    if left_ax.get_xscale() == "log":  # bars start left of the fastest, so it has a length
        left_ax.set_xlim(rows["latency_ms"].min() / 3, rows["latency_ms"].max() * 2.2)
    else:
        left_ax.set_xlim(0, rows["latency_ms"].max() * 1.2)
    left_ax.set_xlabel("End-to-end median per image, batch 1 (ms); whisker to p90")
    left_ax.set_yticks(
        y, [t.replace("\n", " w/ ", 1).replace("\n", " ") for t in fg.tick_labels(rows)], fontsize=8
    )
    split = rows[stages].dropna()
    if not split.empty:
        share = 100 * split.div(split.sum(axis=1), axis=0)
        at = y[rows.index.get_indexer(split.index)]
        start = np.zeros(len(split))
        for column, name, colour in _STAGES:
            values = share[column].to_numpy()
            right_ax.barh(
                at, values, left=start, color=colour, edgecolor="0.3", linewidth=0.4, label=name
            )
            start += values
        right_ax.set_xlim(0, 100)
        right_ax.set_xlabel("Share of the stage medians (%)")
        fig.legend(loc="outside lower center", ncols=3)
    else:
        right_ax.set_visible(False)
    for ax in (left_ax, right_ax):
        ax.grid(axis="y", visible=False)
    fig.suptitle(
        f"Time per model ({int(rows['image_size'].min())} px) and where it goes"
        f"\n{fg.device_title(rows)}",
        fontsize=10.5,
    )
    return fig


def _rate_lines(ax, rows: pd.DataFrame) -> None:
    """Figure 8's guides: lines of constant compute rate, time = 2 x GMACs / rate, one per
    power of ten of GFLOP/s around the rates the models reach (a model above a line
    computes slower than that rate), labelled at their right end."""
    rates = 2000 * rows["gmacs"] / rows["latency_ms"]  # GFLOP/s: 2 FLOPs per MAC, ms -> s
    rates = rates[np.isfinite(rates) & (rates > 0)]
    if rates.empty:
        return
    low, high = np.floor(np.log10(rates.min())), np.ceil(np.log10(rates.max()))
    x0, x1 = ax.get_xlim()
    xs = (
        np.geomspace(max(x0, 1e-9), x1, 50) if ax.get_xscale() == "log" else np.linspace(x0, x1, 50)
    )
    y0, y1 = ax.get_ylim()
    for exponent in np.arange(low, high + 1):
        rate = 10.0**exponent
        ys = 2000 * xs / rate
        ax.plot(xs, ys, color="0.55", ls=":", lw=0.8, zorder=1)
        inside = (ys >= y0) & (ys <= y1)
        if inside.any():
            shown = np.flatnonzero(inside)
            i = shown[int(0.85 * (len(shown) - 1))]  # near the end, clear of the frame
            ax.annotate(
                f"{rate:g} GFLOP/s",
                (xs[i], ys[i]),
                xytext=(-2, 2),
                textcoords="offset points",
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.4",
            )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _cost_scatter(df: pd.DataFrame, x: str, y: str, title: str, *, rate_lines: bool = False):
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
    if rate_lines:
        _rate_lines(ax, rows)
    return fig


@styled
def flops_vs_time_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 8: multiply-adds vs measured latency (how well FLOPs predict time here)."""
    return _cost_scatter(
        df,
        "gmacs",
        "latency_ms",
        "Multiply-adds vs time (dotted: constant compute rate, 2 x GMACs / time)",
        rate_lines=True,
    )


@styled
def memory_vs_time_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 10: peak inference memory vs latency."""
    return _cost_scatter(df, "peak_mem_mb", "latency_ms", "Memory vs time")


@styled
def memory_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 9: peak memory per model (lowest resolution): the median over its runs
    (proposal and stride variants, seed repeats), whiskers from the smallest to the largest
    where it has several, the numbers written beside each bar."""
    rows = ok_rows(df, "peak_mem_mb")
    if rows.empty:
        return None
    rows = rows[rows["image_size"] == rows["image_size"].min()]
    stats = rows.groupby(fg.model_key(rows), dropna=False)["peak_mem_mb"].agg(
        ["median", "min", "max", "count"]
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
    varied = (stats["count"] > 1).to_numpy()
    if varied.any():  # whiskers where a model has several runs: its proposal / stride variants
        err = [(stats["median"] - stats["min"])[varied], (stats["max"] - stats["median"])[varied]]
        ax.errorbar(
            stats["median"][varied],
            y[varied],
            xerr=err,
            fmt="none",
            color="black",
            capsize=4,
            lw=1.1,
        )
    for yi, (_, stat) in zip(y, stats.iterrows(), strict=True):
        runs = int(stat["count"])
        text = f"{format_value('peak_mem_mb', stat['median'])} MiB"
        text += f" (median of {runs}: {stat['min']:.0f}-{stat['max']:.0f})" if runs > 1 else ""
        ax.annotate(
            text,
            (stat["max"], yi),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="0.25",
        )
    ax.set_xlim(0, stats["max"].max() * 1.3)
    ax.set_yticks(
        y,
        [
            f"{meta_arch_name(m, rows)} w/ {extractor_name(e)}"
            for m, e in zip(stats["meta_arch"], stats["extractor"], strict=True)
        ],
        fontsize=8,
    )
    ax.set_xlabel(
        label("peak_mem_mb")
        + ("; bar: median, whiskers: min-max over a model's runs" if varied.any() else "")
    )
    ax.grid(axis="y", visible=False)
    fg.axes_title(ax, f"Memory per model ({int(rows['image_size'].min())} px)", rows)
    return fig
