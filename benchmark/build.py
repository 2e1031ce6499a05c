"""Build a detector from the Hydra config: one function, ``instantiate`` and ``_target_``."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from models.meta_arch.base import DetectionModel


def build_detector(cfg: DictConfig, num_classes: int) -> DetectionModel:
    """Instantiate ``cfg.extractor`` and hand it to ``cfg.meta_arch``.

    Necks and heads in the meta-architecture config are ``_partial_`` factories: their
    channel counts come from the extractor's ``feature_info`` inside the detector.
    """
    extractor = instantiate(cfg.extractor)
    return instantiate(cfg.meta_arch, extractor=extractor, num_classes=num_classes)
