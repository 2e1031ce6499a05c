"""The extractor comparison: configurations that differ only in the feature extractor.

Users come to compare feature extractors, and averaging over meta-architectures misleads (a
23 ms SSD and a 307 ms Faster R-CNN averaged into "89.8 ms for MobileNet v2"). So rows are
paired like for like: within one setting (``extractor_group``: the same meta-architecture,
neck, resolution, proposals, training... everything but the extractor), each extractor is
compared with a reference extractor of that setting, as a change in accuracy (points) and as
ratios of latency, GMACs and memory. The share of each job's multiply-adds spent in the
extractor, the neck and the heads (``gmacs_<part>``) shows how much of a detector's cost the
extractor choice can move.

Huang et al. 2017 (Figure 3) ask whether a better classifier makes a better detector; they
find the ImageNet top-1 of the extractor matters for Faster R-CNN and R-FCN, less for SSD.
:func:`classifier_answers` answers it per meta-architecture from the pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from benchmark import schema
from benchmark.report.repeats import summarize_repeats
from benchmark.report.style import (
    colour_for,
    device_title,
    extractor_name,
    marker_for,
    meta_arch_name,
    meta_arch_order,
    styled,
)
from benchmark.report.table import ok_rows

# extractors.csv columns after the identifying ones (declared in benchmark/schema/keys.py).
RATIOS = {"latency_ratio": "latency_ms", "gmacs_ratio": "gmacs", "memory_ratio": "peak_mem_mb"}
SHARES = {
    "extractor_share": "gmacs_extractor",
    "neck_share": "gmacs_neck",
    "head_share": "gmacs_head",
}


class UnknownBaselineError(ValueError):
    """``--baseline`` names an extractor that no paired setting has."""


def setting_label(row: pd.Series) -> str:
    """``SSD, 300 px, 100 prop.``: the row's label without its extractor."""
    name = row.get("meta_arch_name")
    parts = [name if isinstance(name, str) else str(row["meta_arch"])]
    neck = row.get("neck")
    if isinstance(neck, str) and neck:
        parts[0] += f" ({neck})"
    if pd.notna(row.get("image_size")):
        parts.append(f"{int(row['image_size'])} px")
    if pd.notna(row.get("num_proposals")):
        parts.append(f"{int(row['num_proposals'])} prop.")
    if pd.notna(row.get("output_stride")) and int(row["output_stride"]) == 8:
        parts.append("stride 8")
    return ", ".join(parts)


def paired_rows(summary: pd.DataFrame, accuracy: str = "map") -> pd.DataFrame:
    """The ok rows (one per configuration) whose setting has at least two extractors."""
    if summary.empty or "extractor_group" not in summary:
        return summary.iloc[0:0]
    rows = ok_rows(summary, accuracy)
    counts = rows.groupby("extractor_group")["extractor"].transform("nunique")
    return rows[counts >= 2]


def choose_baseline(rows: pd.DataFrame, baseline: str | None = None) -> str | None:
    """The reference extractor: ``baseline`` when given, else the one in most settings
    (ties: fewest median GMACs, then name).

    Raises:
        UnknownBaselineError: ``baseline`` is not an extractor of a paired setting.
    """
    extractors = sorted(rows["extractor"].unique()) if not rows.empty else []
    if baseline is not None:
        if baseline not in extractors:
            valid = ", ".join(extractors) or "none (no setting has two extractors)"
            raise UnknownBaselineError(
                f"--baseline {baseline!r} is not an extractor of a paired setting; valid: {valid}"
            )
        return baseline
    if not extractors:
        return None
    stats = rows.groupby("extractor").agg(
        settings=("extractor_group", "nunique"), gmacs=("gmacs", "median")
    )
    stats = stats.assign(gmacs=stats["gmacs"].fillna(np.inf)).reset_index()
    stats = stats.sort_values(["settings", "gmacs", "extractor"], ascending=[False, True, True])
    return str(stats["extractor"].iloc[0])


def _reference(group: pd.DataFrame, baseline: str | None) -> pd.Series:
    if baseline is not None and (group["extractor"] == baseline).any():
        return group[group["extractor"] == baseline].iloc[0]
    order = group.assign(_g=group["gmacs"].fillna(np.inf), _l=group["latency_ms"].fillna(np.inf))
    return order.sort_values(["_g", "_l", "extractor"]).iloc[0]


def _ratio(value, reference) -> float:
    if pd.isna(value) or pd.isna(reference) or reference <= 0:
        return np.nan
    return float(value) / float(reference)


def comparison_table(
    summary: pd.DataFrame, accuracy: str = "map", baseline: str | None = None
) -> pd.DataFrame:
    """``extractors.csv``: every configuration of a setting with two or more extractors,
    compared with the setting's reference extractor.

    Args:
        summary: the repeat summary (one row per configuration), or a results table.
        accuracy: the accuracy column compared (``--metric``).
        baseline: the reference extractor (:func:`choose_baseline`).

    Returns:
        Rows ordered by meta-architecture, setting and GMACs, with ``meta_arch``,
        ``setting``, ``extractor``, ``reference``, ``top1``, the accuracy and its change,
        the costs and their ratios, the GMACs shares and ``job``; empty when no setting has
        two extractors.
    """
    rows = paired_rows(summary, accuracy)
    costs = list(RATIOS.values())
    lead = ["meta_arch", "setting", "extractor", "reference", "top1", accuracy, "accuracy_change"]
    columns = [*lead, *(c for pair in RATIOS.items() for c in pair[::-1])]
    columns += [*SHARES, "gmacs_extractor", "extractor_group", "label", "job"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    reference_extractor = choose_baseline(rows, baseline)
    out = []
    for _, group in rows.groupby("extractor_group", sort=False):
        ref = _reference(group, reference_extractor)
        for _, row in group.iterrows():
            item = {c: row.get(c) for c in ("meta_arch", "extractor", "top1", accuracy, "label")}
            item.update(
                setting=setting_label(row),
                reference=ref["extractor"],
                accuracy_change=float(row[accuracy]) - float(ref[accuracy]),
                extractor_group=row["extractor_group"],
                job=row.get("jobs") or row.get("job"),
                _order=_setting_order(row),
            )
            for ratio, cost in RATIOS.items():
                item[cost] = row.get(cost)
                item[ratio] = _ratio(row.get(cost), ref.get(cost))
            for share, part in SHARES.items():
                item[share] = _ratio(row.get(part), row.get("gmacs"))
            item["gmacs_extractor"] = row.get("gmacs_extractor")
            out.append(item)
    table = pd.DataFrame(out)
    table = table.assign(_g=pd.to_numeric(table["gmacs"], errors="coerce"))
    table = table.sort_values(["_order", "_g", "extractor"], kind="stable")
    numeric = [accuracy, "top1", "accuracy_change", *costs, *RATIOS, *SHARES, "gmacs_extractor"]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    return table[columns].reset_index(drop=True)


def _setting_order(row: pd.Series) -> tuple:
    """Settings in the paper's meta-architecture order, then by resolution, proposals and
    stride as numbers."""

    def number(column: str) -> float:
        value = row.get(column)
        return float(value) if pd.notna(value) else -1.0

    meta = meta_arch_order(str(row["meta_arch"]))
    return (
        *meta,
        str(row.get("neck")),
        *map(number, ("image_size", "num_proposals")),
        number("output_stride"),
        str(row["extractor_group"]),
    )


@dataclass
class ClassifierAnswer:
    """Huang et al.'s Figure 3 question for one meta-architecture, from the paired rows.

    Attributes:
        meta_arch: the option (``ssd``).
        name: its display name.
        settings: settings with two or more extractors of known top-1.
        pairs: extractor pairs compared within a setting (different top-1).
        agree: pairs where the extractor with the higher top-1 gave the higher accuracy.
        separated: of those, pairs whose 95 % accuracy intervals do not overlap (None
            without intervals).
        slope: accuracy points per top-1 point, least squares within settings (None below
            two distinct top-1 values).
    """

    meta_arch: str
    name: str
    settings: int
    pairs: int
    agree: int
    separated: int | None
    slope: float | None

    @property
    def verdict(self) -> str:
        """``yes`` / ``mostly`` / ``mixed`` / ``no`` / ``not answerable``."""
        if self.pairs == 0:
            return "not answerable"
        share = self.agree / self.pairs
        if share == 1:
            return "yes"
        if share >= 0.75:
            return "mostly"
        return "mixed" if share >= 0.5 else "no"

    def sentence(self, accuracy: str = "map") -> str:
        """``SSD: yes: in 6 of 6 pairs (2 settings) the extractor with the higher ImageNet
        top-1 gave the higher AP; +0.61 AP points per top-1 point (4 pairs beyond their 95 %
        intervals).``"""
        short = schema.KEYS[accuracy].short if accuracy in schema.KEYS else accuracy
        if self.pairs == 0:
            return (
                f"{self.name}: not answerable: no setting has two extractors of different "
                "known ImageNet top-1."
            )
        text = (
            f"{self.name}: {self.verdict}: in {self.agree} of {self.pairs} "
            f"pair{'s' if self.pairs != 1 else ''} "
            f"({self.settings} setting{'s' if self.settings != 1 else ''}) the extractor with "
            f"the higher ImageNet top-1 gave the higher {short}"
        )
        if self.slope is not None:
            text += f"; {self.slope:+.2f} {short} points per top-1 point"
        if self.separated is not None:
            text += f" ({self.separated} of those pairs beyond their 95 % intervals)"
        return text + "."


def _within_slope(rows: pd.DataFrame, accuracy: str) -> float | None:
    """Least-squares slope of accuracy (points) on top-1 (points) after removing each
    setting's mean (a fixed effect per setting): only within-setting differences count."""
    x = rows["top1"] - rows.groupby("extractor_group")["top1"].transform("mean")
    y = 100 * (rows[accuracy] - rows.groupby("extractor_group")[accuracy].transform("mean"))
    denominator = float((x**2).sum())
    return float((x * y).sum()) / denominator if denominator > 0 else None


def classifier_answers(summary: pd.DataFrame, accuracy: str = "map") -> list[ClassifierAnswer]:
    """Does a better classifier make a better detector? One answer per meta-architecture of
    the paired rows (Huang et al. 2017 Figure 3; top-1 from ``imagenet.py``)."""
    rows = paired_rows(summary, accuracy)
    rows = rows.dropna(subset=["top1"])
    answers = []
    for meta in sorted(rows["meta_arch"].unique(), key=meta_arch_order):
        group = rows[rows["meta_arch"] == meta]
        group = group[group.groupby("extractor_group")["top1"].transform("nunique") >= 2]
        pairs = agree = separated = 0
        low, high = f"{accuracy}_ci_low", f"{accuracy}_ci_high"
        has_intervals = low in group and high in group and group[[low, high]].notna().all().all()
        for _, setting in group.groupby("extractor_group"):
            for (_, a), (_, b) in itertools.combinations(setting.iterrows(), 2):
                if a["top1"] == b["top1"]:
                    continue
                better, worse = (a, b) if a["top1"] > b["top1"] else (b, a)
                pairs += 1
                if better[accuracy] > worse[accuracy]:
                    agree += 1
                    if has_intervals and better[low] > worse[high]:
                        separated += 1
        answers.append(
            ClassifierAnswer(
                meta_arch=str(meta),
                name=meta_arch_name(meta, rows),
                settings=int(group["extractor_group"].nunique()),
                pairs=pairs,
                agree=agree,
                separated=separated if has_intervals and pairs else None,
                slope=_within_slope(group, accuracy) if pairs else None,
            )
        )
    return answers


def summary_lines(table: pd.DataFrame, accuracy: str = "map") -> list[str]:
    """The comparison as terminal lines (``detbench-report --extractors``): per
    meta-architecture and setting, each extractor's change against the reference."""
    from benchmark.schema.format import format_value

    if table.empty:
        return ["no setting has two extractors: nothing to compare"]
    lines = []
    for setting, group in table.groupby("setting", sort=False):
        reference = extractor_name(group["reference"].iloc[0])
        lines.append(f"{setting} (vs {reference}):")
        for _, row in group.iterrows():
            change = format_value("accuracy_change", row["accuracy_change"])
            ratios = ", ".join(
                f"{name.split('_')[0]} {format_value(name, row[name])}" for name in RATIOS
            )
            share = ""
            if pd.notna(row["extractor_share"]):  # results from before the parts were counted
                share = f", extractor {format_value('extractor_share', row['extractor_share'])} %"
                share += " of GMACs"
            lines.append(
                f"  {extractor_name(row['extractor']):<24} {format_value(accuracy, row[accuracy]):>5}"
                f" ({'+' if row['accuracy_change'] > 0 else ''}{change} points), {ratios}{share}"
            )
    return lines


# -- figures -----------------------------------------------------------------------------------


@styled
def extractor_change_figure(df: pd.DataFrame, accuracy: str = "map") -> Figure | None:
    """Per meta-architecture, each extractor's change against the reference of its setting:
    accuracy (points) vs the latency ratio, one panel per meta-architecture, lines joining the
    extractors of one setting (cheapest first). None when no setting has two extractors."""
    summary = df if "n" in df else summarize_repeats(df)
    table = comparison_table(summary, accuracy).dropna(subset=["latency_ratio"])
    if table.empty:
        return None
    metas = sorted(table["meta_arch"].unique(), key=meta_arch_order)
    ncols = min(3, len(metas))
    nrows = -(-len(metas) // ncols)
    fig = Figure(figsize=(3.6 * ncols + 1.9, 3.4 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax, meta in zip(axes, metas, strict=False):
        group = table[table["meta_arch"] == meta]
        ax.axhline(0, color="0.6", lw=0.8, zorder=1)
        ax.axvline(1, color="0.6", lw=0.8, zorder=1)
        for _, setting in group.groupby("setting", sort=False):
            setting = setting.sort_values("latency_ratio")
            ax.plot(
                setting["latency_ratio"],
                100 * setting["accuracy_change"],
                color="0.75",
                lw=0.8,
                zorder=2,
            )
        for extractor, points in group.groupby("extractor"):
            ax.scatter(
                points["latency_ratio"],
                100 * points["accuracy_change"],
                marker=marker_for(meta),
                color=colour_for(extractor),
                edgecolors="black",
                linewidths=0.5,
                s=40,
                zorder=3,
            )
        settings = group["setting"].nunique()
        ax.set_title(
            f"{meta_arch_name(meta, summary)} ({settings} setting{'s' if settings > 1 else ''})"
        )
        ax.set_xscale("log")
        # Ratios often span less than a decade: ticks at 1, 1.5, 2, 3, 5 of each.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    for ax in axes[len(metas) :]:
        ax.set_visible(False)
    short = schema.KEYS[accuracy].short if accuracy in schema.KEYS else accuracy
    for ax in axes[::ncols]:
        ax.set_ylabel(f"Δ {short} vs reference (points)")
    for ax in axes[-ncols:]:
        ax.set_xlabel("latency / reference's")
    extractors = list(dict.fromkeys(table.sort_values("top1")["extractor"]))
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=colour_for(e),
            markeredgecolor="black",
            markeredgewidth=0.5,
            label=extractor_name(e),
        )
        for e in extractors
    ]
    reference = ", ".join(sorted({extractor_name(r) for r in table["reference"]}))
    fig.legend(handles=handles, loc="outside right upper", title="Feature extractor")
    fig.suptitle(
        f"Changing only the extractor (reference: {reference}; grey lines join one setting)"
        f"\n{device_title(summary)}",
        fontsize=10.5,
    )
    return fig


_PART_COLOURS = {"extractor": "#3182bd", "neck": "#9ecae1", "head": "#fd8d3c"}


@styled
def gmacs_parts_figure(df: pd.DataFrame) -> Figure | None:
    """Per model (lowest resolution, default proposals), the share of its multiply-adds in
    the extractor, the neck and the heads, with the total GMACs at the end of each bar."""
    from benchmark.report import figures as fg

    parts = [f"gmacs_{p}" for p in _PART_COLOURS]
    rows = fg.representative(ok_rows(df, "gmacs", *parts))
    if rows.empty:
        return None
    rows = rows.sort_values(
        ["meta_arch", "gmacs"], key=lambda c: c.map(meta_arch_order) if c.name == "meta_arch" else c
    )
    n = len(rows)
    fig = Figure(figsize=(8.6, max(2.6, 0.3 * n + 1.6)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)[::-1]
    left = np.zeros(n)
    for part, colour in _PART_COLOURS.items():
        share = 100 * (rows[f"gmacs_{part}"] / rows["gmacs"]).to_numpy(float)
        ax.barh(y, share, left=left, color=colour, edgecolor="0.3", linewidth=0.4, label=part)
        left += share
    for yi, (_, row) in zip(y, rows.iterrows(), strict=True):
        ax.annotate(
            f"{row['gmacs']:.3g} GMACs",
            (100, yi),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7.5,
        )
    ax.set_yticks(
        y, [t.replace("\n", " w/ ", 1).replace("\n", " ") for t in fg.tick_labels(rows)], fontsize=8
    )
    ax.set_xlim(0, 100)
    ax.set_xlabel("Share of the multiply-adds per image (%)")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside right upper", title="Part")
    fg.axes_title(ax, f"Where the multiply-adds go ({int(rows['image_size'].min())} px)", rows)
    return fig


# -- the report section ----------------------------------------------------------------------

FIGURE_NAMES = ("fig12_extractors.png", "fig13_gmacs_parts.png")
TABLE_COLUMNS = [
    "setting",
    "extractor",
    "reference",
    "top1",
    "accuracy_change",
    "latency_ms",
    "latency_ratio",
    "gmacs",
    "gmacs_ratio",
    "peak_mem_mb",
    "memory_ratio",
    "extractor_share",
    "neck_share",
    "head_share",
]


def extractor_section(
    table: pd.DataFrame,
    answers: list[ClassifierAnswer],
    figures: dict,
    *,
    accuracy: str = "map",
    scratch: bool = False,
):
    """The report's "Feature extractors" section (:class:`benchmark.report.html.Section`).

    Args:
        table: :func:`comparison_table`.
        answers: :func:`classifier_answers`.
        figures: PNG name -> path of the written figures (its own are taken from it).
        accuracy: the compared accuracy column.
        scratch: whether the extractors trained from random weights (the top-1 is then the
            architecture's published number, not these weights').
    """
    import html as _html

    from benchmark.report.html import Section, figures_html, table_html

    own = {name: figures[name] for name in FIGURE_NAMES if name in figures}
    short = schema.KEYS[accuracy].short if accuracy in schema.KEYS else accuracy
    parts = []
    if table.empty:
        parts.append(
            "<p>No setting of this sweep has two extractors (the same meta-architecture, neck, "
            "resolution, proposals and training with another extractor): nothing to pair. "
            "<code>detbench -m extractor=a,b ...</code> makes such pairs.</p>"
        )
    else:
        reference = ", ".join(sorted({extractor_name(r) for r in table["reference"]}))
        parts.append(
            f"<p>Configurations that differ only in the feature extractor, compared within "
            f"their setting with the reference extractor ({_html.escape(reference)}): the "
            f"change in {_html.escape(short)} (points) and the ratios of latency, multiply-adds "
            "and peak memory; nothing is averaged over meta-architectures or resolutions. "
            "The shares say how much of each detector's multiply-adds run in the extractor, "
            "the neck and the heads (for two-stage detectors the last extractor stage, run "
            "on the crops, is head work). <code>detbench-report --extractors</code> prints "
            "this comparison, <code>--baseline</code> chooses the reference.</p>"
        )
        caveat = (
            " The top-1 is the architecture's published ImageNet accuracy; these extractors "
            "trained from random weights, so this asks whether a stronger classifier "
            "architecture makes a better detector, not whether ImageNet features do."
            if scratch
            else ""
        )
        items = "".join(f"<li>{_html.escape(a.sentence(accuracy))}</li>" for a in answers)
        parts.append(
            "<p><strong>Does a better classifier make a better detector?</strong> (Huang et "
            "al. 2017 Figure 3: yes for Faster R-CNN and R-FCN, less so for SSD.) Within each "
            f"setting, per pair of extractors:{_html.escape(caveat)}</p>"
            f"<ul>{items or '<li>no extractor of a known top-1 in a paired setting</li>'}</ul>"
        )
    if own:
        parts.append(figures_html(own))
    if not table.empty:
        columns = [c if c != "accuracy_change" else "accuracy_change" for c in TABLE_COLUMNS]
        columns.insert(4, accuracy)
        parts.append(table_html(table, columns))
    return Section("extractors", "Feature extractors", "\n".join(parts), figures=tuple(own))
