"""A job's identity: the fingerprint of its resolved configuration.

Two jobs are the same job exactly when every setting that can change one of their numbers is
equal. The fingerprint is the SHA-256 of the canonical JSON (sorted keys, no whitespace) of the
resolved config without Hydra's own node and without :data:`NOT_IDENTITY`, the keys that only
say how or where the job runs. ``device``, ``num_threads`` and ``eval_batch_size`` are part of
it (they change timings, or evaluation batching); the detbench commit (``git_sha``) is
recorded beside it but is not part of it, so a result stays valid across commits that do not
touch its configuration. The configuration is the one given, not the machine: ``device=auto``
is the same setting on every machine (the device used is recorded as ``device`` and
``device_name``).

It is stored as ``config_fingerprint`` in result.json and in ``checkpoint.pt``; a job skips only
a result with its own fingerprint and resumes only a checkpoint with its own fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.results import _jsonable

# Dotted keys that cannot change a number: progress bars, re-run policy, output and lock
# locations, checkpoint cadence and the resume switch (a resumed job reports its whole
# training and says it was resumed).
NOT_IDENTITY = (
    "progress",
    "force",
    "results_root",
    "sweep_name",
    "timing_lock",
    "timing_lock_dir",
    "timing_pause_work",
    "train.resume",
    "train.checkpoint_every",
)
SHORT = 12  # hex digits shown in messages


def resolved_config(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The job's config with interpolations resolved, without Hydra's own node."""
    return {
        str(k): OmegaConf.to_container(cfg[k], resolve=True)
        if OmegaConf.is_config(cfg[k])
        else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def identity_config(config: DictConfig | Mapping) -> dict[str, Any]:
    """The part of a config that decides the job's numbers (a plain, JSON-ready dict).

    Args:
        config: a job config (DictConfig) or the ``config`` stored in a result.json.
    """
    tree = _jsonable(resolved_config(config) if OmegaConf.is_config(config) else dict(config))
    tree.pop("hydra", None)
    for dotted in NOT_IDENTITY:
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


def fingerprint(identity: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of an :func:`identity_config` dict."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def config_fingerprint(config: DictConfig | Mapping) -> str:
    """The fingerprint of a job config (or of the ``config`` stored in a result)."""
    return fingerprint(identity_config(config))


def result_fingerprint(result: Mapping[str, Any]) -> str | None:
    """The fingerprint a result.json belongs to: its ``config_fingerprint``, or, for results
    written before it existed, the fingerprint of its stored ``config``; None when neither."""
    if result.get("config_fingerprint"):
        return str(result["config_fingerprint"])
    if isinstance(result.get("config"), dict):
        return config_fingerprint(result["config"])
    return None


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 12) -> list[str]:
    """Readable differences between two identity configs: ``key: old -> new``, sorted.

    Keys present on one side only show ``(absent)``. At most ``limit`` lines, then a count.
    """
    a, b = dict(_flatten(dict(old))), dict(_flatten(dict(new)))
    missing = "(absent)"
    lines = [
        f"{k}: {json.dumps(a.get(k)) if k in a else missing} -> "
        f"{json.dumps(b.get(k)) if k in b else missing}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, missing) != b.get(k, missing)
    ]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


def describe(identity: Mapping[str, Any] | None, fp: str | None, label: str | None = None) -> str:
    """``ssd/mobilenet_v3_small: meta_arch=SSD extractor=TimmExtractor(mobilenetv3_small_100)
    data=synthetic@64px (fingerprint 1a2b3c4d5e6f)``: enough to recognize a configuration.

    Args:
        label: the config-group choices (``ssd/mobilenet_v3_small``) when known.
    """
    if not identity:
        return f"an unknown configuration (fingerprint {short(fp)})"

    def target(node: Any) -> str:
        if not isinstance(node, dict):
            return "?"
        name = str(node.get("_target_", "?")).rsplit(".", 1)[-1]
        model = node.get("name") or node.get("model_name")
        return f"{name}({model})" if model else name

    data = identity.get("data") if isinstance(identity.get("data"), dict) else {}
    return (
        (f"{label}: " if label else "") + f"meta_arch={target(identity.get('meta_arch'))} "
        f"extractor={target(identity.get('extractor'))} "
        f"data={data.get('name', '?')}@{data.get('image_size', '?')}px "
        f"(fingerprint {short(fp)})"
    )


def short(fp: str | None) -> str:
    return fp[:SHORT] if fp else "none"
