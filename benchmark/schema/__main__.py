"""``python -m benchmark.schema --write results/README.md``: regenerate the key tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.schema.docs import update


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.schema",
        description="Regenerate (or check) the key tables of a README from benchmark.schema.",
    )
    parser.add_argument("readme", type=Path, help="e.g. results/README.md")
    parser.add_argument(
        "--write", action="store_true", help="rewrite the file (default: check and report)"
    )
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = update(text)
    if args.write:
        args.readme.write_text(new)
        print(f"{args.readme}: key tables regenerated")
        return 0
    if new != text:
        print(f"{args.readme}: key tables out of date; run with --write", file=sys.stderr)
        return 1
    print(f"{args.readme}: key tables up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
