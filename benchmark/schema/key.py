"""One result key: what it means, its unit, how to show it, and what the report may do with it."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("number", "integer", "bool", "text", "list", "object")
# How a value is shown in tables and log lines (benchmark.schema.format):
#   percent   0-1 fraction as a percentage with one decimal (AP 0.2315 -> 23.2)
#   sig3      about three significant digits, never scientific (0.432, 7.23, 72.3, 723, 1159)
#   count     integers grouped: 1917, 35.2k, 5.12M
#   int       a plain integer
#   fixed1 / fixed3   one / three decimals
#   ratio     a factor with two decimals: 1.83x
#   bool      yes / no
#   text      the value as it is
FORMATS = ("percent", "sig3", "count", "int", "fixed1", "fixed3", "ratio", "bool", "text")
WHERE = ("result", "table", "summary", "frontier", "extractors")


@dataclass(frozen=True)
class Key:
    """A key of ``result.json``, a column of ``results.csv`` or of ``frontier.csv``.

    Attributes:
        name: the key.
        group: section of ``results/README.md`` (:data:`benchmark.schema.GROUPS`).
        description: what the value means, one or two sentences (``results/README.md``).
        unit: the unit the value is stored in (``0-1``, ``ms``, ``MiB``, ``GMACs``, ``s``...).
        kind: ``number``, ``integer``, ``bool``, ``text``, ``list`` or ``object`` (nested).
        label: axis label, with unit and what exactly was measured; default: ``name``.
        short: short name for table headers and log lines (``AP50``, ``latency``).
        fmt: how values are shown (:data:`FORMATS`); default from ``kind``.
        cost: a cost (lower is better) that a frontier can be drawn against.
        axis: the report draws this cost's frontier by default, as ``pareto_<axis>.png``.
        accuracy: an accuracy (higher is better) that frontiers can maximize.
        interval: the keys of its 95 % interval, ``(low, high)``.
        probe: the measurement that writes it; its value stays null when that measurement is
            disabled or raises (``benchmark.measure``, ``benchmark.evaluate``).
        where: ``result`` (``result.json``, and the ``results.csv`` column), ``table`` (a
            column ``results.csv`` derives), ``summary`` (a column of ``summary.csv``, the
            seed repeats aggregated), ``frontier`` (``frontier.csv`` only) or ``extractors``
            (``extractors.csv``, the extractor comparison).
        lookup: dotted path in the result (``config.train.max_iters``,
            ``data_stats.val.images``) the table reads the column from when the result
            itself lacks the key (a config value, or a result written before it existed).
        table: shown in the report's table of every configuration.
        summary: shown on a job's last log line.
        protocol: listed in the report's timing protocol, described by ``label``.
    """

    name: str
    group: str
    description: str
    unit: str = ""
    kind: str = "number"
    label: str | None = None
    short: str | None = None
    fmt: str | None = None
    cost: bool = False
    axis: str | None = None
    accuracy: bool = False
    interval: tuple[str, str] | None = None
    probe: str | None = None
    where: str = "result"
    lookup: str | None = None
    table: bool = False
    summary: bool = False
    protocol: bool = False

    def __post_init__(self):
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} not in {KINDS}")
        if self.fmt is not None and self.fmt not in FORMATS:
            problems.append(f"fmt {self.fmt!r} not in {FORMATS}")
        if self.where not in WHERE:
            problems.append(f"where {self.where!r} not in {WHERE}")
        if (self.cost or self.accuracy) and not self.numeric:
            problems.append("a cost or accuracy must be numeric")
        if self.cost and self.accuracy:
            problems.append("a key is a cost or an accuracy, not both")
        if self.axis and not self.cost:
            problems.append("a default frontier axis must be a cost")
        if problems:
            raise ValueError(f"result key {self.name!r}: " + "; ".join(problems))

    @property
    def numeric(self) -> bool:
        return self.kind in ("number", "integer")

    @property
    def scalar(self) -> bool:
        """Has one value per job, so it can be a ``results.csv`` column."""
        return self.kind not in ("list", "object")

    @property
    def format(self) -> str:
        """The display format (``fmt`` or the kind's default)."""
        if self.fmt is not None:
            return self.fmt
        return {"number": "sig3", "integer": "int", "bool": "bool"}.get(self.kind, "text")

    @property
    def display_unit(self) -> str:
        """The unit of the shown value: ``%`` for a fraction shown in percent."""
        if self.format == "percent":
            return "%"
        hidden = ("count", "bool", "0-1", "iterations", "calls", "ratio")
        return "" if self.unit in hidden else self.unit

    @property
    def header(self) -> str:
        """Short table header with the unit of the shown value: ``AP (%)``, ``latency (ms)``."""
        text = self.short or self.name
        return f"{text} ({self.display_unit})" if self.display_unit else text

    @property
    def title(self) -> str:
        """Axis label: ``label`` or the header."""
        return self.label or self.header
