"""Settings checked when a job starts, before data is built or anything trains.

:data:`CHECKS` is the declarative table: ``(key, check)`` pairs, where ``key`` is a dotted
config key or an ``fnmatch`` pattern over dotted keys (``meta_arch.*threshold``) and ``check``
says what a valid value is. Keys a configuration does not have are not checked (an SSD has no
``meta_arch.num_proposals``). :func:`check_settings` reports every violation at once, each
naming its key: ``data.image_size must be >= 32, got -64``.

Extend it by adding a row; a check is any :class:`Check` (``integer``, ``number``,
``one_of``, ``optional``, or one with its own test).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.identity import resolved_config
from benchmark.measure.settings import BACKENDS
from benchmark.train import SCHEDULES


class SettingsError(ValueError):
    """One or more settings are out of their valid range (the message names each key)."""


@dataclass(frozen=True)
class Check:
    """What a valid value is.

    Attributes:
        problem: ``problem(value, cfg)`` -> None when valid, else what it must be
            (``"must be >= 32"``); ``cfg`` is the whole config, for checks between keys.
    """

    problem: Callable[[Any, DictConfig], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _range(v: float, lo: float | None, hi: float | None, lo_open: bool) -> str | None:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return f"must be {'>' if lo_open else '>='} {lo:g}"
    if hi is not None and v > hi:
        return f"must be <= {hi:g}"
    return None


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An integer (not a bool, not 2.0) in ``[lo, hi]``."""

    def problem(v: Any, _cfg: DictConfig) -> str | None:
        if not _is_int(v):
            bounds = f" >= {lo}" if lo is not None else ""
            return f"must be an integer{bounds}"
        return _range(v, lo, hi, False)

    return Check(problem)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    def problem(v: Any, _cfg: DictConfig) -> str | None:
        if not _is_number(v) or not math.isfinite(v):
            return "must be a finite number"
        return _range(float(v), lo, hi, lo_open)

    return Check(problem)


def fraction() -> Check:
    """A probability, IoU threshold or share: a number in [0, 1]."""
    return number(0.0, 1.0)


def one_of(*values: str) -> Check:
    def problem(v: Any, _cfg: DictConfig) -> str | None:
        return None if v in values else f"must be one of {', '.join(values)}"

    return Check(problem)


def optional(check: Check) -> Check:
    """``null`` or what ``check`` accepts."""
    return Check(lambda v, cfg: None if v is None else check.problem(v, cfg))


def at_least_key(other: str, check: Check) -> Check:
    """What ``check`` accepts and not less than the value of the key ``other`` (when set)."""

    def problem(v: Any, cfg: DictConfig) -> str | None:
        if (p := check.problem(v, cfg)) is not None:
            return p
        ref = OmegaConf.select(cfg, other, default=None)
        if v is not None and _is_number(ref) and v < ref:
            return f"must be >= {other} ({ref})"
        return None

    return Check(problem)


def _device(v: Any, _cfg: DictConfig) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)
    return None if ok else "must be auto, cpu, cuda, cuda:N or mps"


# (key or fnmatch pattern over dotted keys, check). Patterns match every key of that shape,
# so a new threshold in a meta-architecture's YAML is checked without a new row.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("seed", integer(0, 2**32 - 1)),  # numpy's seed range
    ("device", Check(_device)),
    ("num_threads", optional(integer(1))),
    ("eval_batch_size", integer(1)),
    # data
    ("data.image_size", integer(32)),  # below the extractors' stride of 32 nothing is left
    ("data.max_size", optional(at_least_key("data.image_size", integer(32)))),
    ("data.num_workers", integer(0)),
    ("data.num_train", integer(1)),
    ("data.num_val", integer(1)),
    ("data.num_classes", integer(1)),
    ("data.gen_size", integer(32)),
    ("data.max_objects", integer(1)),
    ("data.negative_fraction", fraction()),
    # training
    ("train.max_iters", integer(0)),  # 0 = profile-only job
    ("train.batch_size", integer(1)),
    ("train.optimizer.lr", number(0.0, lo_open=True)),
    ("train.optimizer.weight_decay", number(0.0)),
    ("train.optimizer.momentum", fraction()),
    ("train.optimizer.alpha", fraction()),
    ("train.optimizer.eps", number(0.0, lo_open=True)),
    ("train.schedule", one_of(*SCHEDULES)),
    ("train.decay_steps", optional(integer(1))),
    ("train.decay_rate", optional(number(0.0, 1.0, lo_open=True))),
    ("train.warmup_iters", integer(0)),
    ("train.warmup_factor", fraction()),
    ("train.grad_clip", optional(number(0.0))),
    ("train.log_every", integer(1)),
    ("train.checkpoint_every", optional(integer(0))),
    ("train.second_stage_batch_size", integer(1)),
    ("train.devices", integer(1)),
    ("train.reference_batch_size", optional(integer(1))),
    ("train.sync_bn", one_of("off", "sync", "frozen")),
    ("train.lr_scaling", one_of("linear", "none")),
    ("train.amp_dtype", one_of("fp16", "bf16")),
    # meta-architectures (keys a model does not have are skipped)
    ("meta_arch.num_proposals", integer(1)),
    ("meta_arch.num_proposals_train", integer(1)),
    ("meta_arch.rpn.batch_size", integer(1)),
    ("meta_arch.rpn.pre_nms_topk", integer(1)),
    ("meta_arch.pre_nms_topk", integer(1)),
    ("meta_arch.max_detections", integer(1)),
    ("meta_arch.rpn.channels", integer(1)),
    ("meta_arch.box_head.ohem_rois", optional(integer(1))),
    ("meta_arch.neg_pos_ratio", number(0.0, lo_open=True)),
    ("meta_arch.min_scale", number(0.0, 1.0, lo_open=True)),
    ("meta_arch.max_scale", at_least_key("meta_arch.min_scale", number(0.0, lo_open=True))),
    ("meta_arch.rpn.pos_threshold", at_least_key("meta_arch.rpn.neg_threshold", fraction())),
    ("meta_arch.*threshold", optional(fraction())),  # IoU, score and NMS thresholds
    ("meta_arch.*fraction", fraction()),  # positive fractions of sampled minibatches
    # measurement protocol (docs/measurement.md)
    ("bench.warmup", integer(0)),
    ("bench.num_images", integer(1)),
    ("bench.batch_size", integer(1)),
    ("bench.precision", one_of("fp32", "fp16", "bf16")),
    ("bench.backend", one_of(*BACKENDS)),
    ("bench.parity_images", integer(1)),
    ("bench.parity_*_atol", number(0.0)),
    ("bench.runtime_max_shapes", integer(1)),
    ("bench.num_threads", optional(integer(1))),
    ("bench.throughput_batch_size", integer(1)),
    ("bench.throughput_iters", integer(1)),
    ("bench.roofline_seconds", number(0.0, lo_open=True)),
    ("bench.roofline_refresh_seconds", number(0.0)),
    ("bench.train_batch_size", optional(integer(1))),
)


_ALIAS = re.compile(r"\$\{[\w.]+\}")  # ${data.image_size}: another key's value


def _leaves(cfg: DictConfig) -> Iterator[tuple[str, Any]]:
    """``(dotted key, resolved value)`` of every leaf outside Hydra's node (lists are leaves).

    A key that only repeats another (``bench.num_threads: ${num_threads}``) is left out: its
    source is checked under its own name, and one bad value gives one message.
    """
    raw = {
        k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in cfg
    }

    def walk(node: Any, raw_node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(
                    v, raw_node.get(k) if isinstance(raw_node, dict) else None, f"{prefix}{k}."
                )
        elif not (isinstance(raw_node, str) and _ALIAS.fullmatch(raw_node)):
            yield prefix[:-1], node

    yield from walk(resolved_config(cfg), raw, "")


def settings_problems(cfg: DictConfig, checks=CHECKS) -> list[str]:
    """Every violation, as ``<key> must be <what>, got <value>`` (key order of ``checks``)."""
    leaves = dict(_leaves(cfg))
    problems = []
    for pattern, check in checks:
        keys = (
            [k for k in leaves if fnmatch.fnmatchcase(k, pattern)]
            if any(c in pattern for c in "*?[")
            else [pattern] * (pattern in leaves)
        )
        for key in keys:
            if (what := check.problem(leaves[key], cfg)) is not None:
                problems.append(f"{key} {what}, got {leaves[key]!r}")
    return list(dict.fromkeys(problems))  # a key matched by two rows reports once per problem


def check_settings(cfg: DictConfig) -> None:
    """Raise :class:`SettingsError` naming every setting out of its range (see :data:`CHECKS`)."""
    problems = settings_problems(cfg)
    if problems:
        raise SettingsError("; ".join(problems))
