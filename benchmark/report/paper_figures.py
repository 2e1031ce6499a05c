"""The analysis figures of Huang et al. 2017 (Figures 3-11) drawn from a results table.

Each function returns a ``Figure`` or None when the sweep did not vary what the figure is
about (two extractors with a known ImageNet accuracy for Figure 3, two resolutions for
Figure 5, two proposal counts for Figure 6...), so a report shows only meaningful plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from benchmark.report import figures as fg
from benchmark.report.style import (
    colour_for,
    device_title,
    extractor_name,
    label,
    marker_for,
    meta_arch_name,
    meta_arch_order,
    styled,
)
from benchmark.report.table import ok_rows

_SIZE_COLOURS = {"map_small": "#c6dbef", "map_medium": "#6baed6", "map_large": "#08519c"}


@styled
def top1_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 3: detector mAP vs the extractor's ImageNet top-1, lowest resolution only."""
    rows = ok_rows(df, "map", "top1")
    if rows.empty or rows["extractor"].nunique() < 2:
        return None
    rows = rows[rows["image_size"] == rows["image_size"].min()]
    rows = fg.in_percent(rows, "map")
    fig = Figure(figsize=(8.6, 5.0), layout="constrained")
    ax = fig.subplots()
    fg.scatter_models(ax, rows, "top1", "map", size=52)
    ends = []
    for meta, group in rows.groupby("meta_arch"):
        if group["top1"].nunique() >= 2:  # the paper's point: the trend differs by family
            slope, intercept = np.polyfit(group["top1"], group["map"], 1)
            xs = np.linspace(group["top1"].min(), group["top1"].max(), 10)
            ax.plot(xs, slope * xs + intercept, color="0.4", lw=0.9, ls=":", zorder=2)
            # slope in AP points per top-1 point (both in percent here)
            text = f"{meta_arch_name(meta, rows)} ({slope:+.2f}/pt)"
            ends.append((xs[-1], slope * xs[-1] + intercept, text))
    scratch = rows["pretrained"].eq(False).any() if "pretrained" in rows else False
    note = (
        "\n(published top-1 of the architecture; these detectors trained from scratch)"
        if scratch
        else ""
    )
    ax.set_xlabel(label("top1") + note)
    ax.set_ylabel(label("map") + " (%)")
    fg.axes_title(
        ax,
        f"Detector vs extractor accuracy ({int(rows['image_size'].min())} px; dotted: fit, "
        "AP points per top-1 point)",
        rows,
    )
    fg.model_legends(ax, rows)
    xs = rows["top1"]
    ax.set_xlim(xs.min() - 0.5, xs.max() + 0.22 * (xs.max() - xs.min() or 1.0))  # labels' room
    _end_labels(ax, ends)  # last: the layout (legend, limits) is final
    return fig


def _end_labels(ax, ends: list[tuple[float, float, str]], gap_points: float = 10.0) -> None:
    """Labels right of the fit lines' ends, pushed apart vertically so none overlaps (a line
    ending near another's gets its label moved up or down, with a hairline to its end)."""
    if not ends:
        return
    fig = ax.figure
    fig.draw_without_rendering()
    to_points = 72 / fig.dpi
    ys = [ax.transData.transform((x, y))[1] * to_points for x, y, _ in ends]
    order = np.argsort(ys)
    placed = np.array(ys, dtype=float)[order]
    for i in range(1, len(placed)):  # sweep up: each at least a gap above the one below
        placed[i] = max(placed[i], placed[i - 1] + gap_points)
    shift = (placed - np.array(ys)[order]).mean()  # centre the block on the ends again
    placed -= max(shift, 0) / 2
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap_points)
    for rank, index in enumerate(order):
        x, y, text = ends[index]
        ax.annotate(
            text,
            (x, y),
            xytext=(12, placed[rank] - ys[index]),
            textcoords="offset points",
            fontsize=7.5,
            va="center",
            color="0.3",
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6", "shrinkA": 0, "shrinkB": 0},
        )


@styled
def object_size_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 4: mAP on small / medium / large objects, one panel per meta-architecture."""
    sizes = list(_SIZE_COLOURS)
    rows = fg.representative(ok_rows(df).dropna(subset=sizes, how="all"))
    if rows.empty:
        return None
    metas = sorted(rows["meta_arch"].unique(), key=meta_arch_order)
    ncols = min(3, len(metas))
    nrows = -(-len(metas) // ncols)
    per_panel = rows.groupby("meta_arch").size().max()
    fig = Figure(
        figsize=(max(3.0, 0.55 * per_panel + 1.4) * ncols + 1.6, 3.3 * nrows), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    width = 0.27
    for ax, meta in zip(axes, metas, strict=False):
        group = rows[rows["meta_arch"] == meta].sort_values("top1", na_position="last")
        x = np.arange(len(group))
        for i, column in enumerate(sizes):
            ax.bar(
                x + (i - 1) * width,
                group[column].fillna(0),
                width,
                color=_SIZE_COLOURS[column],
                edgecolor="0.3",
                linewidth=0.4,
                label=column.split("_")[1],
            )
        names = [extractor_name(e) for e in group["extractor"]]
        if group["neck"].nunique() > 1:  # a neck sweep: name each bar's neck
            names = [f"{n}\n({k})" for n, k in zip(names, group["neck"], strict=True)]
        ax.set_xticks(x, names, fontsize=8, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_title(meta_arch_name(meta, rows))
        ax.grid(axis="x", visible=False)
    for ax in axes[len(metas) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("mAP@[.5:.95] (COCO)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, title="Object size (COCO area)", loc="outside right upper")
    fig.suptitle(
        f"Accuracy by object size ({int(rows['image_size'].min())} px)\n{device_title(rows)}",
        fontsize=10.5,
    )
    return fig


def _resolution_colours(sizes) -> dict[float, tuple]:
    from matplotlib import colormaps

    sizes = sorted(sizes)
    cmap = colormaps["viridis"]
    return {s: cmap(0.15 + 0.7 * i / max(len(sizes) - 1, 1)) for i, s in enumerate(sizes)}


@styled
def resolution_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 5: effect of image resolution on speed and on small vs large object mAP."""
    rows = ok_rows(df, "map")
    if rows["image_size"].nunique() < 2:
        return None
    colours = _resolution_colours(rows["image_size"].unique())
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    same = [
        c for c in (*fg.model_key(rows), "num_proposals", "output_stride") if rows[c].notna().any()
    ]
    panels = ((left, "latency_ms", "map"), (right, "map_small", "map_large"))
    for ax, x, y in panels:
        data = rows.dropna(subset=[x, y])
        for _, group in data.groupby(same, dropna=False):  # one model at several resolutions
            group = group.sort_values("image_size")
            ax.plot(group[x], group[y], color="0.7", lw=0.8, zorder=1)
        for (meta, size), group in data.groupby(["meta_arch", "image_size"]):
            ax.scatter(
                group[x],
                group[y],
                marker=marker_for(meta),
                color=colours[size],
                s=44,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
        ax.set_xlabel(label(x))
        ax.set_ylabel(label(y))
    fg.set_log_axis(left, "x", rows["latency_ms"].dropna())
    left.set_title("(a) overall mAP vs time")
    right.set_title("(b) large vs small objects")
    metas = sorted(rows["meta_arch"].unique(), key=meta_arch_order)
    handles = [Patch(color=c, label=f"{int(s)} px") for s, c in colours.items()]
    handles += [
        Line2D(
            [],
            [],
            marker=marker_for(m),
            ls="",
            color="0.55",
            markeredgecolor="black",
            markeredgewidth=0.5,
            label=meta_arch_name(m, rows),
        )
        for m in metas
    ]
    fig.legend(handles=handles, loc="outside right upper", title="Resolution / model")
    fig.suptitle(
        f"Effect of image resolution (lines join the same model)\n{device_title(rows)}",
        fontsize=10.5,
    )
    return fig


@styled
def proposals_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 6: mAP (solid) and latency (dotted) vs the number of proposals, two-stage only."""
    rows = ok_rows(df, "num_proposals", "map")
    rows = rows[rows["uses_proposals"].eq(True)]  # the models say whether proposals apply
    if rows.empty or rows["num_proposals"].nunique() < 2:
        return None
    rows = rows[rows["image_size"] == rows["image_size"].max()]  # the paper: high resolution
    metas = sorted(rows["meta_arch"].unique(), key=meta_arch_order)
    fig = Figure(figsize=(5.2 * len(metas) + 1.8, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metas), squeeze=False)[0])
    for ax, meta in zip(axes, metas, strict=True):
        twin = ax.twinx()
        for (ext, stride), group in rows[rows["meta_arch"] == meta].groupby(
            ["extractor", rows["output_stride"].fillna(0)]
        ):
            group = group.sort_values("num_proposals")
            ls_kw = {"color": colour_for(ext), "marker": "o", "ms": 4}
            ax.plot(group["num_proposals"], group["map"], ls="-" if stride != 8 else "-.", **ls_kw)
            twin.plot(group["num_proposals"], group["latency_ms"], ls=":", **ls_kw)
        ax.set_xscale("log")
        ax.set_xticks(
            sorted(rows["num_proposals"].unique()),
            [f"{int(v)}" for v in sorted(rows["num_proposals"].unique())],
        )
        ax.set_xlabel(label("num_proposals"))
        ax.set_ylabel(label("map") + " (solid)")
        twin.set_ylabel("Latency per image (ms, median, dotted)")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
        ax.set_title(f"{meta_arch_name(meta, rows)}, {int(rows['image_size'].max())} px")
    handles = [
        Line2D([], [], color=colour_for(e), marker="o", label=extractor_name(e))
        for e in sorted(rows["extractor"].unique(), key=extractor_name)
    ]
    handles += [
        Line2D([], [], color="0.3", ls="-", label="mAP"),
        Line2D([], [], color="0.3", ls=":", label="latency"),
    ]
    fig.legend(handles=handles, loc="outside right upper")
    fig.suptitle(f"Effect of the number of proposals\n{device_title(rows)}", fontsize=10.5)
    return fig


@styled
def map_iou_figure(df: pd.DataFrame) -> Figure | None:
    """Figure 11: mAP@.5 and mAP@.75 vs mAP@[.5:.95], with linear fits and R^2."""
    rows = ok_rows(df, "map", "map_50", "map_75")
    if len(rows) < 3:
        return None
    fig = Figure(figsize=(6.8, 5.0), layout="constrained")
    ax = fig.subplots()
    top = float(rows[["map_50", "map_75", "map"]].max().max()) * 1.08
    ax.plot([0, top], [0, top], color="0.6", ls=":", lw=0.9, label="y = x")
    for column, colour, marker in (("map_50", "#3182bd", "o"), ("map_75", "#e6550d", "^")):
        slope, intercept = np.polyfit(rows["map"], rows[column], 1)
        fit = slope * rows["map"] + intercept
        ss_res = float(((rows[column] - fit) ** 2).sum())
        ss_tot = float(((rows[column] - rows[column].mean()) ** 2).sum())
        r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        ax.scatter(
            rows["map"],
            rows[column],
            color=colour,
            marker=marker,
            s=30,
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
            label=f"{label(column)}: R² = {r2:.3f}",
        )
        xs = np.array([0, rows["map"].max() * 1.05])
        ax.plot(xs, slope * xs + intercept, color=colour, lw=1.0)
    ax.set_xlim(0, rows["map"].max() * 1.08)
    ax.set_ylim(0, top)
    ax.set_xlabel(label("map"))
    ax.set_ylabel("mAP at a single IoU threshold")
    ax.legend(loc="upper left")
    fg.axes_title(ax, f"mAP@.5 and mAP@.75 vs mAP ({len(rows)} configurations)", rows)
    return fig
