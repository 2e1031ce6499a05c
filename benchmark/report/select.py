"""What a report is about: the accuracy, the costs and the rows (``detbench-report --metric
map_50 --cost latency_ms --where meta_arch=ssd,rfcn``), checked against the schema and the
table with errors that list the valid choices."""

from __future__ import annotations

import difflib

import pandas as pd

from benchmark import schema


class SelectionError(ValueError):
    """An unknown metric, cost or column, or a malformed ``--where`` filter."""


def _unknown(what: str, name: str, valid: list[str]) -> SelectionError:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return SelectionError(f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}")


def check_choices(accuracy: str, costs: list[str] | None) -> None:
    """``accuracy`` must be a declared accuracy and every cost a declared cost."""
    metrics = schema.accuracy_metrics()
    if accuracy not in metrics:
        raise _unknown("accuracy metric", accuracy, metrics)
    if costs is not None:
        if not costs:
            raise SelectionError("no cost axis given")
        valid = schema.cost_columns()
        for cost in costs:
            if cost not in valid:
                raise _unknown("cost axis", cost, valid)


def _matches(column: pd.Series, values: list[str], name: str) -> pd.Series:
    """Rows whose value is one of ``values`` (numbers compared as numbers, booleans as
    ``true``/``false``, missing values as ``none``)."""
    key = schema.KEYS.get(name)
    numeric = key.numeric if key is not None else pd.api.types.is_numeric_dtype(column)
    if numeric:
        try:
            wanted = [float(v) for v in values if v.lower() != "none"]
        except ValueError:
            raise SelectionError(
                f"--where {name}: {name} is numeric, got {','.join(values)}"
            ) from None
        mask = column.astype(float).isin(wanted)
    else:
        text = column.map(
            lambda v: str(v).lower() if isinstance(v, bool) else (None if pd.isna(v) else str(v))
        )
        mask = text.isin(values)
    if any(v.lower() == "none" for v in values):
        mask |= column.isna()
    return mask


def select_rows(df: pd.DataFrame, where: list[str]) -> tuple[pd.DataFrame, str]:
    """Keep the rows matching every filter ``column=value[,value...]``.

    Returns:
        The selected rows and a description for the report (``meta_arch in ssd, rfcn``;
        empty without filters).

    Raises:
        SelectionError: a filter without ``=`` or on a column the table does not have (the
            message lists the columns).
    """
    parts = []
    for item in where:
        name, sep, raw = item.partition("=")
        name = name.strip()
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not name or not values:
            raise SelectionError(f"--where {item!r}: expected column=value[,value...]")
        if name not in df.columns:
            valid = sorted(c for c in df.columns if c != "job_dir")
            raise _unknown("column", name, valid)
        df = df[_matches(df[name], values, name)]
        parts.append(f"{name} in {', '.join(values)}")
    return df, "; ".join(parts)
