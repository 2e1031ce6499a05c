"""Write a sweep's report: results.csv, summary.csv, frontier.csv, the figures and report.html.

Run by ``detbench-report <sweep folder>`` and, through the Hydra callback, at the end of
every multirun. It reads only the result.json files, so it can be re-run at any time, on a
sweep still running or copied from another machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from benchmark.report import cost_figures as cf
from benchmark.report import paper_figures as pf
from benchmark.report.figures import pareto_figure
from benchmark.report.html import render_html
from benchmark.report.pareto import COST_AXES, frontier_table
from benchmark.report.repeats import summarize_repeats
from benchmark.report.style import RC
from benchmark.report.table import load_results
from benchmark.results import write_text_atomic

FigureFn = Callable[[pd.DataFrame], Figure | None]


def _pareto(cost: str) -> FigureFn:
    return lambda df: pareto_figure(df, cost)


# File name -> figure function, in report order. A function returns None when the sweep did
# not vary its axis (e.g. the resolution figure needs two resolutions); no file is written.
FIGURES: dict[str, FigureFn] = {
    **{f"pareto_{name}.png": _pareto(cost) for cost, name in COST_AXES.items()},
    "fig03_top1.png": pf.top1_figure,
    "fig04_object_size.png": pf.object_size_figure,
    "fig05_resolution.png": pf.resolution_figure,
    "fig06_proposals.png": pf.proposals_figure,
    "fig07_latency_breakdown.png": cf.latency_breakdown_figure,
    "fig08_flops_vs_time.png": cf.flops_vs_time_figure,
    "fig09_memory.png": cf.memory_figure,
    "fig10_memory_vs_time.png": cf.memory_vs_time_figure,
    "fig11_map_iou.png": pf.map_iou_figure,
}


@dataclass
class ReportSummary:
    """What a report run wrote and the job counts it found."""

    folder: Path
    counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        """One line for logs and terminals: ``12 jobs: 10 ok, 1 skipped, 1 failed -> ...``."""
        parts = ", ".join(f"{self.counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed"))
        html_file = self.files.get("report.html", self.folder / "report.html")
        return f"{self.total} jobs: {parts} -> {html_file}"


def _write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a browser or CI never sees half a report (the
    file's mode follows the umask, like the figures beside it)."""
    write_text_atomic(path, text)


def save_figures(df: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write every applicable figure as PNG into ``out_dir``; returns name -> path.

    Figures of an earlier report that no longer apply are removed, so a folder never shows a
    stale plot next to a new table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, make in FIGURES.items():
        path = out_dir / name
        fig = make(df)
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        fig.savefig(path, dpi=RC["savefig.dpi"], facecolor="white")
        written[name] = path
    return written


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> ReportSummary:
    """Aggregate ``sweep_dir`` and write the report files into ``out_dir`` (default: it).

    Returns:
        The counts by status and the written files (``results.csv``, ``summary.csv``,
        ``frontier.csv``, the PNGs and ``report.html``).
    """
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    df = load_results(sweep_dir)
    summary = summarize_repeats(df)  # one row per configuration: seed repeats aggregated
    front = frontier_table(summary)
    tables = {"results.csv": df, "summary.csv": summary, "frontier.csv": front}
    files = {name: out_dir / name for name in tables}
    for name, table in tables.items():
        _write_text(
            files[name], table.drop(columns=["job_dir"], errors="ignore").to_csv(index=False)
        )
    figures = save_figures(df, out_dir)
    files.update(figures)
    page = render_html(
        df,
        front,
        figures,
        title=sweep_dir.resolve().name,
        source=str(sweep_dir),
        summary=summary,
    )
    files["report.html"] = out_dir / "report.html"
    _write_text(files["report.html"], page)
    counts = {str(k): int(v) for k, v in df["status"].value_counts().items()} if len(df) else {}
    return ReportSummary(folder=out_dir, counts=counts, files=files)
