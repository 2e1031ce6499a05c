"""Aggregation and the trade-off report of a sweep (Huang et al. 2017 Figures 2-11, Table 3).

Roles, one module each: :mod:`.table` (every result.json as one DataFrame), :mod:`.pareto`
(frontiers and critical points), :mod:`.figures` and :mod:`.paper_figures` (matplotlib),
:mod:`.html` (the self-contained page), :mod:`.writer` (writes all files of a sweep folder),
:mod:`.cli` (``detbench-report``) and :mod:`.callback` (runs it after every multirun).
"""

from benchmark.report.pareto import critical_points, frontier, frontier_table, pareto_mask
from benchmark.report.table import load_results
from benchmark.report.writer import FIGURES, ReportSummary, save_figures, write_report

__all__ = [
    "FIGURES",
    "ReportSummary",
    "critical_points",
    "frontier",
    "frontier_table",
    "load_results",
    "pareto_mask",
    "save_figures",
    "write_report",
]
