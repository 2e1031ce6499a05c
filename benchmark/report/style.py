"""Names, markers, colours and axis labels shared by every figure and table of the report.

Huang et al. 2017 draw every scatter with the marker shape standing for the
meta-architecture and the colour for the feature extractor (Figure 2). The mapping is fixed
here, by name rather than by order of appearance, so the same extractor has the same colour
in every figure of every sweep and in the notebook.
"""

from __future__ import annotations

import functools
import math

import matplotlib
import pandas as pd

from benchmark import schema

# Colour slots in this order: the first ten get tab10's distinct colours. The paper's six
# extractors first (efficientnet_b0 stands in for Inception v2 in the paper preset), then
# the CPU-friendly ones the quick and focused sweeps use.
EXTRACTOR_NAMES = {
    "vgg16": "VGG-16",
    "mobilenet_v1": "MobileNet v1",
    "efficientnet_b0": "EfficientNet-B0",
    "resnet101": "ResNet-101",
    "inception_v3": "Inception v3",
    "inception_resnet_v2": "Inception-ResNet v2",
    "resnet18": "ResNet-18",
    "vgg16_refinedet": "VGG-16 (RefineDet)",  # tab10's grey: rarely swept, never confused
    "mobilenet_v2": "MobileNet v2",
    "mobilenet_v3_small": "MobileNet v3 small",
    "mobilenet_v3_large": "MobileNet v3 large",
    "resnet50": "ResNet-50",
    "inception_v2": "Inception v2",
}
# Marker shapes of the paper's meta-architectures, in the paper's order (which legends keep).
_MARKERS = {"ssd": "o", "dssd": "D", "refinedet": "s", "faster_rcnn": "^", "rfcn": "v"}
_SPARE_MARKERS = ("P", "X", "*", "h", "p", "<", ">")


def meta_arch_name(key: str, rows: pd.DataFrame | None = None) -> str:
    """Display name of a meta-architecture option (``faster_rcnn`` -> ``Faster R-CNN``), as
    its model class declares it (the ``meta_arch_name`` column of ``rows``); the option
    itself when ``rows`` does not say."""
    if rows is not None and "meta_arch_name" in rows and "meta_arch" in rows:
        names = rows.loc[rows["meta_arch"] == key, "meta_arch_name"].dropna().unique()
        if len(names):
            return " / ".join(map(str, names))
    return str(key)


def meta_arch_order(key: str) -> tuple[int, str]:
    """Sort key: the paper's order (SSD, DSSD, RefineDet, Faster R-CNN, R-FCN), then by name."""
    names = list(_MARKERS)
    return (names.index(key) if key in names else len(names), str(key))


def extractor_name(key: str) -> str:
    """Display name of an extractor option (``resnet101`` -> ``ResNet-101``)."""
    return EXTRACTOR_NAMES.get(str(key), str(key))


def marker_for(meta_arch: str) -> str:
    """Marker shape of a meta-architecture; unknown ones get a stable spare shape."""
    if meta_arch in _MARKERS:
        return _MARKERS[meta_arch]
    # A stable hash (not Python's salted hash()) so the marker survives between processes.
    return _SPARE_MARKERS[sum(map(ord, str(meta_arch))) % len(_SPARE_MARKERS)]


def colour_for(extractor: str) -> tuple[float, float, float, float]:
    """Colour of an extractor: tab20 slot fixed by its place in :data:`EXTRACTOR_NAMES`."""
    names = list(EXTRACTOR_NAMES)
    index = names.index(extractor) if extractor in names else len(names) + sum(map(ord, extractor))
    # tab10 for the first ten (most distinct), then the light half of tab20.
    if index < 10:
        return matplotlib.colormaps["tab10"](index)
    return matplotlib.colormaps["tab20"]((2 * (index - 10) + 1) % 20)


def label(column: str) -> str:
    """Axis label with unit for a results column, from the schema (the name when unknown)."""
    return schema.label(column)


def device_title(df: pd.DataFrame) -> str:
    """ "<device name>, N threads" for figure titles; several devices are listed together."""
    if df.empty or "device_name" not in df:
        return "unknown device"
    rows = df.dropna(subset=["device_name"])
    parts = []
    for name, group in rows.groupby("device_name", sort=True):
        threads = group["num_threads"].dropna().unique() if "num_threads" in group else []
        suffix = f", {int(threads[0])} threads" if len(threads) == 1 else ""
        parts.append(f"{name}{suffix}")
    return "; ".join(parts) or "unknown device"


def use_log_scale(values: pd.Series) -> bool:
    """Log axes once the values span more than a decade, as latencies and GMACs often do."""
    values = values[values > 0].dropna()
    return len(values) > 1 and values.max() / values.min() > 10.0


def nice_count(value: float) -> str:
    """Short human number for annotations: 1.2M, 35k, 512."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


# Print-quality defaults (readable at half page width), applied with matplotlib.rc_context
# around each figure so importing the report never changes a notebook's global style.
RC = {
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "legend.title_fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def styled(fn):
    """Run a figure function inside ``rc_context(RC)`` (rcParams apply when artists are made)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper
