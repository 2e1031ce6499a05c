"""Seed repeats: one row per configuration (``summary.csv``) with mean, sd, n and intervals.

``seed=0,1,2`` in a sweep runs one configuration three times (the job folders differ by
``seed=``). Rows are repeats when their resolved configurations are equal apart from the
seed and the keys that never change a number (``progress``, ``force``, where results go,
the timing lock): :func:`repeat_group` is that identity, a column of the results table.

Per configuration the summary keeps the first repeat's descriptive columns, the mean of
every numeric column, and for the metrics that carry an interval (accuracy, latency):

* ``<metric>_sd``: the standard deviation over repeats (n >= 2);
* ``<metric>_ci_low`` / ``_ci_high``: with one run, that run's interval (bootstrap over
  validation images for accuracy, order statistics for the median latency); with n >= 2,
  the hull of Student's t interval of the mean over seeds (training noise) and the repeats'
  mean per-run interval (validation-sample or timing noise). The seeds are evaluated on the
  same validation images, so their spread alone never shows how much another set of images
  would move the number; the hull claims no more precision than either source allows. It
  is cut to the metric's range (AP and AR in [0, 1], times >= 0): with two seeds the t
  interval is +-9 standard deviations wide.

Error bars and the frontier's "better than" use these intervals.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import re
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmark import schema
from benchmark.identity import identity_config
from benchmark.intervals import mean_interval

# Metrics with a per-run interval (``<metric>_ci_low``/``_ci_high`` in result.json): the keys
# declared with ``interval=`` in benchmark/schema/keys.py.
INTERVAL_METRICS = tuple(k.name for k in schema.KEYS.values() if k.interval)
_RECORD_IDENTITY = ("meta_arch", "extractor", "dataset", "image_size", "reference_model")
_SEED_ITEM = re.compile(r"(^|,)seed=[^,]*")
_EXTRACTOR_ITEM = re.compile(r"(^|,)extractor=[^,]*")


def repeat_group(record: dict[str, Any]) -> str:
    """A short id shared by the repeats of one configuration (12 hex digits).

    From the job's identity (:func:`benchmark.identity.identity_config`: the keys that can
    change a number) without ``seed``, the one key repeats differ in; a result without a config
    (hand-made) falls back to its job folder with the ``seed=`` override removed, and one
    without either is a configuration of its own.
    """
    config = record.get("config")
    if isinstance(config, dict) and config:
        identity = identity_config(config)
        identity.pop("seed", None)
        # The config determines these; they also separate results whose config is partial.
        identity["_result"] = {k: record.get(k) for k in _RECORD_IDENTITY}
        text = json.dumps(identity, sort_keys=True, default=str)
    elif record.get("job"):
        text = _SEED_ITEM.sub("", str(record["job"])).strip(",")
    else:  # nothing to identify it by: a configuration of its own
        text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@functools.cache
def recipe_cell_keys(recipe_set: str, meta_arch: str) -> frozenset[str]:
    """Dotted config keys a ``recipe_set`` sets per extractor for ``meta_arch`` (any file of
    ``sweeps/recipe_cell/<recipe_set>/<meta_arch>/``): they go with the extractor."""
    try:
        folder = importlib.resources.files("sweeps") / "recipe_cell" / recipe_set / meta_arch
        files = [f for f in folder.iterdir() if f.name.endswith(".yaml")]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, OSError):
        return frozenset()
    keys: set[str] = set()
    for file in files:
        keys.update(_flatten(yaml.safe_load(file.read_text()) or {}))
    return frozenset(keys)


def extractor_group(record: dict[str, Any]) -> str:
    """A short id shared by configurations that differ only in the feature extractor.

    The job's identity (:func:`benchmark.identity.identity_config`) without the ``extractor``
    node and the seed, plus the extractor settings that are not the extractor itself
    (ImageNet weights or not, ``frozen_bn``, atrous mode); keys a ``recipe_set`` sets per
    extractor (:func:`recipe_cell_keys`) are left out. A result without a config falls back
    to its job folder without the ``extractor=`` and ``seed=`` overrides.
    """
    config = record.get("config")
    if isinstance(config, dict) and config:
        identity = identity_config(config)
        for key in ("seed", "extractor"):
            identity.pop(key, None)
        flat = _flatten(identity)
        recipe = config.get("recipe_set")
        meta = record.get("meta_arch")
        if isinstance(recipe, str) and recipe != "none" and isinstance(meta, str):
            cell = recipe_cell_keys(recipe, meta)
            flat = {k: v for k, v in flat.items() if k not in cell}
        ext = config.get("extractor") if isinstance(config.get("extractor"), dict) else {}
        flat["_extractor"] = {
            "imagenet": bool(ext.get("pretrained")) or bool(ext.get("weights_path")),
            "frozen_bn": ext.get("frozen_bn"),
            "atrous": record.get("output_stride", ext.get("output_stride")) == 8,
        }
        flat["_result"] = {k: record.get(k) for k in _RECORD_IDENTITY if k != "extractor"}
        text = json.dumps(flat, sort_keys=True, default=str)
    elif record.get("job"):
        text = _EXTRACTOR_ITEM.sub("", _SEED_ITEM.sub("", str(record["job"]))).strip(",")
    else:
        text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _interval(group: pd.DataFrame, metric: str, confidence: float) -> tuple[float, float]:
    """The interval of one configuration's metric (see the module docstring)."""
    values = group[metric].dropna()
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    lows = group[low_col] if low_col in group else pd.Series(np.nan, index=group.index)
    highs = group[high_col] if high_col in group else pd.Series(np.nan, index=group.index)
    lows, highs = pd.to_numeric(lows, errors="coerce"), pd.to_numeric(highs, errors="coerce")
    if len(values) == 0:
        return np.nan, np.nan
    if len(values) == 1:
        return float(lows.loc[values.index[0]]), float(highs.loc[values.index[0]])
    low, high = mean_interval(values.to_numpy(float), confidence)
    if lows.notna().all() and highs.notna().all():
        low, high = min(low, float(lows.mean())), max(high, float(highs.mean()))
    # The t interval knows no bounds; the metrics do (AP and AR in [0, 1], times >= 0).
    upper = np.inf if metric.endswith("_ms") else 1.0
    return max(low, 0.0), min(high, upper)


def summarize_repeats(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration of the ok rows of a results table.

    Args:
        df: :func:`benchmark.report.table.load_results` (needs ``repeat_group``; without it
            every row is its own configuration).
        confidence: level of the seed interval (the per-run intervals carry their own).

    Returns:
        The first repeat's columns with numeric ones averaged, plus ``n`` (repeats),
        ``seeds`` and ``jobs`` (``;``-separated), ``<metric>_sd`` and the intervals of
        :data:`INTERVAL_METRICS`, and ``ci_method`` (``bootstrap`` for one run,
        ``seeds+bootstrap`` for several). Same row order as ``df``.
    """
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return ok.assign(n=pd.Series(dtype=int))
    key = ok["repeat_group"] if "repeat_group" in ok else pd.Series(ok.index, index=ok.index)
    numeric = [c for c in ok.columns if pd.api.types.is_numeric_dtype(ok[c]) and c not in ("seed",)]
    rows = []
    for _, group in ok.groupby(key, sort=False):
        row = group.iloc[0].to_dict()
        row.update(group[numeric].mean(numeric_only=True).to_dict())
        seeds = pd.to_numeric(group.get("seed", pd.Series(dtype=float)), errors="coerce")
        row.update(
            n=len(group),
            seeds=";".join(str(int(s)) for s in sorted(seeds.dropna())),
            jobs=";".join(map(str, group["job"])) if "job" in group else "",
            ci_method="bootstrap" if len(group) == 1 else "seeds+bootstrap",
        )
        for metric in INTERVAL_METRICS:
            if metric not in group:
                continue
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            low, high = _interval(group.assign(**{metric: values}), metric, confidence)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        row.pop("seed", None)
        rows.append(row)
    out = pd.DataFrame(rows)
    lead = [c for c in ("label", "n", "seeds") if c in out]
    return out[lead + [c for c in out.columns if c not in lead]]
