"""``report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS, the
interactive frontiers' plotly.js inline).

It can be mailed or attached to a CI run and opened anywhere, offline: no external file, no
network request. Sections: status counts, the critical points, the interactive frontiers,
the figures, the frontiers, the analyses (the extractor comparison...), every configuration,
failed and skipped jobs with their errors, the jobs' data warnings, the device and software,
and the timing protocol the numbers follow.

A view of its own (an analysis with its table and figures) is a :class:`Section` built in its
own module and passed to :func:`render_html` by the writer; ``place`` says where it goes.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import schema
from benchmark.report.backends import backend_section
from benchmark.report.pareto import indistinguishable_critical_points
from benchmark.report.protocol import Protocols, uncertainty_text
from benchmark.report.style import device_title
from benchmark.results import read_result
from benchmark.schema.format import format_value

CAPTIONS = {
    "pareto_latency.png": "Accuracy vs time (Huang et al. Figure 2): marker = meta-architecture, "
    "colour = feature extractor, dashed = Pareto frontier, circled = critical points (Table 3).",
    "pareto_gmacs.png": "Accuracy vs multiply-adds: the frontier on a device-independent cost.",
    "pareto_memory.png": "Accuracy vs peak inference memory.",
    "fig03_top1.png": "Figure 3: detector accuracy vs the extractor's ImageNet top-1.",
    "fig04_object_size.png": "Figure 4: accuracy stratified by object size.",
    "fig05_resolution.png": "Figure 5: effect of image resolution.",
    "fig06_proposals.png": "Figure 6: effect of the number of proposals (two-stage detectors).",
    "fig07_latency_breakdown.png": "Figure 7: time per model, split into stages.",
    "fig08_flops_vs_time.png": "Figure 8: multiply-adds vs time.",
    "fig09_memory.png": "Figure 9: memory per model.",
    "fig10_memory_vs_time.png": "Figure 10: memory vs time.",
    "fig11_map_iou.png": "Figure 11: mAP@.5 and mAP@.75 vs mAP@[.5:.95].",
    "search_hypervolume.png": "Frontier search: hypervolume of the frontier found after each job "
    "(x: failed or skipped job); with a grid run, its hypervolume and 90 % of it.",
    "fig12_extractors.png": "Changing only the extractor: accuracy change vs latency ratio "
    "against the reference extractor of the same setting, per meta-architecture.",
    "fig13_gmacs_parts.png": "Where the multiply-adds go: extractor, neck and heads per model.",
}


@dataclass(frozen=True)
class Section:
    """A part of the page with its own heading.

    Attributes:
        anchor: the ``id`` of its heading (``extractors``), for links.
        title: the heading.
        body: its HTML (built with :func:`table_html` / :func:`figures_html`).
        place: ``frontiers`` (after the critical points: views of the frontiers themselves)
            or ``analyses`` (after the frontier table: comparisons along one axis).
        figures: the PNG names it embeds, which the general Figures section then leaves out.
    """

    anchor: str
    title: str
    body: str
    place: str = "analyses"
    figures: tuple[str, ...] = field(default=())

    def render(self) -> str:
        return f'<h2 id="{html.escape(self.anchor)}">{html.escape(self.title)}</h2>\n{self.body}'


PLACES = ("frontiers", "analyses")
# The page may load nothing: its scripts, styles and images are inline (data: URIs), and the
# browser refuses any other request (plotly.js cannot reach a CDN or a font server either).
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:"
)


def __getattr__(name: str):
    """``TABLE_COLUMNS``, ``ENVIRONMENT_COLUMNS``, ``PROTOCOL_COLUMNS``: derived from the
    schema when asked for (PEP 562), so they always match it."""
    derived = {
        "TABLE_COLUMNS": schema.table_columns,
        "ENVIRONMENT_COLUMNS": lambda: schema.names(group="environment"),
        "PROTOCOL_COLUMNS": schema.protocol_columns,
    }
    if name in derived:
        return derived[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#555}.counts span{display:inline-block;margin-right:1.2em;font-weight:600}
.ok{color:#1a7f37}.skipped{color:#9a6700}.failed{color:#cf222e}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.92em;margin-top:.3em}
table.tbl{border-collapse:collapse;font-size:.8em;margin:.5em 0}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:3px 6px;text-align:left}
table.tbl td{white-space:nowrap}table.tbl td.num{text-align:right}
table.tbl td.wrap{white-space:normal;min-width:12em;max-width:26em}
table.tbl td.path{white-space:normal;word-break:break-all;min-width:14em;font-size:.9em}
table.tbl th{background:#f6f8fa;cursor:pointer;vertical-align:bottom}
table.tbl th[data-dir=asc]::after{content:" \\25B2"}table.tbl th[data-dir=desc]::after{content:" \\25BC"}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.8em;white-space:pre-wrap}
"""


# Click a header to sort its table by it (numbers by their raw value, ``data-v``; empty
# cells last), click again to reverse. A few lines rather than a library: nothing to fetch.
_SORT_JS = """
document.querySelectorAll("table.tbl").forEach(t => t.querySelectorAll("thead th").forEach(
  (th, i) => th.addEventListener("click", () => {
    const dir = th.dataset.dir === "asc" ? -1 : 1;
    t.querySelectorAll("thead th").forEach(h => delete h.dataset.dir);
    th.dataset.dir = dir > 0 ? "asc" : "desc";
    const key = r => { const c = r.cells[i]; return c.dataset.v === undefined ?
      c.textContent : (c.dataset.v === "" ? NaN : parseFloat(c.dataset.v)); };
    const rows = [...t.tBodies[0].rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (typeof x === "number") {
        if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);
        return dir * (x - y);
      }
      return dir * String(x).localeCompare(String(y), undefined, {numeric: true});
    });
    rows.forEach(r => t.tBodies[0].appendChild(r));
  })));
"""


def _cell(column: str, value) -> str:
    return html.escape(format_value(column, value))


def _table(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """An HTML table of ``df``: headers and value formats from the schema (AP in percent, ms
    with about three digits), each header's tooltip the column's label; columns without a
    value anywhere are left out."""
    if df.empty:
        return "<p><em>none</em></p>"
    full = df
    if columns is not None:
        df = df[[c for c in columns if c in df and df[c].notna().any()]]
    # A column declared with an interval shows it in its cells: ``23.2 [21.0, 25.1]``.
    intervals = {}
    for column in df.columns:
        key = schema.KEYS.get(column)
        ends = list(key.interval) if key is not None and key.interval else []
        if ends and all(c in full for c in ends) and full[ends].notna().any().all():
            intervals[column] = key.interval
    head = []
    for column in df.columns:
        key = schema.KEYS.get(column)
        header = key.header if key is not None else column
        header += " [95 % CI]" if column in intervals else ""
        tip = f' title="{html.escape(key.label or key.description)}"' if key is not None else ""
        head.append(f"<th{tip}>{html.escape(header)}</th>")

    def cell(index, column, value) -> str:
        text = _cell(column, value)
        if column in intervals:
            low, high = (full.at[index, c] for c in intervals[column])
            if pd.notna(low) and pd.notna(high):
                text += f" [{_cell(column, low)}, {_cell(column, high)}]"
        if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
            # The raw number sorts the column (what is shown is rounded or in percent).
            raw = "" if pd.isna(value) else repr(float(value))
            return f'<td class="num" data-v="{raw}">{text}</td>'
        kind = "path" if column in ("job", "jobs", "job_dir") else "wrap" if len(text) > 40 else ""
        return f'<td class="{kind}">{text}</td>' if kind else f"<td>{text}</td>"

    body = [
        "<tr>" + "".join(cell(index, c, v) for c, v in row.items()) + "</tr>"
        for index, row in df.iterrows()
    ]
    return (
        f'<table class="tbl"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def figures_html(figures: dict[str, Path]) -> str:
    """The figures embedded as base64 PNG, each with its caption and links to its SVG and
    PDF when they were written beside it."""
    return _figures(figures)


def table_html(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A sortable table of ``df`` with the schema's headers and formats."""
    return _table(df, columns)


def _figures(figures: dict[str, Path]) -> str:
    parts = []
    for name, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = html.escape(CAPTIONS.get(name, name))
        # The vector copies beside the page (not embedded: a link fetches nothing until used).
        vectors = " ".join(
            f'<a href="{html.escape(Path(path).with_suffix(s).name)}">{s[1:].upper()}</a>'
            for s in (".svg", ".pdf")
            if Path(path).with_suffix(s).is_file()
        )
        parts.append(
            f'<figure id="{html.escape(name)}"><img alt="{html.escape(name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{caption} '
            f"<code>{html.escape(name)}</code> {vectors}</figcaption></figure>"
        )
    return (
        "\n".join(parts) or "<p><em>No figure: no job finished with accuracy and timing.</em></p>"
    )


def _problems(df: pd.DataFrame) -> str:
    rows = df[df["status"] != "ok"]
    if rows.empty:
        return "<p>Every job finished ok.</p>"
    parts = [_table(rows, ["status", "job", "meta_arch", "extractor", "error"])]
    for _, row in rows[rows["status"] == "failed"].iterrows():
        trace = Path(str(row.get("job_dir", ""))) / "traceback.txt"
        if trace.is_file():
            tail = "\n".join(trace.read_text(errors="replace").splitlines()[-40:])
            parts.append(
                f"<details><summary>traceback: {html.escape(str(row['job']))}</summary>"
                f"<pre>{html.escape(tail)}</pre></details>"
            )
    return "\n".join(parts)


def _data_warnings(df: pd.DataFrame) -> str:
    """Each job's ``data_warnings`` (a list in result.json, so not a table column): problems
    with the data that leave the job ok but change what its numbers mean."""
    rows = []
    for _, row in df.iterrows():
        result = read_result(str(row.get("job_dir", ""))) or {}
        for warning in result.get("data_warnings") or []:
            rows.append({"job": row["job"], "warning": str(warning)})
    if not rows:
        return "<p>No job recorded a data warning.</p>"
    return _table(pd.DataFrame(rows))


def _plain(value) -> str:
    """``300`` rather than ``300.0`` (pandas makes integer columns with gaps float)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _unique_values(df: pd.DataFrame, columns) -> pd.DataFrame:
    """column -> its distinct values over the ok jobs (one line when the sweep agrees)."""
    rows = df[df["status"] == "ok"] if (df["status"] == "ok").any() else df
    items = []
    for column in columns:
        if column in rows and rows[column].notna().any():
            values = sorted({_plain(v) for v in rows[column].dropna()})
            items.append((column, ", ".join(values)))
    return pd.DataFrame(items, columns=["key", "value"])


def _protocol(df: pd.DataFrame) -> str:
    described = schema.protocol_columns()
    values = _unique_values(df, described)
    values["key"] = values["key"].map(described)
    text = (
        "<p>Latency: one image per call (batch 1), model in eval mode under "
        "<code>torch.inference_mode()</code>, real validation images at the job's resolution, "
        "warm-up calls first, then per-image wall-clock samples (CUDA events on GPU); the table "
        "reports the median with p90/p99, and the stage split preprocess / predict / "
        "postprocess. Multiply-adds (GMACs) are counted on <code>predict</code> with "
        "<code>torch.utils.flop_counter.FlopCounterMode</code> (RoIAlign by formula). Memory: "
        "CUDA allocator peak on GPU; on CPU the peak-RSS increase of one call, in a fresh "
        "process unless the memory measurement below says otherwise. Accuracy: COCO mAP "
        "(pycocotools) on the validation split. Details: <code>docs/measurement.md</code>.</p>"
    )
    return text + _table(values)


def _header(df: pd.DataFrame, summary: pd.DataFrame | None) -> str:
    """The protocol (dataset, budget, size, precision, device, threads), how the intervals
    were made, and a warning when the rows mix protocols."""
    ok = df[df["status"] == "ok"] if not df.empty else df
    if ok.empty:
        return ""
    protocols = Protocols(ok)
    parts = [
        f'<p class="meta"><strong>Protocol:</strong> {html.escape(" · ".join(protocols.common()))}.'
        " Accuracy: COCO-style AP (pycocotools) on the validation split, in percent in the "
        f"figures.<br>{html.escape(uncertainty_text(ok, summary))}</p>"
    ]
    if protocols.mixed:
        items = "".join(
            f"<li><strong>{k}</strong>: {html.escape(v)} "
            f"({int((protocols.letters == k).sum())} jobs)</li>"
            for k, v in protocols.legend.items()
        )
        parts.append(
            f'<p class="failed"><strong>These results mix protocols</strong> '
            f"({html.escape(', '.join(protocols.differing))}): their numbers are not "
            f"comparable as they stand. The Pareto figures mark each point with its letter.</p>"
            f"<ul>{items}</ul>"
        )
    return "\n".join(parts)


def _noise(frontier: pd.DataFrame, accuracy: str = "map") -> str:
    """The critical points whose accuracy intervals overlap their cheaper neighbour's."""
    if frontier.empty or "vs_cheaper" not in frontier:
        return ""
    sentences = indistinguishable_critical_points(frontier, accuracy)
    if sentences:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
        return f"<p>Not distinguishable (overlapping 95 % intervals):</p><ul>{items}</ul>"
    if (frontier["vs_cheaper"] == "no interval").any():
        return "<p>Without accuracy intervals, differences between points are not tested.</p>"
    return (
        "<p>Every critical point is more accurate than its cheaper frontier neighbour beyond "
        "the 95 % intervals.</p>"
    )


def render_html(
    df: pd.DataFrame,
    frontier: pd.DataFrame,
    figures: dict[str, Path],
    *,
    title: str,
    source: str,
    accuracy: str = "map",
    selection: str = "",
    summary: pd.DataFrame | None = None,
    sections: Sequence[Section] = (),
) -> str:
    """The report page as a string.

    Args:
        df: the results table.
        frontier: :func:`benchmark.report.pareto.frontier_table` of ``summary``.
        figures: PNG name -> path, embedded in this order.
        title: page heading (the sweep name).
        source: the sweep folder, shown for reference.
        accuracy: the accuracy column the frontiers maximize.
        selection: how the rows were chosen (``detbench-report --where``), shown when set.
        summary: the repeat summary of ``df`` (one row per configuration), if computed.
        sections: views of their own (:class:`Section`), in order within their place.
    """
    for section in sections:
        if section.place not in PLACES:
            raise ValueError(f"section {section.anchor!r}: place {section.place!r} not in {PLACES}")
    placed = {p: "\n".join(s.render() for s in sections if s.place == p) for p in PLACES}
    embedded = {name for s in sections for name in s.figures}
    general = {name: path for name, path in figures.items() if name not in embedded}
    costs = list(dict.fromkeys(frontier["cost_column"])) if "cost_column" in frontier else []
    front_columns = ["axis", "critical", "vs_cheaper", "label", "neck", "n", accuracy, *costs]
    front_columns.append("job")
    counts = df["status"].value_counts() if not df.empty else pd.Series(dtype=int)
    count_html = "".join(
        f'<span class="{s}">{int(counts.get(s, 0))} {s}</span>' for s in ("ok", "skipped", "failed")
    )
    critical = frontier[frontier["critical"] != ""] if not frontier.empty else frontier
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    selected = f" Rows: {html.escape(selection)}." if selection else ""
    device = html.escape(device_title(df[df["status"] == "ok"])) if not df.empty else "–"
    body = f"""
<h1>detbench: {html.escape(title)}</h1>
<p class="meta">{len(df)} jobs in <code>{html.escape(source)}</code>, report written {now}.
Device: {device}.{selected}</p>
{_header(df, summary)}
<p class="counts">{count_html}</p>
<h2>Critical points of the frontiers</h2>
<p>Fastest (cheapest), sweet spot (elbow) and most accurate Pareto-optimal configurations per cost
(Huang et al. 2017 Table 3), maximizing {html.escape(schema.label(accuracy))}. <code>vs_cheaper</code>:
<em>better</em> only when the point's 95 % accuracy interval lies above that of the next cheaper
frontier point.</p>
{_table(critical, front_columns)}
{_noise(frontier, accuracy)}
{placed["frontiers"]}
<h2>Figures</h2>
{_figures(general)}
<h2>Pareto frontiers</h2>
{_table(frontier, front_columns)}
{placed["analyses"]}
{backend_section(df) if not df.empty else ""}
<h2>All configurations</h2>
{_table(df[df["status"] == "ok"] if not df.empty else df, schema.table_columns())}
<h2>Failed and skipped jobs</h2>
{_problems(df) if not df.empty else "<p><em>no jobs</em></p>"}
<h2>Data warnings</h2>
{_data_warnings(df) if not df.empty else "<p><em>no jobs</em></p>"}
<h2>Device and software</h2>
{_table(_unique_values(df, schema.names(group="environment"))) if not df.empty else ""}
<h2>Timing protocol</h2>
{_protocol(df) if not df.empty else ""}
<h2>Files</h2>
<p><code>results.csv</code> (one row per job; columns in <code>results/README.md</code>),
<code>summary.csv</code> (one row per configuration: seed repeats averaged, with sd, n and
intervals), <code>frontier.csv</code> (computed on the summary), the PNG figures, and each job's
<code>result.json</code>.</p>
"""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>detbench: {html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}<script>{_SORT_JS}</script></body></html>\n"
    )
