"""Accuracy-vs-cost scatters with the Pareto frontier (Huang et al. 2017 Figure 2), and the
scatter/legend helpers every figure shares.

Figure functions take the results table and return a matplotlib ``Figure`` (or None when the
table has nothing to plot). They build ``Figure`` objects directly rather than through
pyplot: no global figure registry to leak, the Agg canvas renders the PNGs whatever backend
a notebook uses, and the notebook shows the very same objects inline.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from benchmark import schema
from benchmark.report.labels import label_points
from benchmark.report.pareto import critical_points, frontier, noise_verdicts
from benchmark.report.protocol import Protocols
from benchmark.report.repeats import summarize_repeats
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
    lines, overlapping = [], []
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
        interval = ""
        low, high = row.get(f"{accuracy}_ci_low"), row.get(f"{accuracy}_ci_high")
        if pd.notna(low) and pd.notna(high):
            interval = f" [{low:.1f}, {high:.1f}]"
        if row.get("vs_cheaper") == "not distinguishable":
            overlapping.append(name.capitalize())
        lines.append(
            (
                name.capitalize(),
                # accuracy is in percent here (in_percent); the cost as the schema shows it
                f"{row['label']}: {named_value(cost, row[cost])}, "
                f"{_short_name(accuracy)} {row[accuracy]:.1f} %{interval}",
            )
        )
    if overlapping:  # frontier verdicts (noise_verdicts) when the rows carry them
        lines.append(
            ("Not distinct:", f"{', '.join(overlapping)}: 95 % interval overlaps the next cheaper")
        )
    key_ax.axis("off")
    for i, (name, text) in enumerate(lines):
        # Lines at fixed distances from the top (not fractions), so the key can grow below.
        where = {"xy": (0.0, 1.0), "xycoords": "axes fraction", "textcoords": "offset points"}
        key_ax.annotate(
            name if name.endswith(":") else f"{name}:",
            xytext=(0, -KEY_LINE * i),
            fontsize=8.5,
            fontweight="bold",
            va="top",
            **where,
        )
        # Out of the layout: a long line must not make constrained layout shrink the axes
        # to nothing (it only runs past the right edge).
        key_ax.annotate(
            text,
            xytext=(0.17 * _width_points(key_ax), -KEY_LINE * i),
            fontsize=8.5,
            va="top",
            in_layout=False,
            **where,
        )


KEY_LINE = 13.0  # points between the lines of a figure's key


def _width_points(ax) -> float:
    """Width of ``ax`` in points (for offsets that follow its layout position)."""
    fig = ax.figure
    return ax.get_position().width * fig.get_figwidth() * 72


def in_percent(rows: pd.DataFrame, accuracy: str) -> pd.DataFrame:
    """``accuracy`` and its interval columns times 100 (AP is read in percent)."""
    columns = [c for c in (accuracy, f"{accuracy}_ci_low", f"{accuracy}_ci_high") if c in rows]
    return rows.assign(**{c: pd.to_numeric(rows[c], errors="coerce") * 100 for c in columns})


def _error_bars(ax, rows: pd.DataFrame, x: str, y: str) -> bool:
    """Draw each point's intervals (``<col>_ci_low``/``_ci_high``) as bars in its colour.

    Returns:
        Whether any bar was drawn.
    """

    def err(column: str) -> np.ndarray | None:
        low, high = f"{column}_ci_low", f"{column}_ci_high"
        if low not in rows or high not in rows:
            return None
        value = rows[column].to_numpy(float)
        lo = pd.to_numeric(rows[low], errors="coerce").to_numpy(float)
        hi = pd.to_numeric(rows[high], errors="coerce").to_numpy(float)
        # A percentile interval may miss its estimate (a biased bootstrap); never negative.
        return np.vstack([np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)])

    drawn = False
    # Accuracy bars in full, cost bars (latency) lighter: accuracy is what the intervals
    # are mostly about, and a seed interval of latency from two runs can be wide.
    for axis, errors, width, alpha in (("y", err(y), 1.0, 0.9), ("x", err(x), 0.7, 0.5)):
        if errors is None:
            continue
        for i, (_, row) in enumerate(rows.iterrows()):
            if np.isnan(errors[:, i]).any():
                continue
            ax.errorbar(
                [row[x]],
                [row[y]],
                **{f"{axis}err": errors[:, i : i + 1]},
                fmt="none",
                ecolor=colour_for(row["extractor"]),
                elinewidth=width,
                capsize=2.5,
                alpha=alpha,
                zorder=2.5,
            )
            drawn = True
    return drawn


def _mark_protocols(ax, rows: pd.DataFrame, letters: pd.Series, x: str, y: str) -> None:
    """Write each point's protocol letter next to it (only when the rows mix protocols)."""
    for index, row in rows.iterrows():
        ax.annotate(
            letters.loc[index],
            (row[x], row[y]),
            xytext=(5, -9),
            textcoords="offset points",
            fontsize=7.5,
            fontweight="bold",
            color="#b30000",
            zorder=5,
        )


def _repeats_note(rows: pd.DataFrame) -> str:
    n = rows["n"].dropna().astype(int) if "n" in rows else pd.Series(dtype=int)
    if n.empty or n.max() <= 1:
        return ""
    return f", {n.min()} seeds each" if n.min() == n.max() else f", {n.min()}-{n.max()} seeds"


@styled
def pareto_figure(
    df: pd.DataFrame, cost: str = "latency_ms", accuracy: str = "map"
) -> Figure | None:
    """Accuracy vs ``cost`` per configuration, the Pareto frontier and its critical points.

    Seed repeats are averaged first (:func:`benchmark.report.repeats.summarize_repeats`);
    error bars are the intervals of the summary (bootstrap over validation images for one
    run, with seed repeats also their spread; latency: the interval of the median). AP is
    shown in percent; the subtitle states the protocol and marks mixed ones.

    Args:
        df: the results table, or its repeat summary (it has an ``n`` column).
        cost: ``latency_ms``, ``gmacs`` or ``peak_mem_mb`` (any numeric column works).
        accuracy: the accuracy column (``map`` for Figure 2).

    Returns:
        The figure, or None when no job has both values.
    """
    summary = df if "n" in df else summarize_repeats(df)
    rows = ok_rows(summary, cost, accuracy)
    if rows.empty:
        return None
    rows = in_percent(rows, accuracy)
    fig = Figure(figsize=(8.6, 6.2), layout="constrained")
    ax, key_ax = fig.subplots(2, 1, height_ratios=[11, 1.6])
    front = frontier(rows, cost, accuracy)
    front = pd.concat([front, noise_verdicts(front, accuracy)], axis=1)
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
    bars = _error_bars(ax, rows, cost, accuracy)
    scatter_models(ax, rows, cost, accuracy)
    high = pd.to_numeric(rows.get(f"{accuracy}_ci_high", rows[accuracy]), errors="coerce")
    top = max(rows[accuracy].max() * 1.18, np.nanmax([high.max(), 0.0]) * 1.05, 5.0)
    ax.set_ylim(bottom=0, top=top)
    annotate_critical(ax, key_ax, front, cost, accuracy)
    set_log_axis(ax, "x", rows[cost])
    _left_margin(ax, rows[cost])
    protocols = Protocols(rows)
    if protocols.mixed:
        _mark_protocols(ax, rows, protocols.letters, cost, accuracy)
    ax.set_xlabel(label(cost))
    ax.set_ylabel(f"{label(accuracy)}, validation set (%)")
    title = f"{_short_name(accuracy)} vs {_short_name(cost)} "
    title += f"({len(rows)} configurations{_repeats_note(rows)})"
    fig.suptitle(title, fontsize=10.5)
    # The protocol over the axes (not the figure: the legend takes the upper right).
    ax.set_title(protocols.subtitle(), fontsize=8.5, color="0.25")
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
    extra = [(frontier_handle, "Pareto frontier"), (ring, "Critical point")]
    if bars:
        bar = Line2D([], [], color="0.3", marker="|", markersize=9, linewidth=1.0)
        extra.append((bar, "95 % interval"))
    model_legends(ax, rows, extra=extra)
    _label_frontier(ax, key_ax, rows, front, cost, accuracy)
    return fig


def _point_text(label: str) -> str:
    """``SSD w/ ResNet-18, 300 px, 10 prop.`` -> ``SSD w/ ResNet-18`` over ``300 px, 10 prop.``
    (two short lines fit between neighbouring points more often than one long one)."""
    name, _, knobs = str(label).partition(", ")
    return f"{name}\n{knobs}" if knobs else name


def _label_frontier(ax, key_ax, rows, front, cost: str, accuracy: str) -> None:
    """Name every frontier point that is not a critical point (those have their tag and a
    line of the key): beside it when there is room, else a number explained under the key."""
    names = critical_points(front, cost, accuracy)
    others = front[names == ""]
    if others.empty:
        return
    texts = [_point_text(label) for label in others["label"]]
    numbered = label_points(ax, others, cost, accuracy, texts, obstacles=rows, avoid=list(ax.texts))
    if numbered:
        note = "; ".join(f"{n}: {text.replace(chr(10), ', ')}" for n, text in numbered)
        wrapped = textwrap.wrap(f"Numbered frontier points: {note}", 140)
        used = len(key_ax.texts) // 2  # the key's lines so far (a name and a text each)
        # Grow the figure by the note's height and give it all to the key, so the plot
        # keeps its size (and the labels placed on it their room).
        fig = ax.figure
        extra = len(wrapped) * 9.0 / 72
        grid = key_ax.get_subplotspec().get_gridspec()
        ratios = list(grid.get_height_ratios())
        plot_height = ax.get_position().height * fig.get_figheight()
        grid.set_height_ratios([ratios[0], ratios[1] + extra * ratios[0] / plot_height])
        fig.set_figheight(fig.get_figheight() + extra)
        key_ax.annotate(
            "\n".join(wrapped),
            xy=(0.0, 1.0),
            xycoords="axes fraction",
            xytext=(0, -KEY_LINE * used - 2),
            textcoords="offset points",
            fontsize=7,
            va="top",
            in_layout=False,
        )


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
