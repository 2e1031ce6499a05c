"""The search space: the grid's axes, with the axes that exist only for some detectors.

``hydra.sweeper.params`` holds the unconditional axes (``meta_arch``, ``extractor``,
``data.image_size``) as Hydra sweep overrides (``ssd,rfcn``); ``hydra.sweeper.conditional``
the axes that exist only for some values of another: the number of proposals for the
two-stage detectors, the context module (``neck=``) for the single-shot ones. A conditional
axis is suggested to a trial only when its condition holds, so a trial never composes an
override its configuration lacks (``meta_arch.num_proposals`` is not a key of SSD). No
Optuna here: the sweeper passes its trials in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser


class SearchSpaceError(ValueError):
    """A conditional axis that cannot be used (bad ``when``, no choices)."""


@dataclass(frozen=True)
class ConditionalAxis:
    """An axis suggested only when every ``when`` key has one of its listed values.

    Attributes:
        name: the override key (``meta_arch.num_proposals``, ``neck``).
        choices: the values to try, as override strings.
        when: key -> allowed values (strings, compared with the trial's override values).
    """

    name: str
    choices: tuple[str, ...]
    when: tuple[tuple[str, tuple[str, ...]], ...]

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether the trial's ``values`` (override key -> value) meet the condition."""
        return all(str(values.get(key)) in allowed for key, allowed in self.when)


def sweep_values(override: str) -> tuple[str, ...]:
    """``'neck=none,tcb'`` -> ``('none', 'tcb')``; a single value is one choice."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    if parsed.is_sweep_override():
        if not parsed.is_choice_sweep():
            raise SearchSpaceError(f"{override}: a conditional axis takes a list of choices")
        return tuple(str(v) for v in parsed.sweep_string_iterator())
    return (parsed.get_value_element_as_str(),)


def conditional_axes(
    conditional: Mapping[str, Any] | None, overrides: Sequence[str] = ()
) -> list[ConditionalAxis]:
    """The conditional axes of ``hydra.sweeper.conditional``, with their choices replaced by
    an override of the same key (``neck=none,tcb`` or ``meta_arch.num_proposals=50`` on the
    command line narrows the axis but keeps its condition).

    Args:
        conditional: name -> ``{when: {key: [values]}, choices: [values]}``.
        overrides: the sweep's overrides (``key=value`` strings).

    Raises:
        SearchSpaceError: an axis without choices or condition.
    """
    given = {}
    for text in overrides:
        key = text.split("=", 1)[0]
        if conditional and key in conditional:
            given[key] = sweep_values(text)
    axes = []
    for name, spec in (conditional or {}).items():
        when = spec.get("when") if isinstance(spec, Mapping) else None
        choices = given.get(name) or tuple(str(c) for c in (spec.get("choices") or []))
        if not when or not choices:
            raise SearchSpaceError(
                f"hydra.sweeper.conditional.{name}: needs `when: {{key: [values]}}` and "
                f"`choices: [values]`, got {dict(spec) if isinstance(spec, Mapping) else spec!r}"
            )
        condition = tuple(
            (
                str(k),
                tuple(
                    str(v)
                    for v in (vs if isinstance(vs, Sequence) and not isinstance(vs, str) else [vs])
                ),
            )
            for k, vs in when.items()
        )
        axes.append(ConditionalAxis(str(name), choices, condition))
    return axes


def without_conditional(overrides: Sequence[str], axes: Sequence[ConditionalAxis]) -> list[str]:
    """``overrides`` less those of conditional axes (the sweeper suggests them itself)."""
    names = {a.name for a in axes}
    return [o for o in overrides if o.split("=", 1)[0] not in names]


def suggest_conditional(
    trial: Any, axes: Sequence[ConditionalAxis], fixed: Mapping[str, Any]
) -> None:
    """Suggest each conditional axis whose condition holds for ``trial``'s values so far.

    Args:
        trial: an ``optuna.trial.Trial`` (anything with ``params`` and
            ``suggest_categorical``).
        axes: the conditional axes, in order (an axis may depend on an earlier one).
        fixed: the sweep's fixed overrides (key -> value), which conditions may also read.
    """
    for axis in axes:
        if axis.applies({**fixed, **trial.params}):
            trial.suggest_categorical(axis.name, list(axis.choices))
