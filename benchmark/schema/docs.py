"""The key tables of ``results/README.md``, generated from the schema.

The README keeps its prose; each table sits between ``<!-- schema:NAME -->`` and
``<!-- /schema:NAME -->`` markers, where NAME is a group of :data:`benchmark.schema.GROUPS`
(``result.json`` keys of that group), ``results.csv`` (the columns the table derives),
``summary.csv`` (the columns of the repeat summary) or ``frontier.csv``. ``python -m benchmark.schema --write results/README.md`` rewrites them;
``tests/test_schema.py`` fails when they are out of date.
"""

from __future__ import annotations

import re

from benchmark.schema import GROUPS, Key, keys

BLOCK = re.compile(
    r"(<!-- schema:(?P<name>[\w.]+) -->\n)(?P<body>.*?)(<!-- /schema:(?P=name) -->)", re.S
)


def _row(key: Key) -> str:
    meaning = key.description.replace("|", "\\|")
    unit = f" {key.unit} " if key.unit else " "
    return f"| `{key.name}` |{unit}| {meaning} |"


def table(selected: list[Key]) -> str:
    """A markdown table ``| key | unit | meaning |`` of ``selected``."""
    return "\n".join(["| key | unit | meaning |", "|---|---|---|", *map(_row, selected)]) + "\n"


def tables() -> dict[str, str]:
    """Marker name -> the table that belongs between its markers."""
    out = {g: table(keys(group=g, where="result")) for g in GROUPS}
    out["results.csv"] = table(keys(where="table"))
    out["summary.csv"] = table(keys(where="summary"))
    out["frontier.csv"] = table(keys(where="frontier"))
    out["extractors.csv"] = table(keys(where="extractors"))
    return {name: text for name, text in out.items() if text.count("\n") > 2}


def update(text: str) -> str:
    """``text`` with every marked block replaced by its generated table.

    Raises:
        ValueError: a marker names no table, or a table has no marker (so no key goes
            undocumented).
    """
    generated = tables()
    seen = set()

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in generated:
            raise ValueError(f"<!-- schema:{name} --> names no table; known: {sorted(generated)}")
        seen.add(name)
        return match.group(1) + generated[name] + match.group(4)

    text = BLOCK.sub(fill, text)
    if missing := sorted(set(generated) - seen):
        raise ValueError(f"no <!-- schema:NAME --> block for {missing}")
    return text
