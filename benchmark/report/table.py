"""Every ``result.json`` under a sweep folder as one pandas table, one row per job.

A result is flat JSON (``results/README.md`` lists its keys). The table keeps its scalar keys,
lifts the few config values a sweep varies that are not top-level keys (``num_proposals``,
``output_stride``, ``neck``, training length) into columns, and adds derived columns used by
the figures (``label``, ``top1``, ``family``). Missing keys become NaN, so results written
before a measurement existed still load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.report.imagenet import imagenet_top1
from benchmark.report.repeats import repeat_group
from benchmark.report.style import TWO_STAGE, extractor_name, meta_arch_name
from benchmark.results import RESULT_FILE

log = logging.getLogger(__name__)

# Column order of results.csv: identity first, then accuracy, then cost, then everything else.
ID_COLUMNS = [
    "job",
    "status",
    "error",
    "meta_arch",
    "extractor",
    "neck",
    "image_size",
    "num_proposals",
    "output_stride",
    "dataset",
    "label",
]
ACCURACY_COLUMNS = [
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
]
COST_COLUMNS = [
    "latency_ms",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_std",
    "cold_start_ms",
    "preprocess_ms",
    "predict_ms",
    "postprocess_ms",
    "throughput_ips",
    "gmacs",
    "peak_mem_mb",
    "train_peak_mem_mb",
    "params",
    "params_trainable",
    "num_anchors",
    "achieved_gflops",
    "peak_fraction",
]
NUMERIC_COLUMNS = [
    "image_size",
    "num_proposals",
    "output_stride",
    "num_classes",
    "train_iters",
    "train_seconds",
    "final_loss",
    "job_seconds",
    "timing_n",
    "num_threads",
    *ACCURACY_COLUMNS,
    *COST_COLUMNS,
]
# Config values lifted into columns: (column, path in the resolved config).
CONFIG_COLUMNS = [
    ("num_proposals", "meta_arch.num_proposals"),
    ("output_stride", "extractor.output_stride"),
    ("model_name", "extractor.model_name"),
    ("pretrained", "extractor.pretrained"),
    ("weights_path", "extractor.weights_path"),
    ("frozen_bn", "extractor.frozen_bn"),
    ("max_iters", "train.max_iters"),
    ("batch_size", "train.batch_size"),
    ("lr", "train.optimizer.lr"),
    ("num_train", "data.num_train"),
    ("num_val", "data.num_val"),
]
# Split sizes as the data pipeline counted them (any dataset): (column, path in the result).
STATS_COLUMNS = [
    ("train_images", "data_stats.train.images"),
    ("val_images", "data_stats.val.images"),
]
# COCO's summarize() writes -1 for "no ground truth of this kind": not a score.
_COCO_ABSENT = -1.0


def find_results(sweep_dir: str | Path) -> list[Path]:
    """Every result.json under ``sweep_dir`` (any depth), skipping hidden folders (.hydra)."""
    root = Path(sweep_dir)
    return sorted(
        p
        for p in root.rglob(RESULT_FILE)
        if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])
    )


def load_records(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The parsed result.json files with ``job`` (folder relative to the sweep) and ``job_dir``.

    Unreadable files (a half-written file cannot happen: writes are atomic, but a file may be
    edited by hand) are logged and become failed rows, so they are seen in the report.
    """
    root = Path(sweep_dir)
    records = []
    for path in find_results(root):
        job = path.parent.relative_to(root).as_posix()
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("cannot read %s: %s", path, e)
            record = {"status": "failed", "error": f"unreadable result.json: {e}"}
        record.update(job=job, job_dir=str(path.parent))
        records.append(record)
    return records


def _lookup(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


# Context modules (the ``neck=`` group, sweeps/neck/) by the class of ``meta_arch.top_down``.
_TOP_DOWN_NAMES = {"DSSDDecoder": "dssd", "TCBTopDown": "tcb", "RefineNetTopDown": "refinenet"}


def _neck(record: dict[str, Any]) -> str | None:
    """The single-shot context module as the ``neck=`` option names it, from the config.

    ``dssd`` / ``tcb`` / ``refinenet`` for a top-down module; ``ssd_extra`` for extra layers
    only (plain SSD); ``none`` without extra layers either; None for two-stage detectors.
    Read from the resolved config rather than Hydra's choices, so a detector's default
    (``meta_arch=refinedet`` selects ``neck/refinedet.yaml``, i.e. TCBs) gets the same name
    as the explicit ``neck=tcb``.
    """
    meta = (record.get("config") or {}).get("meta_arch") or {}
    if not isinstance(meta, dict) or ("neck" not in meta and "top_down" not in meta):
        return None
    top_down = meta.get("top_down")
    if isinstance(top_down, dict) and "_target_" in top_down:
        name = str(top_down["_target_"]).rsplit(".", 1)[-1]
        return _TOP_DOWN_NAMES.get(name, name)
    neck = meta.get("neck")
    if isinstance(neck, dict) and neck.get("depths") == []:
        return "none"
    return "ssd_extra"


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """Scalar keys of one result plus the lifted config values; nested values are dropped."""
    row = {}
    for key, value in record.items():
        if isinstance(value, str | int | float | bool) or value is None:
            row[key] = value
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            row[key] = "x".join(str(v) for v in value)  # e.g. input_size [128, 128] -> 128x128
    config = record.get("config") or {}
    for column, dotted in CONFIG_COLUMNS:
        value = _lookup(config, dotted)
        if isinstance(value, str | int | float | bool) or value is None:
            row.setdefault(column, value)
    for column, dotted in STATS_COLUMNS:
        row.setdefault(column, _lookup(record, dotted))
    row["neck"] = _neck(record)
    row["repeat_group"] = repeat_group(record)  # rows sharing it are seed repeats
    return row


def _label(row: pd.Series) -> str:
    """``SSD w/ ResNet-18, 128 px`` plus the knobs that distinguish it (proposals, stride)."""
    text = f"{meta_arch_name(row['meta_arch'])} w/ {extractor_name(row['extractor'])}"
    extras = []
    if pd.notna(row.get("image_size")):
        extras.append(f"{int(row['image_size'])} px")
    if row.get("meta_arch") in TWO_STAGE and pd.notna(row.get("num_proposals")):
        extras.append(f"{int(row['num_proposals'])} prop.")
    if pd.notna(row.get("output_stride")) and int(row["output_stride"]) == 8:
        extras.append("stride 8")
    return ", ".join([text, *extras])


def results_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per job, with numeric columns as floats (NaN when missing) and derived columns."""
    df = pd.DataFrame([_flat(r) for r in records])
    for column in (*ID_COLUMNS, *NUMERIC_COLUMNS):
        if column not in df:
            df[column] = np.nan if column in NUMERIC_COLUMNS else None
    for column in NUMERIC_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    for column in ACCURACY_COLUMNS:
        df.loc[df[column] == _COCO_ABSENT, column] = np.nan
    df = df.astype({"meta_arch": object, "extractor": object, "status": object})
    df = df.copy()  # one block per dtype again: astype and the conversions split it per column
    df["meta_arch"] = df["meta_arch"].fillna("unknown")
    df["extractor"] = df["extractor"].fillna("unknown")
    df["status"] = df["status"].fillna("failed")
    # Single-shot detectors have no proposals: leave NaN rather than a misleading number.
    df.loc[~df["meta_arch"].isin(TWO_STAGE), "num_proposals"] = np.nan
    df["family"] = np.where(df["meta_arch"].isin(TWO_STAGE), "two-stage", "single-shot")
    df["label"] = df.apply(_label, axis=1) if len(df) else pd.Series(dtype=object)
    top1 = [
        imagenet_top1(e, m if isinstance(m, str) else None)
        for e, m in zip(df["extractor"], df.get("model_name", [None] * len(df)), strict=True)
    ]
    df["top1"] = pd.to_numeric(pd.Series([t for t, _ in top1], index=df.index, dtype=object))
    df["top1_source"] = [s for _, s in top1]
    ordered = [c for c in (*ID_COLUMNS, "family", *ACCURACY_COLUMNS, *COST_COLUMNS) if c in df]
    df = df[ordered + [c for c in df.columns if c not in ordered]]
    sort = ["meta_arch", "extractor", "image_size", "num_proposals", "output_stride", "job"]
    return df.sort_values(sort, na_position="first", kind="stable").reset_index(drop=True)


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """Read every result.json under ``sweep_dir`` into one table (see :func:`results_table`)."""
    return results_table(load_records(sweep_dir))


def ok_rows(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Rows with status ok and finite values in ``columns`` (what a figure can plot)."""
    rows = df[df["status"] == "ok"]
    return rows.dropna(subset=list(columns)) if columns else rows
