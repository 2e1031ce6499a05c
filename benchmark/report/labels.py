"""Point labels that do not overlap: every frontier point of a Pareto figure gets its name.

A frontier staircase leaves room above-left of each point (nothing cheaper is more
accurate), but neighbouring points compete for it. Each label tries a few positions around
its point, nearest first, and takes the first whose box stays inside the axes and clear of
every marker, the critical-point tags and the labels already placed; a label with no free
position becomes a number beside its point, spelled out in a note under the axes. Boxes are
measured with the figure's renderer after the layout is final, so what is checked is what
is drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# (dx, dy) in points and the alignment that puts the text on that side of the point.
CANDIDATES = [
    ((-6, 6), "right", "bottom"),
    ((6, -6), "left", "top"),
    ((-8, 0), "right", "center"),
    ((0, 9), "center", "bottom"),
    ((8, 0), "left", "center"),
    ((0, -9), "center", "top"),
    ((-16, 16), "right", "bottom"),
    ((16, -16), "left", "top"),
    # Farther out, up and left, where a frontier leaves the most room (with a hairline).
    *(((-d, d), "right", "bottom") for d in (30, 45, 60, 80)),
    *(((-d // 3, d), "right", "bottom") for d in (30, 45, 60, 80)),
]
MARKER_HALF_SIDE = 6.0  # display pixels around a marker kept free (markers are ~7 pt wide)


def _boxes_overlap(box: Bbox, others: list[Bbox]) -> bool:
    return any(box.overlaps(other) for other in others)


def _marker_boxes(ax, xs: np.ndarray, ys: np.ndarray) -> list[Bbox]:
    points = ax.transData.transform(np.column_stack([xs, ys]))
    h = MARKER_HALF_SIDE * ax.figure.dpi / 72
    return [Bbox([[x - h, y - h], [x + h, y + h]]) for x, y in points]


def label_points(
    ax,
    points: pd.DataFrame,
    x: str,
    y: str,
    texts: list[str],
    *,
    obstacles: pd.DataFrame | None = None,
    avoid: list | None = None,
    fontsize: float = 6.5,
) -> list[tuple[int, str]]:
    """Write ``texts[i]`` next to point i of ``points`` where it overlaps nothing.

    Args:
        ax: axes whose limits and scales are final.
        points: the rows to label (columns ``x``, ``y``).
        texts: one label per row.
        obstacles: rows whose markers the labels must not cover (default ``points``).
        avoid: artists (texts) already drawn whose boxes must stay clear.
        fontsize: label size in points.

    Returns:
        ``(number, text)`` of the labels that found no free place and were drawn as a
        number instead (for a note under the axes); empty when every label fits.
    """
    fig = ax.figure
    fig.draw_without_rendering()  # final layout: the boxes below are the drawn ones
    renderer = fig._get_renderer()
    obstacles = points if obstacles is None else obstacles
    taken = _marker_boxes(ax, obstacles[x].to_numpy(float), obstacles[y].to_numpy(float))
    taken += [a.get_window_extent(renderer) for a in (avoid or []) if a.get_visible()]
    frame = ax.get_window_extent(renderer)
    numbered = []
    for (_, row), text in zip(points.iterrows(), texts, strict=True):
        own = _marker_boxes(ax, np.array([row[x]]), np.array([row[y]]))[0].bounds
        others = [b for b in taken if b.bounds != own]  # its own marker may touch its label
        placed = None
        for offset, ha, va in CANDIDATES:
            label = ax.annotate(
                text,
                (row[x], row[y]),
                xytext=offset,
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
                color="0.15",
                zorder=6,
                annotation_clip=False,
                in_layout=False,
                # A hairline to its point: which label is whose stays clear in a crowd.
                arrowprops={
                    "arrowstyle": "-",
                    "lw": 0.4,
                    "color": "0.55",
                    "shrinkA": 0,
                    "shrinkB": 2,
                },
            )
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the text, not its hairline
            inside = frame.containsx(box.x0) and frame.containsx(box.x1)
            inside = inside and frame.containsy(box.y0) and frame.containsy(box.y1)
            if inside and not _boxes_overlap(box, others):
                placed = label
                taken.append(box)
                break
            label.remove()
        if placed is None:
            number = len(numbered) + 1
            tag = ax.annotate(
                str(number),
                (row[x], row[y]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=fontsize,
                fontweight="bold",
                color="0.15",
                zorder=6,
                in_layout=False,
            )
            taken.append(tag.get_window_extent(renderer))
            numbered.append((number, text))
    return numbered
