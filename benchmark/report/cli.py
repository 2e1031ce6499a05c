"""``detbench-report <sweep folder>``: (re)build a sweep's report from its result.json files."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmark.report.writer import write_report


def main(argv: list[str] | None = None) -> int:
    """Console entry point.

    Returns:
        0 when the report was written (failed jobs are listed in it, not an error here: the
        multirun's own exit status reports them); 2 when the folder does not exist.
    """
    parser = argparse.ArgumentParser(
        prog="detbench-report",
        description="Aggregate every result.json under a sweep folder into results.csv, "
        "frontier.csv, PNG figures and a self-contained report.html.",
    )
    parser.add_argument("sweep_dir", type=Path, help="sweep folder, e.g. results/quick")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report files (default: the sweep folder)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.sweep_dir.is_dir():
        print(f"detbench-report: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    summary = write_report(args.sweep_dir, args.out)
    print(f"detbench-report: {summary.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
