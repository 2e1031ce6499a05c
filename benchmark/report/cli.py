"""``detbench-report <sweep folder>``: (re)build a sweep's report from its result.json files."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from benchmark import schema

EPILOG = """\
examples:
  detbench-report results/quick
  detbench-report results/quick --metric map_50 --cost latency_ms
  detbench-report results/paper --where meta_arch=ssd,rfcn --where image_size=300 --out /tmp/r
  detbench-report results/extractors --extractors --baseline mobilenet_v2

accuracy metrics (--metric):
{metrics}

cost axes (--cost; default: {default}):
{costs}

--where takes any column of results.csv (results/README.md lists them); numbers compare as
numbers, booleans as true/false, and `none` matches an empty value.
"""


def _listing(names: list[str]) -> str:
    lines = [f"{n:<22} {schema.label(n)}" for n in names]
    return textwrap.indent("\n".join(lines), "  ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detbench-report",
        description="Aggregate every result.json under a sweep folder into results.csv, "
        "frontier.csv, PNG figures and a self-contained report.html: the Pareto frontiers of "
        "accuracy against each cost, their critical points (Huang et al. 2017 Table 3) and "
        "the paper's analysis figures.",
        epilog=EPILOG.format(
            metrics=_listing(schema.accuracy_metrics()),
            costs=_listing(schema.cost_columns()),
            default=", ".join(schema.cost_axes()),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dir", type=Path, help="sweep folder, e.g. results/quick")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report files (default: the sweep folder)",
    )
    parser.add_argument(
        "--metric",
        default="map",
        help="accuracy the frontiers maximize (default: map, COCO's AP@[.5:.95])",
    )
    parser.add_argument(
        "--cost",
        action="append",
        default=None,
        help="cost axis to draw the frontier against; repeat or separate with commas for "
        "several (default: the three of Huang et al.: latency, multiply-adds, memory)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE[,VALUE...]",
        help="keep only jobs whose COLUMN has one of the values; repeat to combine",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        metavar="PATH",
        help="for a frontier search folder (+search=frontier): a grid run of the same space "
        "to compare with (hypervolume, jobs to reach 90 %% of it, frontier found)",
    )
    parser.add_argument(
        "--extractors",
        action="store_true",
        help="also print the extractor comparison: per setting (the same configuration with "
        "another extractor), each extractor's accuracy change and latency, GMACs and memory "
        "ratios against the reference, and whether a better classifier made a better "
        "detector per meta-architecture (always written to extractors.csv and report.html)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="EXTRACTOR",
        help="the reference extractor of the comparison (default: the one in most settings)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point.

    Returns:
        0 when the report was written (failed jobs are listed in it, not an error here: the
        multirun's own exit status reports them); 2 when the folder does not exist or a
        metric, cost or column is unknown (the message lists the valid ones).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.sweep_dir.is_dir():
        print(f"detbench-report: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    from benchmark.report.writer import SelectionError, write_report  # matplotlib, pandas

    costs = None
    if args.cost:
        costs = [c.strip() for item in args.cost for c in item.split(",") if c.strip()]
    try:
        summary = write_report(
            args.sweep_dir,
            args.out,
            accuracy=args.metric,
            costs=costs,
            where=args.where,
            grid=args.grid,
            baseline=args.baseline,
        )
    except SelectionError as e:
        print(f"detbench-report: {e}", file=sys.stderr)
        return 2
    if args.extractors:
        print(extractor_text(summary.folder, args.metric))
    print(f"detbench-report: {summary.line()}")
    return 0


def extractor_text(folder: Path, accuracy: str) -> str:
    """The extractor comparison the report just wrote (``extractors.csv`` and the summary it
    was made from), as terminal lines."""
    import pandas as pd

    from benchmark.report import extractors as ex

    table = pd.read_csv(folder / "extractors.csv")
    summary = pd.read_csv(folder / "summary.csv")
    answers = ex.classifier_answers(summary, accuracy) if "extractor_group" in summary else []
    lines = ["Feature extractors (configurations differing only in the extractor):"]
    lines += ex.summary_lines(table, accuracy)
    if answers:
        lines.append("Does a better classifier make a better detector? (Huang et al. Figure 3)")
        lines += [f"  {a.sentence(accuracy)}" for a in answers]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
