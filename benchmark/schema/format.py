"""Values as people read them: per-key formats (AP in percent, ms with sensible digits) and the
line a job ends with."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmark.schema import KEYS, Key, names

MISSING = "–"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sig3(value: float) -> str:
    """About three significant digits, never scientific: 0.432, 7.23, 72.3, 723, 1159."""
    magnitude = abs(value)
    if magnitude >= 100 or magnitude == 0:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 0.001:
        return f"{value:.3f}"
    return f"{value:.2g}"


def count(value: float) -> str:
    """Integers below 10,000 as they are; larger ones with k / M / G: 35.2k, 5.12M."""
    if abs(value) < 10_000:
        return f"{value:.0f}"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{sig3(value / scale)}{suffix}"
    return f"{value:.0f}"  # pragma: no cover - every magnitude >= 10,000 has a suffix


def format_with(fmt: str, value: Any, missing: str = MISSING) -> str:
    """``value`` shown with one of :data:`benchmark.schema.key.FORMATS`."""
    if _is_missing(value):
        return missing
    if fmt == "bool" or isinstance(value, bool):
        return "yes" if value else "no"
    if fmt == "text" or not isinstance(value, int | float):
        return str(value)
    if fmt == "percent":
        return f"{100 * value:.1f}"
    if fmt == "sig3":
        return sig3(value)
    if fmt == "count":
        return count(value)
    if fmt == "int":
        return f"{value:.0f}"
    if fmt == "fixed1":
        return f"{value:.1f}"
    if fmt == "fixed3":
        return f"{value:.3f}"
    if fmt == "ratio":
        return f"{value:.2f}x"
    raise ValueError(f"unknown format {fmt!r}")


def format_value(name: str, value: Any, missing: str = MISSING) -> str:
    """A value of column ``name`` as the report shows it (without its unit); undeclared
    columns: numbers with about three significant digits, anything else as text."""
    key = KEYS.get(name)
    if key is not None:
        return format_with(key.format, value, missing)
    return format_with("sig3" if isinstance(value, float) else "text", value, missing)


def with_unit(key: Key, value: Any, result: dict[str, Any] | None = None) -> str:
    """``AP 27.0 % [25.1, 29.0]``: short name, value, unit, and the interval when the result
    has one."""
    text = format_value(key.name, value, missing="n/a")
    unit = key.display_unit
    if not _is_missing(value) and unit:
        text += "%" if unit == "%" else f" {unit}"
    if result is not None and key.interval and not _is_missing(value):
        low, high = (result.get(k) for k in key.interval)
        if not _is_missing(low) and not _is_missing(high):
            text += f" [{format_value(key.name, low)}, {format_value(key.name, high)}]"
    return f"{key.short or key.name} {text}"


def named_value(name: str, value: Any, result: dict[str, Any] | None = None) -> str:
    """:func:`with_unit` for any column (an undeclared one shows its name and value)."""
    key = KEYS.get(name)
    if key is None:
        return f"{name} {format_value(name, value, missing='n/a')}"
    return with_unit(key, value, result)


def job_line(result: dict[str, Any], out_dir: str | Path | None = None) -> str:
    """The last line of a job's log: who, status, the summary numbers, where the result is.

    ``SSD w/ mobilenet_v2: ok: AP 27.0% [25.1, 29.0], AP50 58.0%, latency 7.21 ms,
    multiply-adds 0.104 GMACs, peak memory 45.2 MiB -> results/runs/.../result.json``; a
    failed or skipped job gives its reason instead of numbers. The numbers are the keys
    declared with ``summary=True``, formatted by the schema.
    """
    who = f"{result.get('meta_arch_name') or result.get('meta_arch')} w/ {result.get('extractor')}"
    status = result.get("status")
    if status == "ok":
        detail = ", ".join(with_unit(KEYS[n], result.get(n), result) for n in names(summary=True))
    else:
        detail = str(result.get("error") or "no reason recorded")
    where = f" -> {Path(out_dir) / 'result.json'}" if out_dir is not None else ""
    return f"{who}: {status}: {detail}{where}"
