"""What a figure's numbers were measured under, in words: dataset and size, training budget,
image size, precision, device and threads; and whether the rows of a report mix protocols.

A Pareto figure shared alone must say this itself (its subtitle), and so must the report's
header. When rows differ in a protocol field (other threads, device, precision, dataset or
training budget) their numbers are not comparable as they stand: each protocol gets a letter,
the figure marks its points with it, and the report lists the letters.
"""

from __future__ import annotations

import string
import textwrap

import numpy as np
import pandas as pd

# Protocol fields in display order. Image size is not one: sweeps vary it on purpose and
# every label shows it.
FIELDS = ("data", "training", "precision", "device", "threads")

SUBTITLE_WIDTH = 95  # characters per subtitle line: 8.5 pt text clear of the legend


def _int(value) -> int | None:
    try:
        return None if pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def _data(row: pd.Series) -> str:
    name = str(row.get("dataset")) if pd.notna(row.get("dataset")) else "unknown dataset"
    train = _int(row.get("train_images", row.get("num_train")))
    val = _int(row.get("val_images", row.get("num_val")))
    if train is None and val is None:
        return name
    sizes = [f"{train} train" if train is not None else None, f"{val} val images"]
    return f"{name} ({' / '.join(s for s in sizes if s)})"


def _training(row: pd.Series) -> str:
    if isinstance(row.get("checkpoint"), str) and row["checkpoint"]:
        return "loaded from a checkpoint"
    steps = _int(row.get("train_iters"))
    if not steps:
        return "untrained (profile only)"
    batch = _int(row.get("total_batch_size")) or _int(row.get("batch_size"))
    flag = row.get("pretrained")  # a numpy bool in a table column, NaN when unknown
    pretrained = (isinstance(flag, bool | np.bool_) and bool(flag)) or (
        isinstance(row.get("weights_path"), str) and bool(row["weights_path"])
    )
    start = "pretrained weights" if pretrained else "random weights"
    budget = f"{steps} steps x {batch} images" if batch else f"{steps} steps"
    return f"{budget} from {start}"


def _threads(row: pd.Series) -> str:
    n = _int(row.get("num_threads"))
    return "? threads" if n is None else f"{n} thread{'s' if n != 1 else ''}"


def protocol_of(row: pd.Series) -> dict[str, str]:
    """The protocol fields of one result row, as display strings."""
    return {
        "data": _data(row),
        "training": _training(row),
        "precision": str(row.get("precision")) if pd.notna(row.get("precision")) else "?",
        "device": str(row.get("device_name")) if pd.notna(row.get("device_name")) else "?",
        "threads": _threads(row),
    }


def _sizes(rows: pd.DataFrame) -> str | None:
    if "image_size" not in rows:
        return None
    sizes = sorted({int(v) for v in rows["image_size"].dropna()})
    return f"{', '.join(map(str, sizes))} px" if sizes else None


class Protocols:
    """The protocols of a set of rows: what they share, what differs, a letter per row."""

    def __init__(self, rows: pd.DataFrame):
        self.rows = rows
        table = pd.DataFrame([protocol_of(r) for _, r in rows.iterrows()], index=rows.index)
        if table.empty:
            table = pd.DataFrame(columns=list(FIELDS))
        self.table = table
        self.differing = [f for f in FIELDS if table[f].nunique() > 1]
        keys = table[self.differing].astype(str).agg(" | ".join, axis=1) if self.differing else None
        if keys is None or keys.nunique() <= 1:
            self.letters = pd.Series("", index=rows.index, dtype=object)
            self.legend: dict[str, str] = {}
        else:
            order = list(dict.fromkeys(keys.sort_values(kind="stable")))
            letter = {k: string.ascii_uppercase[i % 26] for i, k in enumerate(order)}
            self.letters = keys.map(letter)
            self.legend = {letter[k]: k.replace(" | ", ", ") for k in order}

    @property
    def mixed(self) -> bool:
        return bool(self.legend)

    def common(self) -> list[str]:
        """The shared fields in display order, image sizes after the data."""
        return [*self._common_run(), *self._common_machine()]

    def _common_run(self) -> list[str]:
        """Shared dataset, image sizes and training budget."""
        if self.table.empty:
            return []
        parts = [self.table["data"].iloc[0]] if "data" not in self.differing else []
        if sizes := _sizes(self.rows):
            parts.append(sizes)
        if "training" not in self.differing:
            parts.append(self.table["training"].iloc[0])
        return parts

    def _common_machine(self) -> list[str]:
        """Shared precision, device and threads (``<device>, 2 threads``)."""
        if self.table.empty:
            return []
        parts = [self.table[f].iloc[0] for f in ("precision", "device") if f not in self.differing]
        if "threads" not in self.differing:
            if "device" in self.differing or not parts:
                parts.append(self.table["threads"].iloc[0])
            else:
                parts[-1] = f"{parts[-1]}, {self.table['threads'].iloc[0]}"
        return parts

    def subtitle(self) -> str:
        """Short lines for a figure: data and sizes, training, machine; one more listing
        the letters when protocols are mixed."""
        run = self._common_run()
        training = [p for p in run if p == self.table["training"].iloc[0]] if len(run) else []
        data = [p for p in run if p not in training]
        lines = [" · ".join(data), " · ".join(training), " · ".join(self._common_machine())]
        if self.mixed:
            mix = "; ".join(f"{k}: {v}" for k, v in self.legend.items())
            lines.append(f"MIXED PROTOCOLS ({', '.join(self.differing)}): {mix}")
        # Wrapped: a figure's title is not clipped, and a long list of budgets would be.
        return "\n".join(textwrap.fill(line, SUBTITLE_WIDTH) for line in lines if line)


def _values(rows: pd.DataFrame, column: str) -> list:
    if column not in rows:
        return []
    return sorted({v for v in rows[column].dropna().tolist()}, key=str)


def uncertainty_text(rows: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """How the report's intervals were made, in one paragraph (plain text).

    Args:
        rows: the ok rows of the results table (per job).
        summary: their repeat summary (``n`` per configuration), if computed.
    """
    samples = [int(v) for v in _values(rows, "bootstrap_samples") if int(v) > 0]
    val = [int(v) for v in _values(rows, "val_images")]
    images = f"the {', '.join(map(str, val))} validation images" if val else "validation images"
    if samples:
        accuracy = (
            f"Accuracy intervals: 95 % percentile bootstrap over {images} "
            f"({', '.join(map(str, samples))} resamples; an image drawn k times counts k times)."
        )
    else:
        accuracy = "Accuracy intervals: none (eval.bootstrap=0, or results from before them)."
    n = summary["n"].astype(int) if summary is not None and "n" in summary else pd.Series([1])
    if n.max() > 1:
        counts = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
        repeats = (
            f"Seed repeats: {counts} per configuration, averaged; their intervals are the hull "
            "of the t interval over seeds and the mean per-run interval."
        )
    else:
        repeats = (
            "One run per configuration: the intervals do not include training noise "
            "(seed=0,1,2 runs repeats)."
        )
    latency = "Latency intervals: distribution-free 95 % interval of the median (order statistics)."
    return f"{accuracy} {latency} {repeats}"
