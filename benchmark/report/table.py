"""Every ``result.json`` under a sweep folder as one pandas table, one row per job.

A result is flat JSON; every key is declared in :mod:`benchmark.schema` (``results/README.md``
lists them). The table keeps the scalar keys, has a column for every declared scalar key
(NaN where a result lacks it, so results written before a measurement existed still load),
reads the declared config values that are not top-level keys (training length,
``output_stride`` of older results...) from the resolved config, and adds the derived
columns the figures use (``label``, ``top1``). Names and families come from the model
metadata each job records (``family``, ``meta_arch_name``, ``neck``...); for results written
before jobs recorded it, from the model class named in the result's config.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark import schema
from benchmark.report.backends import backend_group
from benchmark.report.imagenet import imagenet_top1
from benchmark.report.repeats import extractor_group, repeat_group
from benchmark.report.style import extractor_name
from benchmark.results import RESULT_FILE

log = logging.getLogger(__name__)

# COCO's summarize() writes -1 for "no ground truth of this kind": not a score.
_COCO_ABSENT = -1.0
# Keys every job records from its model (models.meta_arch.base.ModelInfo.result_keys).
MODEL_KEYS = ("family", "meta_arch_name", "uses_proposals", "neck", "num_proposals")


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


@cache
def _model_class(target: str):
    from models.meta_arch.base import import_object  # torch only for results that need it

    return import_object(target)


def model_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The model keys (:data:`MODEL_KEYS`) of a result written before jobs recorded them,
    asked from the model class its config names (``config_info``); {} when there is none."""
    meta = (record.get("config") or {}).get("meta_arch")
    if not isinstance(meta, dict) or "_target_" not in meta:
        return {}
    try:
        info = _model_class(str(meta["_target_"])).config_info(meta)
    except Exception as e:  # an old or foreign class: the row still loads, unlabelled
        log.debug("no model metadata for %s: %s", meta["_target_"], e)
        return {}
    return {k: v for k, v in info.result_keys().items() if k in MODEL_KEYS}


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """Scalar keys of one result plus the lifted config values; nested values are dropped."""
    row = {}
    for key, value in record.items():
        if isinstance(value, str | int | float | bool) or value is None:
            row[key] = value
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            row[key] = "x".join(str(v) for v in value)  # e.g. input_size [128, 128] -> 128x128
    if "family" not in record:  # written before jobs recorded their model's metadata
        for key, value in model_metadata(record).items():
            row.setdefault(key, value)
    for column, dotted in schema.lookup_columns():
        value = _lookup(record, dotted)
        if isinstance(value, str | int | float | bool) or value is None:
            row.setdefault(column, value)
    if row.get("backend") is None:  # written before bench.backend: eager, or the old flag
        bench = (record.get("config") or {}).get("bench") or {}
        row["backend"] = bench.get("backend") or (
            "compile" if record.get("compile") or bench.get("compile") else "eager"
        )
    diff = record.get("parity_max_abs_diff")
    if isinstance(diff, dict):
        row["parity_boxes_px"] = diff.get("boxes")
    row["backend_group"] = backend_group(record)  # the configuration across backends
    row["repeat_group"] = repeat_group(record)  # rows sharing it are seed repeats
    row["extractor_group"] = extractor_group(record)  # rows sharing it differ in the extractor
    return row


def _label(row: pd.Series) -> str:
    """``SSD w/ ResNet-18, 128 px`` plus the knobs that distinguish it (proposals, stride,
    a backend other than eager)."""
    name = row.get("meta_arch_name")
    text = f"{name if isinstance(name, str) else row['meta_arch']} w/ "
    text += extractor_name(row["extractor"])
    extras = []
    if pd.notna(row.get("image_size")):
        extras.append(f"{int(row['image_size'])} px")
    if pd.notna(row.get("num_proposals")):
        extras.append(f"{int(row['num_proposals'])} prop.")
    if pd.notna(row.get("output_stride")) and int(row["output_stride"]) == 8:
        extras.append("stride 8")
    if isinstance(row.get("backend"), str) and row["backend"] != "eager":
        extras.append(row["backend"])
    return ", ".join([text, *extras])


def results_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per job, with numeric columns as floats (NaN when missing) and derived columns."""
    df = pd.DataFrame([_flat(r) for r in records])
    numeric = schema.numeric_columns()
    declared = [k.name for k in schema.KEYS.values() if k.scalar and k.where in ("result", "table")]
    df = df.reindex(columns=[*df.columns, *(c for c in declared if c not in df)])
    # One block of converted columns rather than ~100 single inserts (pandas fragments).
    converted = df[numeric].apply(pd.to_numeric, errors="coerce")
    df = pd.concat([df.drop(columns=numeric), converted], axis=1)
    for column in schema.names(probe="cocoeval"):
        df.loc[df[column] == _COCO_ABSENT, column] = np.nan
    df = df.astype({c: object for c in ("meta_arch", "extractor", "status", "family", "neck")})
    df["meta_arch"] = df["meta_arch"].fillna("unknown")
    df["extractor"] = df["extractor"].fillna("unknown")
    df["status"] = df["status"].fillna("failed")
    df["family"] = df["family"].fillna("unknown")
    # Detectors without proposals: NaN rather than a misleading number from the config.
    proposals = df["uses_proposals"].map(lambda v: isinstance(v, bool | np.bool_) and bool(v))
    df.loc[~proposals.astype(bool), "num_proposals"] = np.nan
    df["label"] = df.apply(_label, axis=1) if len(df) else pd.Series(dtype=object)
    top1 = [
        imagenet_top1(e, m if isinstance(m, str) else None)
        for e, m in zip(df["extractor"], df.get("model_name", [None] * len(df)), strict=True)
    ]
    df["top1"] = pd.to_numeric(pd.Series([t for t, _ in top1], index=df.index, dtype=object))
    df["top1_source"] = [s for _, s in top1]
    ordered = [c for c in schema.KEYS if c in df]
    df = df[ordered + [c for c in df.columns if c not in ordered]].copy()
    sort = ["meta_arch", "extractor", "image_size", "num_proposals", "output_stride", "job"]
    return df.sort_values(sort, na_position="first", kind="stable").reset_index(drop=True)


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """Read every result.json under ``sweep_dir`` into one table (see :func:`results_table`)."""
    return results_table(load_records(sweep_dir))


def ok_rows(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Rows with status ok and finite values in ``columns`` (what a figure can plot)."""
    rows = df[df["status"] == "ok"]
    return rows.dropna(subset=list(columns)) if columns else rows
