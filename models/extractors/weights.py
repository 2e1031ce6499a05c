"""Loading local weight files into extractors, with errors that name the file.

Nothing here downloads: ``weights_path`` is how a run without internet gets ImageNet weights
(a timm ``model.safetensors`` / ``pytorch_model.bin`` or a torchvision ``.pth`` copied by
hand), and how a trained extractor is reloaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from timm.models import load_state_dict
from torch import nn

logger = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or torch pickle file (``weights_only=True``).

    timm's helper unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and strips
    the ``module.`` prefix that DistributedDataParallel adds.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but cannot be read as a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {str(path)!r} does not exist or is not a file")
    try:
        # use_ema=False: load the weights the checkpoint was evaluated with, not a side copy.
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # pickle, safetensors and zip errors have no common base class
        raise ValueError(f"cannot read weights file {str(path)!r}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a flat tensor state dict")
    return state


def load_matching(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    aliases: Callable[[str], Iterable[str]] = lambda key: (key,),
    optional: Callable[[str], bool] = lambda key: False,
) -> None:
    """Copy ``state`` into ``module``, requiring every tensor of ``module`` to be found.

    Extra keys in ``state`` are ignored on purpose: a classification checkpoint carries a
    head (``fc.*``, ``classifier.*``) and often later stages that a truncated feature
    extractor does not have.

    Args:
        module: the module to fill.
        state: tensors by name, e.g. from :func:`read_state_dict`.
        source: file name for error messages.
        aliases: candidate keys in ``state`` for a key of ``module``, tried in order.
        optional: keys that may be absent (they keep their initialization). BatchNorm's
            ``num_batches_tracked`` is always optional (old and frozen checkpoints lack it).

    Raises:
        ValueError: keys missing from ``state`` or shapes that differ, listing a few of each.
    """
    target = module.state_dict()
    found: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    for key, tensor in target.items():
        match = next((alias for alias in aliases(key) if alias in state), None)
        if match is None:
            if not (key.endswith("num_batches_tracked") or optional(key)):
                missing.append(key)
            continue
        if state[match].shape != tensor.shape:
            mismatched.append(
                f"{key}: file {tuple(state[match].shape)} vs model {tuple(tensor.shape)}"
            )
            continue
        found[key] = state[match]
    if missing or mismatched:
        raise ValueError(
            f"weights file {source!r} does not match {type(module).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:5]}"
        )
    skipped = len(target) - len(found)
    if skipped:
        logger.info(
            "%s: %d tensors absent from %s keep their initialization",
            type(module).__name__,
            skipped,
            source,
        )
    module.load_state_dict(found, strict=False)


def timm_key_aliases(key: str) -> tuple[str, ...]:
    """Candidate checkpoint keys for a key of a timm ``features_only`` body.

    Tries, in order: the key itself (timm/torchvision classification checkpoints), with a
    ``body.`` prefix (a saved :class:`TimmExtractor` state dict), and with the first
    ``name_<i>.`` turned back into ``name.<i>.`` (timm's FeatureListNet flattens nested
    ``nn.Sequential`` stages, e.g. ConvNeXt's ``stages.0`` becomes ``stages_0``).
    """
    unflattened = re.sub(r"^([A-Za-z][A-Za-z0-9]*)_(\d+)\.", r"\1.\2.", key)
    return (key, f"body.{key}", unflattened, f"body.{unflattened}")
