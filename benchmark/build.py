"""Build a detector from the Hydra config: one function, ``instantiate`` and ``_target_``."""

from __future__ import annotations

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
