"""The objectives a job returns to the search sweeper: accuracy up, cost down.

The sweeper's config (``hydra.sweeper.accuracy`` and ``hydra.sweeper.cost`` in
``sweeps/hydra/sweeper/frontier.yaml``) names them; the job (``benchmark.app.run``) reads them
from its Hydra config and returns :class:`Objectives` for an ``ok`` result whose values are
all finite numbers, and None for anything else (failed, skipped, refused, a value that was
not measured): the sweeper records None as a failed trial, never as a zero. No Optuna here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchmark import schema

MAXIMIZE, MINIMIZE = "maximize", "minimize"


class Objectives(tuple):
    """The objective values (floats, in the sweeper's order), carrying the job's result.

    A tuple, so Optuna's and Hydra's code that iterate it (``[float(v) for v in ret]``) see
    the numbers; ``result`` keeps the whole result dict for callbacks (status, job line).
    """

    result: dict[str, Any]

    def __new__(cls, values: list[float], result: dict[str, Any]) -> Objectives:
        obj = super().__new__(cls, values)
        obj.result = result
        return obj


def cost_column(cost: str) -> str:
    """A cost axis name (``latency``, ``gmacs``, ``memory``) or a cost column -> the column.

    Raises:
        ValueError: neither a declared axis nor a cost column of the schema.
    """
    by_axis = {axis: column for column, axis in schema.cost_axes().items()}
    if cost in by_axis:
        return by_axis[cost]
    if cost in schema.cost_columns():
        return cost
    raise ValueError(
        f"hydra.sweeper.cost: unknown cost {cost!r}; one of the axes {sorted(by_axis)} or a "
        f"cost column {schema.cost_columns()}"
    )


def objective_spec(accuracy: str, cost: str) -> tuple[list[str], list[str]]:
    """``(columns, directions)`` of the two objectives: ``accuracy`` maximized, ``cost``
    minimized.

    ``accuracy`` is a result key to maximize: an accuracy metric of the schema, or another
    numeric key used as a stand-in (``params`` in the profile-only measurement of
    docs/sweeps.md).

    Raises:
        ValueError: an accuracy key the schema does not declare as a number, or a bad cost.
    """
    key = schema.KEYS.get(accuracy)
    if key is None or key.kind not in ("number", "integer"):
        raise ValueError(
            f"hydra.sweeper.accuracy: {accuracy!r} is not a numeric result key; "
            f"accuracy metrics: {schema.accuracy_metrics()}"
        )
    return [accuracy, cost_column(cost)], [MAXIMIZE, MINIMIZE]


def objectives_of(result: Mapping[str, Any], columns: list[str]) -> Objectives | None:
    """The objective values of a job's result, or None when it cannot be a trial's values.

    None for a result that is not ``ok`` (failed, skipped, refused) or lacks a value or has
    a non-finite one (a probe switched off, a NaN): the sweeper marks the trial failed.
    """
    if result.get("status") != "ok":
        return None
    values = []
    for column in columns:
        value = result.get(column)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            return None
        values.append(float(value))
    return Objectives(values, dict(result))
