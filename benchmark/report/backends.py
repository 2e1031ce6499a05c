"""Backends side by side: each configuration's latency per ``bench.backend`` (issue 17).

A configuration is everything of a job's identity but its backend (and seed): the same
trained model timed in eager PyTorch, ``torch.compile`` and ONNX Runtime gives one row here,
with each backend's median latency and ``predict`` time (seed repeats averaged), the ratio
to eager, and the runtime's parity (its largest box difference from eager and its own AP).
Accuracy is equal across a row by construction: a runtime job whose outputs differ beyond
tolerance fails instead of being timed (``benchmark.measure.parity``).

Written as ``backends.csv`` and a section of ``report.html`` when a sweep has more than one
backend.
"""

from __future__ import annotations

import copy
import html
from typing import Any

import numpy as np
import pandas as pd

from benchmark.report.repeats import repeat_group

__all__ = ["backend_group", "backend_section", "backend_table"]
BACKEND_KEYS = ("backend", "compile")  # bench keys that choose the backend


def backend_group(record: dict[str, Any]) -> str:
    """The configuration id of a result without its backend: results that differ only in
    ``bench.backend`` (or the old ``bench.compile``) and seed share it."""
    record = copy.deepcopy(record)
    bench = (record.get("config") or {}).get("bench")
    if isinstance(bench, dict):
        for key in BACKEND_KEYS:
            bench.pop(key, None)
    for key in ("backend", "backend_version", "compile", "compiled", "job"):
        record.pop(key, None)
    return repeat_group(record)


def _base_label(label: Any, backend: str) -> str:
    """The row's label without the backend suffix :func:`~.table._label` adds."""
    text = str(label)
    suffix = f", {backend}"
    return text[: -len(suffix)] if text.endswith(suffix) else text


def backend_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration timed with more than one backend (ok jobs only).

    Args:
        df: :func:`benchmark.report.table.results_table` (columns ``backend``,
            ``backend_group``, ``latency_ms``, ``predict_ms``, ``map``...).

    Returns:
        ``configuration``, ``map`` (eager's), per backend ``latency_ms[<b>]``,
        ``predict_ms[<b>]`` and, for every backend but eager, ``<b> / eager`` (ratio of
        the end-to-end medians), then ``parity_boxes_px[<b>]`` and ``parity_map[<b>]``.
        Empty when no configuration has two backends.
    """
    need = {"backend", "backend_group", "latency_ms"}
    if df.empty or not need <= set(df.columns):
        return pd.DataFrame()
    ok = df[(df["status"] == "ok") & df["latency_ms"].notna()].copy()
    if ok.empty or ok["backend"].nunique() < 2:
        return pd.DataFrame()
    ok["parity_boxes_px"] = ok.get("parity_boxes_px", np.nan)
    backends = sorted(ok["backend"].unique(), key=lambda b: (b != "eager", b))
    rows = []
    for _, group in ok.groupby("backend_group", sort=False):
        if group["backend"].nunique() < 2:
            continue
        first = group.iloc[0]
        row: dict[str, Any] = {"configuration": _base_label(first["label"], first["backend"])}
        eager = group[group["backend"] == "eager"]
        row["map"] = eager["map"].mean() if "map" in group and len(eager) else np.nan
        for b in backends:
            runs = group[group["backend"] == b]
            row[f"latency_ms[{b}]"] = runs["latency_ms"].mean() if len(runs) else np.nan
            row[f"predict_ms[{b}]"] = (
                runs["predict_ms"].mean() if len(runs) and "predict_ms" in runs else np.nan
            )
        for b in backends:
            if b != "eager":
                row[f"{b} / eager"] = row[f"latency_ms[{b}]"] / row.get("latency_ms[eager]", np.nan)
                runs = group[group["backend"] == b]
                for col, key in (
                    ("parity_boxes_px", "parity_boxes_px"),
                    ("parity_map", "parity_map"),
                ):
                    values = runs[key] if key in runs else pd.Series(dtype=float)
                    row[f"{col}[{b}]"] = pd.to_numeric(values, errors="coerce").max()
        rows.append(row)
    return pd.DataFrame(rows)


def backend_section(df: pd.DataFrame) -> str:
    """The report's HTML section (empty when the sweep has a single backend)."""
    table = backend_table(df)
    if table.empty:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(v if isinstance(v, str) else ('–' if pd.isna(v) else f'{v:.3g}'))}</td>"
            for v in row
        )
        + "</tr>"
        for row in table.itertuples(index=False)
    )
    return (
        "<h2>Backends</h2>\n<p>Each configuration's latency per <code>bench.backend</code> "
        "(ms, medians; seed repeats averaged). A runtime is timed only after its outputs "
        "matched eager's within the parity tolerance; <code>parity_boxes_px</code> is its "
        "largest box difference, <code>parity_map</code> its own AP (docs/measurement.md).</p>"
        f"\n<table><tr>{head}</tr>{body}</table>"
    )
