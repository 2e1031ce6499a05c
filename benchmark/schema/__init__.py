"""The result schema: every key of ``result.json``, ``results.csv`` and ``frontier.csv``, once.

Each key is declared in :mod:`benchmark.schema.keys` with its unit, label, group, kind, format,
whether it is a cost or an accuracy, and which measurement writes it (:class:`Key`). Everything
else derives from that declaration, at call time:

* the null defaults of a measurement (:func:`nulls`; ``benchmark.measure``) and the COCO
  metric names (``benchmark.evaluate.METRIC_KEYS``);
* the table's numeric columns, column order and config-derived columns
  (``benchmark.report.table``), the report's table columns and protocol table
  (``benchmark.report.html``), axis labels (``benchmark.report.style.label``) and the default
  Pareto axes (:func:`cost_axes`);
* the choices and errors of ``detbench-report --metric/--cost`` and each job's last log line
  (:mod:`benchmark.schema.format`);
* the key tables of ``results/README.md`` (:mod:`benchmark.schema.docs`).

So a new metric touches its probe and :mod:`benchmark.schema.keys`, nothing else.
"""

from __future__ import annotations

import difflib
from typing import Any

from benchmark.schema.key import FORMATS, KINDS, Key
from benchmark.schema.keys import KEYS as _DECLARED

__all__ = [
    "FORMATS",
    "GROUPS",
    "KEYS",
    "KINDS",
    "Key",
    "UnknownKeyError",
    "accuracy_metrics",
    "lookup_columns",
    "cost_axes",
    "cost_columns",
    "get",
    "keys",
    "label",
    "names",
    "nulls",
    "numeric_columns",
    "protocol_columns",
    "table_columns",
]

# Sections of results/README.md, in order: group -> title.
GROUPS = {
    "identity": "Identity and outcome",
    "data": "Data and model size",
    "training": "Training",
    "accuracy": "Accuracy (COCO evaluation with pycocotools, validation split)",
    "latency": "Latency and throughput (batch 1, eval mode, real validation images)",
    "flops": "FLOPs and roofline",
    "memory": "Memory",
    "deployment": "Deployment runtime",
    "measurement": "The measurement run",
    "environment": "Environment (on every result, even failed ones)",
    "config": "Configuration values (results.csv)",
    "frontier": "frontier.csv",
    "extractors": "extractors.csv (the extractor comparison)",
}


def _registry(declared: list[Key]) -> dict[str, Key]:
    registry: dict[str, Key] = {}
    for key in declared:
        if key.name in registry:
            raise ValueError(f"result key {key.name!r} is declared twice in benchmark.schema.keys")
        if key.group not in GROUPS:
            raise ValueError(f"result key {key.name!r}: group {key.group!r} not in {list(GROUPS)}")
        registry[key.name] = key
    return registry


#: name -> :class:`Key`, in declaration order (the column order of tables).
KEYS: dict[str, Key] = _registry(_DECLARED)


class UnknownKeyError(KeyError):
    """A name that is not a declared key (or not one of the kind asked for)."""

    def __init__(self, name: str, valid: list[str], what: str = "result key"):
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        self.message = f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def get(name: str) -> Key:
    """The declared key ``name``; :class:`UnknownKeyError` lists the valid ones."""
    try:
        return KEYS[name]
    except KeyError:
        raise UnknownKeyError(name, list(KEYS)) from None


def keys(**where: Any) -> list[Key]:
    """Declared keys whose attributes equal ``where`` (``keys(probe="latency")``)."""
    return [k for k in KEYS.values() if all(getattr(k, a) == v for a, v in where.items())]


def names(**where: Any) -> list[str]:
    return [k.name for k in keys(**where)]


def label(name: str) -> str:
    """Axis label with unit of a column; the column name when it is not declared."""
    key = KEYS.get(name)
    return key.title if key is not None else name


def nulls(*probes: str) -> dict[str, None]:
    """Every key the given measurements write, as None: what a result holds when they are
    disabled or fail."""
    return {k.name: None for k in KEYS.values() if k.probe in probes}


def numeric_columns() -> list[str]:
    """Scalar numeric columns of ``results.csv`` (coerced to float, NaN when missing)."""
    return [k.name for k in KEYS.values() if k.numeric and k.where in ("result", "table")]


def accuracy_metrics() -> list[str]:
    """Columns a frontier can maximize (``detbench-report --metric``)."""
    return names(accuracy=True)


def cost_columns() -> list[str]:
    """Columns a frontier can be drawn against (``detbench-report --cost``)."""
    return names(cost=True)


def cost_axes() -> dict[str, str]:
    """The report's default frontiers: cost column -> axis name (``pareto_<axis>.png``)."""
    return {k.name: k.axis for k in KEYS.values() if k.axis}


def lookup_columns() -> list[tuple[str, str]]:
    """``(column, dotted path in the result)``: columns the table reads from a job's config
    or nested values when the result itself lacks them."""
    return [(k.name, k.lookup) for k in KEYS.values() if k.lookup]


def table_columns() -> list[str]:
    """Columns of the report's table of every configuration: declaration order, the job
    folder last (it is the reference, not a measurement)."""
    cols = names(table=True)
    return [c for c in cols if c != "job"] + (["job"] if "job" in cols else [])


def protocol_columns() -> dict[str, str]:
    """Columns of the report's timing-protocol table -> their description."""
    return {k.name: k.title for k in KEYS.values() if k.protocol}
