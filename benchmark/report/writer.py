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

from benchmark import schema
from benchmark.report import cost_figures as cf
from benchmark.report import extractors as ex
from benchmark.report import paper_figures as pf
from benchmark.report.backends import backend_table
from benchmark.report.figures import pareto_figure
from benchmark.report.html import Section, figures_html, render_html
from benchmark.report.interactive import interactive_section
from benchmark.report.pareto import frontier_table
from benchmark.report.repeats import summarize_repeats
from benchmark.report.select import SelectionError, check_choices, select_rows
from benchmark.report.style import RC
from benchmark.report.table import load_results
from benchmark.results import write_text_atomic

__all__ = ["FIGURES", "ReportSummary", "SelectionError", "save_figures", "write_report"]

FigureFn = Callable[[pd.DataFrame], Figure | None]


def _pareto(cost: str, accuracy: str) -> FigureFn:
    return lambda df: pareto_figure(df, cost, accuracy)


def axis_names(costs: list[str] | None = None) -> dict[str, str]:
    """Cost column -> axis name (``pareto_<axis>.png``): the schema's default frontiers, or
    the given costs (named by their declared axis, else by the column)."""
    if costs is None:
        return schema.cost_axes()
    return {c: schema.KEYS[c].axis or c if c in schema.KEYS else c for c in costs}


def figure_functions(accuracy: str = "map", costs: list[str] | None = None) -> dict[str, FigureFn]:
    """File name -> figure function, in report order, for frontiers of ``accuracy`` against
    ``costs`` (default: the schema's cost axes)."""
    return {
        **{
            f"pareto_{name}.png": _pareto(cost, accuracy)
            for cost, name in axis_names(costs).items()
        },
        **PAPER_FIGURES,
        "fig12_extractors.png": lambda df: ex.extractor_change_figure(df, accuracy),
        "fig13_gmacs_parts.png": ex.gmacs_parts_figure,
    }


# The paper's analysis figures. A function returns None when the sweep did not vary its axis
# (e.g. the resolution figure needs two resolutions); no file is written.
PAPER_FIGURES: dict[str, FigureFn] = {
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
# The default report's figures, in report order.
FIGURES: dict[str, FigureFn] = figure_functions()


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


def save_figures(
    df: pd.DataFrame, out_dir: str | Path, figures: dict[str, FigureFn] | None = None
) -> dict[str, Path]:
    """Write every applicable figure of ``figures`` (default :data:`FIGURES`) into ``out_dir``
    as PNG (for the page) and as SVG and PDF (vector, for papers: ``<stem>.svg``,
    ``<stem>.pdf``); returns PNG name -> path.

    Figures of an earlier report that no longer apply are removed (also frontiers of cost
    axes not drawn this time), so a folder never shows a stale plot next to a new table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = FIGURES if figures is None else figures
    stems = {Path(name).stem for name in figures}
    for suffix in VECTOR_FORMATS + (".png",):
        for stale in out_dir.glob(f"pareto_*{suffix}"):
            if stale.stem not in stems:
                stale.unlink(missing_ok=True)
    written = {}
    for name, make in figures.items():
        path = out_dir / name
        fig = make(df)
        if fig is None:
            for old in (path, *(path.with_suffix(s) for s in VECTOR_FORMATS)):
                old.unlink(missing_ok=True)
            continue
        fig.savefig(path, dpi=RC["savefig.dpi"], facecolor="white")
        for suffix in VECTOR_FORMATS:
            # No creation date in the vector files: the same sweep gives the same bytes.
            fig.savefig(path.with_suffix(suffix), facecolor="white", metadata=_NO_DATE[suffix])
        written[name] = path
    return written


def _search_sections(
    sweep_dir: Path, df: pd.DataFrame, out_dir: Path, grid: str | Path | None, files: dict
) -> list[Section]:
    """The frontier search's section (none for a folder that is not a search's)."""
    from benchmark.report import search

    progress, written = search.write_search_report(sweep_dir, df, out_dir, grid)
    if progress is None:
        return []
    files.update(written)
    figure = {search.FIGURE: written[search.FIGURE]} if search.FIGURE in written else {}
    body = search.search_html(progress, figures_html(figure) if figure else None)
    return [Section("search", "Frontier search", body, figures=tuple(figure))]


VECTOR_FORMATS = (".svg", ".pdf")
_NO_DATE = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    accuracy: str = "map",
    costs: list[str] | None = None,
    where: list[str] | None = None,
    grid: str | Path | None = None,
    baseline: str | None = None,
) -> ReportSummary:
    """Aggregate ``sweep_dir`` and write the report files into ``out_dir`` (default: it).

    Args:
        sweep_dir: the sweep folder (every result.json under it).
        out_dir: where the files go (default: ``sweep_dir``).
        accuracy: the accuracy the frontiers maximize (:func:`benchmark.schema.accuracy_metrics`).
        costs: the cost columns to draw frontiers against (default: the schema's axes).
        where: row filters ``column=value[,value...]`` (:func:`select_rows`).
        grid: a folder with a grid run of the same space, compared with a frontier search's
            progress (default: the one the search names; ``benchmark.report.search``).
        baseline: the reference extractor of the extractor comparison (default: the one in
            most settings, :func:`benchmark.report.extractors.choose_baseline`).

    Returns:
        The counts by status and the written files (``results.csv``, ``summary.csv``,
        ``frontier.csv``, the PNGs and ``report.html``).

    Raises:
        SelectionError: an unknown metric, cost, column or baseline extractor, or a
            malformed filter; nothing is written then.
    """
    check_choices(accuracy, costs)
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    df = load_results(sweep_dir)
    df, selection = select_rows(df, where or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_repeats(df)  # one row per configuration: seed repeats aggregated
    front = frontier_table(summary, accuracy, axis_names(costs))
    try:
        pairs = ex.comparison_table(summary, accuracy, baseline)
    except ex.UnknownBaselineError as e:
        raise SelectionError(str(e)) from None
    tables = {
        "results.csv": df,
        "summary.csv": summary,
        "frontier.csv": front,
        "extractors.csv": pairs.drop(columns=["extractor_group"]),
    }
    if not (backends := backend_table(df)).empty:  # a configuration timed in several backends
        tables["backends.csv"] = backends
    files = {name: out_dir / name for name in tables}
    for name, table in tables.items():
        _write_text(
            files[name], table.drop(columns=["job_dir"], errors="ignore").to_csv(index=False)
        )
    figures = save_figures(df, out_dir, figure_functions(accuracy, costs))
    files.update(figures)
    for name, path in figures.items():
        files.update({f"{Path(name).stem}{s}": path.with_suffix(s) for s in VECTOR_FORMATS})
    scratch = "pretrained" in df and bool(
        df.loc[df["status"] == "ok", "pretrained"].eq(False).any()
    )
    sections = [
        interactive_section(summary, axis_names(costs), accuracy),
        ex.extractor_section(
            pairs,
            ex.classifier_answers(summary, accuracy),
            figures,
            accuracy=accuracy,
            scratch=scratch,
        ),
    ]
    sections += _search_sections(sweep_dir, df, out_dir, grid, files)
    page = render_html(
        df,
        front,
        figures,
        title=sweep_dir.resolve().name,
        source=str(sweep_dir),
        accuracy=accuracy,
        selection=selection,
        summary=summary,
        sections=sections,
    )
    files["report.html"] = out_dir / "report.html"
    _write_text(files["report.html"], page)
    counts = {str(k): int(v) for k, v in df["status"].value_counts().items()} if len(df) else {}
    return ReportSummary(folder=out_dir, counts=counts, files=files)
