"""Accuracy-vs-cost scatters with the Pareto frontier (Huang et al. 2017 Figure 2), and the
scatter/legend helpers every figure shares.

Figure functions take the results table and return a matplotlib ``Figure`` (or None when the
table has nothing to plot). They build ``Figure`` objects directly rather than through
pyplot: no global figure registry to leak, the Agg canvas renders the PNGs whatever backend
a notebook uses, and the notebook shows the very same objects inline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from benchmark import schema
from benchmark.report.pareto import critical_points, frontier
from benchmark.report.style import (
    colour_for,
    device_title,
    extractor_name,
    label,
    marker_for,
    meta_arch_name,
    meta_arch_order,
    styled,
    use_log_scale,
)
from benchmark.report.table import ok_rows
from benchmark.schema.format import named_value

# Tags go where a Pareto frontier guarantees empty space: nothing is cheaper than the fastest
# point (tag on its left, in a margin kept free by pareto_figure), and nothing cheaper is more
# accurate than a frontier point (tags above-left of the others).
_TAG_STYLE = {
    "fastest": ((-10, 0), "center"),
    "cheapest": ((-10, 0), "center"),
    "sweet spot": ((-5, 9), "bottom"),
    "most accurate": ((-5, 9), "bottom"),
}


def _short_name(column: str) -> str:
    """``AP``, ``latency``: the schema's short name, for titles."""
    key = schema.KEYS.get(column)
    return (key.short or column) if key is not None else column


def scatter_models(ax, rows: pd.DataFrame, x: str, y: str, *, size: float = 46, **kw) -> None:
    """Scatter ``rows`` with marker = meta-architecture and colour = extractor (Figure 2)."""
    for (meta, ext), group in rows.groupby(["meta_arch", "extractor"], sort=True):
        ax.scatter(
            group[x],
            group[y],
            marker=marker_for(meta),
            s=size,
            color=colour_for(ext),
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            **kw,
        )


def model_legends(
    ax,
    rows: pd.DataFrame,
    *,
    loc: str = "outside right upper",
    extra: list[tuple[Line2D, str]] = (),
) -> None:
    """One legend in two sections: marker shapes (meta-architectures), colours (extractors).

    One legend rather than two so constrained layout can place it outside the axes without
    the sections overlapping.
    """
    metas = sorted(rows["meta_arch"].unique(), key=meta_arch_order)
    extractors = list(dict.fromkeys(rows.sort_values("top1", na_position="last")["extractor"]))
    blank = Line2D([], [], linestyle="", marker="")

    def handle(marker: str, colour) -> Line2D:
        return Line2D(
            [],
            [],
            marker=marker,
            linestyle="",
            color=colour,
            markeredgecolor="black",
            markeredgewidth=0.5,
            markersize=7,
        )

    handles = [
        blank,
        *(handle(marker_for(m), "0.55") for m in metas),
        blank,
        blank,
        *(handle("o", colour_for(e)) for e in extractors),
    ]
    labels = [
        "Meta-architecture",
        *(meta_arch_name(m, rows) for m in metas),
        "",
        "Feature extractor",
        *map(extractor_name, extractors),
    ]
    if extra:
        handles += [blank, *(h for h, _ in extra)]
        labels += ["", *(text for _, text in extra)]
    target = ax.figure if loc.startswith("outside") else ax
    legend = target.legend(handles, labels, loc=loc, handletextpad=0.4, borderaxespad=0.6)
    for text in legend.get_texts():
        if text.get_text() in ("Meta-architecture", "Feature extractor"):
            text.set_fontweight("bold")
            text.set_position((-18, 0))  # section headers start where the markers do


def _left_margin(ax, values: pd.Series, fraction: float = 0.17) -> None:
    """Free ``fraction`` of the width left of the cheapest point, for its tag."""
    lo, hi = float(values.min()), float(values.max())
    if ax.get_xscale() == "log":
        span = np.log10(hi) - np.log10(lo) or 1.0
        ax.set_xlim(
            10 ** (np.log10(lo) - fraction * span / (1 - fraction)),
            10 ** (np.log10(hi) + 0.04 * span),
        )
    else:
        span = hi - lo or abs(hi) or 1.0
        ax.set_xlim(max(0.0, lo - fraction * span / (1 - fraction)), hi + 0.04 * span)


def suptitle(fig, text: str, rows: pd.DataFrame) -> None:
    """Figure title with the device on a second, lighter line (every figure names its device)."""
    fig.suptitle(f"{text}\n{device_title(rows)}", fontsize=10.5)


def set_log_axis(ax, axis: str, values: pd.Series) -> None:
    """Log scale for a cost axis spanning more than a decade, with plain-number tick labels."""
    if not use_log_scale(values):
        return
    getattr(ax, f"set_{axis}scale")("log")
    target = getattr(ax, f"{axis}axis")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def annotate_critical(ax, key_ax, front: pd.DataFrame, cost: str, accuracy: str) -> None:
    """Ring and tag the critical points on ``ax``; describe them in full on ``key_ax``."""
    names = critical_points(front, cost, accuracy)
    lines = []
    for index, name in names.items():
        if not name:
            continue
        row = front.loc[index]
        offset, va = _TAG_STYLE[name]
        low, high = ax.get_ylim()
        if name in ("fastest", "cheapest") and row[accuracy] - low < 0.04 * (high - low):
            offset, va = (-10, 5), "bottom"  # on the x axis: lift the tag above it
        ax.scatter(
            [row[cost]],
            [row[accuracy]],
            s=220,
            facecolors="none",
            edgecolors="black",
            linewidths=1.2,
            zorder=4,
        )
        ax.annotate(
            name.capitalize(),
            (row[cost], row[accuracy]),
            xytext=offset,
            fontsize=8.5,
            textcoords="offset points",
            ha="right",
            va=va,
            fontweight="bold",
            zorder=5,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
        )
        lines.append(
            (
                name.capitalize(),
                f"{row['label']}: {named_value(cost, row[cost])}, "
                f"{named_value(accuracy, row[accuracy])}",
            )
        )
    key_ax.axis("off")
    for i, (name, text) in enumerate(lines):
        y = 1.0 - i / 3
        key_ax.text(
            0.0,
            y,
            f"{name}:",
            fontsize=8.5,
            fontweight="bold",
            va="top",
            transform=key_ax.transAxes,
        )
        key_ax.text(0.17, y, text, fontsize=8.5, va="top", transform=key_ax.transAxes)


@styled
def pareto_figure(
    df: pd.DataFrame, cost: str = "latency_ms", accuracy: str = "map"
) -> Figure | None:
    """Accuracy vs ``cost`` for every ok job, the Pareto frontier and its critical points.

    Args:
        df: the results table.
        cost: ``latency_ms``, ``gmacs`` or ``peak_mem_mb`` (any numeric column works).
        accuracy: the accuracy column (``map`` for Figure 2).

    Returns:
        The figure, or None when no job has both values.
    """
    rows = ok_rows(df, cost, accuracy)
    if rows.empty:
        return None
    fig = Figure(figsize=(8.6, 5.6), layout="constrained")
    ax, key_ax = fig.subplots(2, 1, height_ratios=[11, 1.25])
    front = frontier(rows, cost, accuracy)
    # A staircase: any budget between two frontier points buys the cheaper one's accuracy.
    xs = [*front[cost], rows[cost].max() * 1.05]
    ys = [*front[accuracy], front[accuracy].iloc[-1]]
    ax.step(
        xs,
        ys,
        where="post",
        color="0.25",
        linestyle="--",
        linewidth=1.2,
        zorder=2,
        label="_frontier",
    )
    scatter_models(ax, rows, cost, accuracy)
    ax.set_ylim(bottom=0, top=max(rows[accuracy].max() * 1.18, 0.05))
    annotate_critical(ax, key_ax, front, cost, accuracy)
    set_log_axis(ax, "x", rows[cost])
    _left_margin(ax, rows[cost])
    ax.set_xlabel(label(cost))
    ax.set_ylabel(label(accuracy))
    title = f"{_short_name(accuracy)} vs {_short_name(cost)} ({len(rows)} configurations)"
    suptitle(fig, title, rows)
    frontier_handle = Line2D([], [], color="0.25", linestyle="--", linewidth=1.2)
    ring = Line2D(
        [],
        [],
        marker="o",
        markersize=11,
        markerfacecolor="none",
        linestyle="",
        markeredgecolor="black",
    )
    model_legends(ax, rows, extra=[(frontier_handle, "Pareto frontier"), (ring, "Critical point")])
    return fig


# Per-model helpers shared by the bar charts of paper_figures.py and cost_figures.py.
MODEL_COLUMNS = ["meta_arch", "extractor", "neck"]


def model_key(rows: pd.DataFrame) -> list[str]:
    """The columns that identify a model (neck only when the table has one)."""
    return [c for c in MODEL_COLUMNS if c in rows and rows[c].notna().any()]


def representative(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per model (meta-architecture, extractor, neck) for the per-model bar charts.

    Like the paper's Figures 4 and 7 ("we fix the image resolution to 300"): the lowest
    resolution, output stride 16 rather than 8, and the most proposals (the default).
    """
    if rows.empty:
        return rows
    rows = rows[rows["image_size"].isna() | (rows["image_size"] == rows["image_size"].min())]
    order = rows.assign(_os8=rows["output_stride"] == 8, _prop=-rows["num_proposals"].fillna(0))
    order = order.sort_values(["_os8", "_prop"], kind="stable")
    return order.drop_duplicates(model_key(rows)).drop(columns=["_os8", "_prop"])


def _short(row: pd.Series, with_neck: bool = False) -> str:
    """Two-line tick label; the neck is added when the table compares context modules."""
    name = row.get("meta_arch_name")
    text = f"{name if isinstance(name, str) else row['meta_arch']}\n"
    text += extractor_name(row["extractor"])
    if with_neck and isinstance(row.get("neck"), str):
        text += f"\n({row['neck']})"
    return text


def tick_labels(rows: pd.DataFrame) -> list[str]:
    """Tick labels for per-model bars; the neck is named when the rows compare several."""
    # Only when one meta-architecture appears with several necks (a neck sweep): each
    # detector's default neck is implied by its name.
    with_neck = "neck" in rows and bool((rows.groupby("meta_arch")["neck"].nunique() > 1).any())
    return [_short(r, with_neck) for _, r in rows.iterrows()]


def axes_title(ax, text: str, rows: pd.DataFrame) -> None:
    """Axes title with the device on a second line."""
    ax.set_title(f"{text}\n{device_title(rows)}")
