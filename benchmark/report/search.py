"""The frontier search's progress: hypervolume of the found frontier against jobs run.

A search folder (``+search=frontier``) holds ``search.json`` (objectives, sampler, budget,
the grid folder to compare with) and ``search_trials.csv`` (one row per trial, in the order
the study ran them), written by ``benchmark.search.sweeper``. This module replays the jobs in
that order, taking each job's values from its result.json (the results table), and writes:

* ``search.csv``: per job, its values and the hypervolume of the frontier found so far (and,
  with a grid, that hypervolume as a fraction of the grid's);
* ``search_hypervolume.png``: that curve, the grid's hypervolume and its 90 % line;
* a section of ``report.html``.

With a grid run of the same space (``detbench-report --grid PATH`` or
``hydra.sweeper.grid``), the comparison: the grid's hypervolume, the search's fraction of
it, the jobs the search needed to reach 90 % of it, and which of the grid's frontier
configurations the search ran (matched by ``config_fingerprint``, the job's identity). One
reference point serves both: accuracy 0 and 1.1 x the largest cost of either folder
(``benchmark.search.hypervolume``; cost on a log10 scale).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from benchmark import schema
from benchmark.report.pareto import pareto_mask
from benchmark.report.style import styled
from benchmark.report.table import load_results
from benchmark.search.hypervolume import (
    hypervolume_2d,
    hypervolume_curve,
    jobs_to_reach,
    reference_cost,
)

SEARCH_FILE = "search.json"  # as benchmark.search.sweeper writes them (no Optuna import here)
TRIALS_FILE = "search_trials.csv"
FIGURE = "search_hypervolume.png"
TARGET = 0.9  # the share of the grid's hypervolume the comparison counts jobs to


@dataclass
class SearchProgress:
    """The search's jobs in order, their hypervolume curve and the grid comparison."""

    accuracy: str
    cost: str
    jobs: pd.DataFrame  # one row per launched job: job, status, accuracy, cost, hypervolume
    ref_cost: float | None
    sampler: str = ""
    grid: Path | None = None
    grid_jobs: int = 0
    grid_hypervolume: float | None = None
    grid_frontier: list[str] = field(default_factory=list)  # labels / jobs of its frontier
    found: list[str] = field(default_factory=list)  # those the search ran
    jobs_to_target: int | None = None

    @property
    def hypervolume(self) -> float | None:
        return float(self.jobs["hypervolume"].iloc[-1]) if len(self.jobs) else None

    @property
    def fraction(self) -> float | None:
        if self.hypervolume is None or not self.grid_hypervolume:
            return None
        return self.hypervolume / self.grid_hypervolume


def launched_jobs(sweep_dir: Path) -> pd.DataFrame | None:
    """The launched trials of ``search_trials.csv`` in the order they ran (None: no search)."""
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file():
        return None
    trials = pd.read_csv(path, dtype={"job": str}, keep_default_na=False)
    launched = trials[trials["launched"].astype(str) == "True"]
    return launched.sort_values("trial", kind="stable").reset_index(drop=True)


def _points(rows: pd.DataFrame, accuracy: str, cost: str) -> tuple[np.ndarray, np.ndarray]:
    ok = rows["status"] == "ok" if "status" in rows else True
    acc = pd.to_numeric(rows.get(accuracy), errors="coerce").where(ok)
    cst = pd.to_numeric(rows.get(cost), errors="coerce").where(ok)
    return cst.to_numpy(dtype=float), acc.to_numpy(dtype=float)


def search_progress(
    sweep_dir: str | Path, df: pd.DataFrame, grid: str | Path | None = None
) -> SearchProgress | None:
    """The progress of the search in ``sweep_dir`` (None when it is not a search folder).

    Args:
        sweep_dir: the search's sweep folder.
        df: its results table (``benchmark.report.table.load_results``).
        grid: a folder with a grid run of the same space (default: ``search.json``'s).
    """
    sweep_dir = Path(sweep_dir)
    order = launched_jobs(sweep_dir)
    meta_path = sweep_dir / SEARCH_FILE
    if order is None or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    accuracy, cost = meta["accuracy"], meta["cost"]
    grid = grid if grid is not None else meta.get("grid")
    by_job = df.set_index("job") if "job" in df and len(df) else pd.DataFrame()
    rows = by_job.reindex(order["job"]) if len(by_job) else pd.DataFrame(index=order["job"])
    rows = rows.reset_index()
    costs, accs = _points(rows, accuracy, cost)
    grid_df = load_results(Path(grid)) if grid is not None and Path(grid).is_dir() else None
    all_costs = list(costs[np.isfinite(accs)])
    if grid_df is not None and len(grid_df):
        g_cost, g_acc = _points(grid_df, accuracy, cost)
        all_costs += list(g_cost[np.isfinite(g_acc)])
    ref = reference_cost(all_costs) if any(np.isfinite(all_costs)) else None
    curve = hypervolume_curve(costs, accs, ref) if ref is not None else [0.0] * len(rows)
    jobs = pd.DataFrame(
        {
            "job_number": np.arange(1, len(rows) + 1),
            "job": rows["job"],
            "status": rows.get("status", pd.Series([None] * len(rows))),
            accuracy: accs,
            cost: costs,
            "hypervolume": curve,
        }
    )
    progress = SearchProgress(accuracy, cost, jobs, ref, sampler=str(meta.get("sampler", "")))
    if grid_df is not None and ref is not None:
        _compare(progress, grid_df, rows, Path(grid))
    return progress


def _compare(progress: SearchProgress, grid_df: pd.DataFrame, rows: pd.DataFrame, grid: Path):
    g_cost, g_acc = _points(grid_df, progress.accuracy, progress.cost)
    progress.grid = grid
    progress.grid_jobs = len(grid_df)
    progress.grid_hypervolume = hypervolume_2d(g_cost, g_acc, progress.ref_cost)
    on_front = grid_df[pareto_mask(g_cost, g_acc)]
    ran = set(rows.get("config_fingerprint", pd.Series(dtype=str)).dropna())
    labels = on_front["label"] if "label" in on_front else on_front["job"]
    necks = on_front["neck"] if "neck" in on_front else [None] * len(on_front)
    # the label names no neck: add it, or two single-shot points read the same
    name = [
        f"{lb} ({nk})" if isinstance(nk, str) and nk else str(lb)
        for lb, nk in zip(labels, necks, strict=True)
    ]
    progress.grid_frontier = list(name)
    fps = on_front.get("config_fingerprint", pd.Series([None] * len(on_front)))
    progress.found = [n for n, fp in zip(name, fps, strict=True) if fp in ran]
    if progress.grid_hypervolume > 0:
        progress.jobs["grid_fraction"] = progress.jobs["hypervolume"] / progress.grid_hypervolume
        progress.jobs_to_target = jobs_to_reach(
            list(progress.jobs["hypervolume"]), TARGET * progress.grid_hypervolume
        )


@styled
def hypervolume_figure(progress: SearchProgress) -> Figure | None:
    """Hypervolume of the found frontier vs jobs run; the grid's and 90 % of it when known."""
    if not len(progress.jobs):
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    g = progress.grid_hypervolume
    scale = 100.0 / g if g else 1.0  # with a grid: percent of the grid's hypervolume
    x, y = progress.jobs["job_number"], progress.jobs["hypervolume"] * scale
    ax.step(x, y, where="post", color="C0", label=f"search ({progress.sampler or 'Optuna'})")
    ax.plot(x, y, ".", color="C0")
    failed = progress.jobs["status"] != "ok"
    if failed.any():
        ax.plot(x[failed], y[failed], "x", color="C3", label="failed or skipped job")
    if g:
        ax.axhline(100, color="k", lw=1, label=f"grid ({progress.grid_jobs} jobs)")
        ax.axhline(100 * TARGET, color="k", lw=1, ls="--", label=f"{TARGET:.0%} of the grid")
        if progress.jobs_to_target is not None:
            ax.axvline(
                progress.jobs_to_target,
                color="C2",
                lw=1,
                ls=":",
                label=f"reached after {progress.jobs_to_target} jobs",
            )
        ax.set_ylabel("hypervolume found (% of the grid's)")
        ax.set_ylim(0, 105)
    else:
        ax.set_ylabel(f"hypervolume ({progress.accuracy} x log10 {progress.cost})")
        ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("jobs run by the search")
    ax.set_title(f"Frontier found vs jobs: {progress.accuracy} up, {progress.cost} down")
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return fig


def _number(value: float | None, fmt: str = "{:.4g}") -> str:
    return "–" if value is None or not np.isfinite(value) else fmt.format(value)


def search_html(progress: SearchProgress, figure: str | None) -> str:
    """The report's section on the search (the figure embedded by the caller's helper)."""
    p = progress
    lines = [
        f"<p>{len(p.jobs)} jobs run by the search ({html.escape(p.sampler)}), maximizing "
        f"<code>{p.accuracy}</code> and minimizing <code>{p.cost}</code> "
        f"({html.escape(schema.label(p.cost))}). Hypervolume of the found frontier: "
        f"{_number(p.hypervolume)} (reference point: {p.accuracy} 0, {p.cost} "
        f"{_number(p.ref_cost)}; cost on a log10 scale). Per job: <code>search.csv</code>.</p>"
    ]
    if p.grid is not None:
        reach = (
            f"reached {TARGET:.0%} of it after {p.jobs_to_target} jobs"
            if p.jobs_to_target is not None
            else f"did not reach {TARGET:.0%} of it"
        )
        lines.append(
            f"<p>Grid <code>{html.escape(str(p.grid))}</code>: {p.grid_jobs} jobs, hypervolume "
            f"{_number(p.grid_hypervolume)}. The search found {_number(p.fraction, '{:.1%}')} "
            f"of it and {reach}; it ran {len(p.found)} of the grid's "
            f"{len(p.grid_frontier)} frontier configurations"
            + (f" ({html.escape(', '.join(map(str, p.found)))})" if p.found else "")
            + ".</p>"
        )
    if figure:
        lines.append(figure)
    return "\n".join(lines)


def write_search_report(
    sweep_dir: str | Path, df: pd.DataFrame, out_dir: str | Path, grid: str | Path | None = None
) -> tuple[SearchProgress | None, dict[str, Path]]:
    """Write ``search.csv`` and ``search_hypervolume.png`` for a search folder.

    Returns:
        The progress (None when ``sweep_dir`` is not a search folder) and the files written.
    """
    progress = search_progress(sweep_dir, df, grid)
    out_dir = Path(out_dir)
    if progress is None:
        return None, {}
    files = {"search.csv": out_dir / "search.csv"}
    from benchmark.results import write_text_atomic

    write_text_atomic(files["search.csv"], progress.jobs.to_csv(index=False))
    fig = hypervolume_figure(progress)
    if fig is not None:
        from benchmark.report.style import RC

        files[FIGURE] = out_dir / FIGURE
        fig.savefig(files[FIGURE], dpi=RC["savefig.dpi"], facecolor="white")
    return progress, files
