"""Interactive frontiers for ``report.html``, drawn with plotly.

The static figures name the frontier points, but a sweep of forty configurations has more
points than any figure can label. Here hovering a point shows its configuration and its
numbers (formatted by the schema: AP in percent, ms with sensible digits), clicking a legend
entry hides or shows a meta-architecture, the buttons above the plot show one family
(single-shot, two-stage) or all, and the axes zoom. plotly.js is embedded once, inline, so the page stays
one file that opens offline and makes no network request.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from matplotlib.colors import to_hex

from benchmark import schema
from benchmark.report.pareto import critical_points, frontier
from benchmark.report.style import (
    colour_for,
    extractor_name,
    marker_for,
    meta_arch_name,
    meta_arch_order,
    use_log_scale,
)
from benchmark.report.table import ok_rows
from benchmark.schema.format import named_value

# matplotlib marker -> plotly symbol, so a meta-architecture has the same shape everywhere.
SYMBOLS = {
    "o": "circle",
    "D": "diamond",
    "s": "square",
    "^": "triangle-up",
    "v": "triangle-down",
    "P": "cross",
    "X": "x",
    "*": "star",
    "h": "hexagon",
    "p": "pentagon",
    "<": "triangle-left",
    ">": "triangle-right",
}
# What the hover box lists after the configuration (when the row has it).
HOVER_COLUMNS = ("latency_ms", "gmacs", "peak_mem_mb", "params", "gmacs_extractor")
# The plotly.js modebar without plotly's logo link; figures resize with the page.
CONFIG = {"displaylogo": False, "responsive": True}


def _hover(row: dict, cost: str, accuracy: str) -> str:
    """``<b>SSD w/ ResNet-18, 300 px</b><br>AP 23.2% [21.0, 25.1]<br>latency 7.21 ms...``."""
    lines = [f"<b>{html.escape(str(row['label']))}</b>"]
    columns = [accuracy, cost, *(c for c in HOVER_COLUMNS if c != cost)]
    for column in dict.fromkeys(columns):
        if column in row and pd.notna(row[column]):
            lines.append(html.escape(named_value(column, row[column], row)))
    if isinstance(row.get("n"), int | float) and row["n"] > 1:
        lines.append(f"{int(row['n'])} seeds (mean)")
    lines.append(f"<i>{html.escape(str(row.get('jobs') or row.get('job')))}</i>")
    return "<br>".join(lines)


def _records(rows: pd.DataFrame, cost: str, accuracy: str) -> list[dict]:
    """The rows as dicts of the columns a hover box reads (values and their intervals)."""
    wanted = ["label", "n", "jobs", "job", accuracy, cost, *HOVER_COLUMNS]
    for column in list(wanted):
        key = schema.KEYS.get(column)
        wanted += list(key.interval) if key is not None and key.interval else []
    return rows[[c for c in dict.fromkeys(wanted) if c in rows]].to_dict("records")


def frontier_plot(summary: pd.DataFrame, cost: str, accuracy: str = "map") -> go.Figure | None:
    """Accuracy (%) vs ``cost`` with the Pareto frontier: one trace per meta-architecture
    (marker shape as in the static figures, colour = extractor), legend grouped by family.

    Args:
        summary: the repeat summary (one row per configuration).
        cost: the cost column.
        accuracy: the accuracy column.

    Returns:
        The figure, or None when no configuration has both values.
    """
    rows = ok_rows(summary, cost, accuracy)
    if rows.empty:
        return None
    fig = go.Figure()
    low, high = f"{accuracy}_ci_low", f"{accuracy}_ci_high"
    families = {}
    for meta in sorted(rows["meta_arch"].unique(), key=meta_arch_order):
        group = rows[rows["meta_arch"] == meta]
        family = str(group["family"].iloc[0]) if "family" in group else "detectors"
        error = None
        if low in group and high in group and group[[low, high]].notna().all().all():
            error = {
                "type": "data",
                "symmetric": False,
                "array": (100 * (group[high] - group[accuracy])).clip(lower=0).tolist(),
                "arrayminus": (100 * (group[accuracy] - group[low])).clip(lower=0).tolist(),
                "thickness": 1,
                "width": 2,
                "color": "rgba(80,80,80,0.6)",
            }
        name = meta_arch_name(meta, rows)
        symbol = SYMBOLS.get(marker_for(meta), "circle")
        fig.add_trace(
            go.Scatter(
                x=group[cost].tolist(),
                y=(100 * group[accuracy]).tolist(),
                mode="markers",
                name=name,
                legendgroup=str(meta),
                showlegend=False,  # the grey entry below stands for it (colour = extractor)
                meta=family,
                marker={
                    "symbol": symbol,
                    "color": [to_hex(colour_for(e)) for e in group["extractor"]],
                    "size": 11,
                    "line": {"width": 0.8, "color": "black"},
                },
                error_y=error,
                hovertext=[_hover(r, cost, accuracy) for r in _records(group, cost, accuracy)],
                hovertemplate="%{hovertext}<extra>" + html.escape(family) + "</extra>",
                customdata=[[str(e)] for e in group["extractor"]],
            )
        )
        # Its legend entry: the shape in grey (a legend swatch would take the colour of one
        # extractor); clicking it toggles the meta-architecture's points (same legendgroup).
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                legendgroup=str(meta),
                meta=family,
                marker={
                    "symbol": symbol,
                    "color": "#9a9a9a",
                    "size": 11,
                    "line": {"width": 0.8, "color": "black"},
                },
                hoverinfo="skip",
            )
        )
        families[family] = True
    front = frontier(rows, cost, accuracy)
    names = critical_points(front, cost, accuracy)
    xs = [*front[cost], float(rows[cost].max()) * 1.05]
    ys = [*(100 * front[accuracy]), 100 * float(front[accuracy].iloc[-1])]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            line={"shape": "hv", "dash": "dash", "color": "#404040", "width": 1.2},
            name="Pareto frontier",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=front[cost].tolist(),
            y=(100 * front[accuracy]).tolist(),
            mode="markers+text",
            text=[n.capitalize() if n else "" for n in names],
            textposition="top center",
            textfont={"size": 11},
            marker={"size": 20, "color": "rgba(0,0,0,0)", "line": {"width": 1.3, "color": "black"}},
            name="Frontier point (ring)",
            hoverinfo="skip",
        )
    )
    log = use_log_scale(rows[cost])
    fig.update_layout(updatemenus=[_family_buttons(fig)] if len(families) > 1 else [])
    fig.update_layout(
        template="simple_white",
        height=560,
        margin={"l": 70, "r": 20, "t": 80, "b": 60},
        title={"text": f"{_short(accuracy)} vs {_short(cost)}", "x": 0.5},
        xaxis={"title": {"text": schema.label(cost)}, "type": "log" if log else "linear"},
        yaxis={"title": {"text": f"{schema.label(accuracy)} (%)"}, "rangemode": "tozero"},
        legend={"groupclick": "togglegroup", "title": {"text": "Meta-architecture"}},
        hoverlabel={"align": "left"},
    )
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(showgrid=True, gridcolor="#eee")
    return fig


def _family_buttons(fig: go.Figure) -> dict:
    """plotly buttons "all" / one per family: show only that family's meta-architectures
    (the others stay in the legend, greyed, as after a legend click); the frontier stays."""
    groups = [trace.meta for trace in fig.data]
    families = list(dict.fromkeys(g for g in groups if g))

    def visible(family: str | None) -> list:
        return [True if g is None or family in (None, g) else "legendonly" for g in groups]

    buttons = [{"label": "all", "method": "restyle", "args": [{"visible": visible(None)}]}]
    buttons += [
        {"label": f, "method": "restyle", "args": [{"visible": visible(f)}]} for f in families
    ]
    return {
        "type": "buttons",
        "direction": "right",
        "buttons": buttons,
        "x": 0.0,
        "xanchor": "left",
        "y": 1.02,
        "yanchor": "bottom",
        "showactive": True,
    }


def _short(column: str) -> str:
    key = schema.KEYS.get(column)
    return (key.short or column) if key is not None else column


def frontier_html(figures: dict[str, go.Figure]) -> str:
    """The figures as ``<div>``s, plotly.js inline once before the first: the page needs no
    file or network."""
    parts = []
    for i, (axis, fig) in enumerate(figures.items()):
        parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=(i == 0),
                div_id=f"frontier-{axis}",
                config=CONFIG,
            )
        )
    return "\n".join(parts)


def interactive_section(summary: pd.DataFrame, axes: dict[str, str], accuracy: str = "map"):
    """The "Interactive frontiers" section (:class:`benchmark.report.html.Section`, placed
    after the critical points), one plot per cost axis of ``axes`` (cost column -> name)."""
    from benchmark.report.html import Section

    figures = {}
    for cost, axis in axes.items():
        if cost in summary and accuracy in summary:
            fig = frontier_plot(summary, cost, accuracy)
            if fig is not None:
                figures[axis] = fig
    if not figures:
        body = "<p><em>No configuration finished with accuracy and a cost.</em></p>"
    else:
        extractors = sorted(
            {str(e) for e in summary.get("extractor", pd.Series(dtype=object)).dropna()},
            key=extractor_name,
        )
        swatches = " ".join(
            f'<span style="color:{to_hex(colour_for(e))}">&#9679;</span> '
            f"{html.escape(extractor_name(e))}"
            for e in extractors
        )
        body = (
            "<p>Hover a point for its configuration and numbers; click a legend entry to hide "
            "or show a meta-architecture, a button above the plot to show one family "
            "(single-shot, two-stage) or all; drag to zoom, double-click to reset. Marker = meta-architecture, "
            f"colour = feature extractor: {swatches}.</p>" + frontier_html(figures)
        )
    return Section("interactive", "Interactive frontiers", body, place="frontiers")
