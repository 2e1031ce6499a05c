"""Aggregation and the trade-off report of a sweep (Huang et al. 2017 Figures 2-11, Table 3).

Roles, one module each: :mod:`.table` (every result.json as one DataFrame), :mod:`.pareto`
(frontiers and critical points), :mod:`.figures`, :mod:`.paper_figures` and
:mod:`.cost_figures` (matplotlib), :mod:`.html` (the self-contained page), :mod:`.writer`
(writes all files of a sweep folder), :mod:`.select` (the metric, costs and rows a report is
about), :mod:`.cli` (``detbench-report``) and :mod:`.callback` (runs it after every
multirun). Columns, labels, formats and cost axes come from :mod:`benchmark.schema`.

The names below are imported on first use (PEP 562), so importing the callback at the start
of every ``detbench`` run does not load pandas and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FIGURES": "writer",
    "ReportSummary": "writer",
    "save_figures": "writer",
    "write_report": "writer",
    "load_results": "table",
    "critical_points": "pareto",
    "frontier": "pareto",
    "frontier_table": "pareto",
    "pareto_mask": "pareto",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
