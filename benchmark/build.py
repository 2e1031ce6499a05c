"""Build a detector from the Hydra config: one function, ``instantiate`` and ``_target_``;
and the architecture facts of a built detector that result.json records."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from benchmark.spec import ModelRecipe
from models.meta_arch.base import DetectionModel


def build_detector(cfg: DictConfig, num_classes: int) -> DetectionModel:
    """Instantiate ``cfg.extractor`` and hand it to ``cfg.meta_arch``.

    Necks and heads in the meta-architecture config are ``_partial_`` factories: their
    channel counts come from the extractor's ``feature_info`` inside the detector. The same
    path as :meth:`benchmark.spec.ModelRecipe.build`, which the job and its fresh memory
    process use.
    """
    return ModelRecipe.from_cfg(cfg, num_classes).build()


def architecture_keys(model: DetectionModel) -> dict[str, Any]:
    """``output_stride`` (the deepest extractor map's stride: 16 or 8 for the two-stage models
    in Huang et al.'s sense) and ``crop_size`` (the per-RoI crop side of a two-stage model,
    14 / 17, or R-FCN's bins x samples; None for single-shot ones), read from the module."""
    return {
        "output_stride": getattr(model, "output_stride", None),
        "crop_size": getattr(model, "crop_size", None),
    }
