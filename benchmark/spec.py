"""Typed hand-off inside a job: the config is read once and these objects are passed on.

* :class:`InputSpec` - how images are resized (mode, ``M``, longer-side cap) and the
  ``(H, W)`` a typical validation image ends up with; the data pipeline, ``num_anchors`` and
  the memory probes all read it, so they cannot disagree about the input.
* :class:`OptimizerSpec` - the resolved ``train.optimizer`` node; its :meth:`~OptimizerSpec.build`
  is the one place an optimizer is made from the config (training and the memory probes).
* :class:`ModelRecipe` - the resolved extractor and meta-architecture nodes, the class count
  and the training step (optimizer, batch, precision): plain data, picklable, so the
  fresh-process memory probe rebuilds the job's detector from it without the config tree.

:mod:`models` never sees these: the recipe turns into plain ``nn.Module`` constructor calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torchvision import tv_tensors

from benchmark.data.transforms import RESIZE_MODES, resize_transform

# What a training step uses when no ``train.optimizer`` is configured (measurement tests,
# notebooks): SGD with momentum keeps one state tensor per parameter.
DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.SGD", "lr": 1e-3, "momentum": 0.9}


def _plain(node: Any) -> Any:
    """A config node as plain, resolved Python data (dicts and lists; no OmegaConf)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


@dataclass(frozen=True)
class InputSpec:
    """How the job's images are resized, and the input shape that results.

    Attributes:
        resize_mode: ``"square"`` (``M x M``, the single-shot family) or ``"shorter_side"``
            (shorter side ``M``, longer side at most ``max_size``; the two-stage family).
        image_size: ``M`` in pixels (``data.image_size``).
        max_size: longer-side cap for ``shorter_side`` (``data.max_size``; None: the
            default of :func:`benchmark.data.transforms.default_max_size`).
        shape: ``(H, W)`` of a typical validation image after resizing (see
            :meth:`with_typical_shape`); ``(M, M)`` until then, and always for ``square``.
    """

    resize_mode: str
    image_size: int
    max_size: int | None = None
    shape: tuple[int, int] | None = None

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        shape = self.shape or (self.image_size, self.image_size)
        object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))  # frozen dataclass

    @classmethod
    def from_cfg(cls, cfg) -> InputSpec:
        """From the job config: the resize mode is the meta-architecture class's
        ``resize_mode`` (the model family decides), the sizes come from ``data``."""
        from hydra.utils import get_class

        mode = getattr(get_class(cfg.meta_arch._target_), "resize_mode", "square")
        max_size = cfg.data.get("max_size")
        return cls(
            resize_mode=mode,
            image_size=int(cfg.data.image_size),
            max_size=int(max_size) if max_size else None,
        )

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """``(H, W)`` an ``height x width`` image gets from the data pipeline's own resize
        step (applied to an empty box set, which carries the canvas size and costs nothing)."""
        empty = tv_tensors.BoundingBoxes(
            torch.zeros(0, 4), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
        )
        out = resize_transform(self.resize_mode, self.image_size, self.max_size)(empty)
        return tuple(int(s) for s in out.canvas_size)

    def with_typical_shape(self, sizes: Iterable[tuple[int, int]]) -> InputSpec:
        """This spec with ``shape`` set from the original ``(height, width)`` of the
        validation images: the upper median of their resized shapes ordered by area (equal
        areas by ``(H, W)``). Landscape 640x480 photos at ``M = 600`` give ``(600, 800)``,
        not 600x600. ``square`` ignores ``sizes``."""
        sizes = [(int(h), int(w)) for h, w in sizes]
        if self.resize_mode == "square" or not sizes:
            return self
        cache: dict[tuple[int, int], tuple[int, int]] = {}  # few distinct sizes, many images
        for hw in sizes:
            if hw not in cache:
                cache[hw] = self.resized(*hw)
        shapes = sorted((cache[hw] for hw in sizes), key=lambda s: (s[0] * s[1], s))
        return replace(self, shape=shapes[len(shapes) // 2])

    def result_keys(self) -> dict[str, Any]:
        """``resize_mode`` and ``input_shape`` of ``result.json`` (results/README.md)."""
        return {"resize_mode": self.resize_mode, "input_shape": list(self.shape)}


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer as resolved config data: ``{"_target_": "torch.optim.AdamW", "lr": ...}``."""

    node: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPTIMIZER))

    @classmethod
    def from_cfg(cls, node) -> OptimizerSpec:
        """From a ``train.optimizer`` node (DictConfig or dict); None gives the default."""
        return cls() if node is None else cls(dict(_plain(node)))

    def build(self, params) -> torch.optim.Optimizer:
        """The optimizer over ``params`` (an iterable of tensors or parameter groups)."""
        from hydra.utils import instantiate

        return instantiate(dict(self.node), params=params)


@dataclass(frozen=True)
class ModelRecipe:
    """Everything needed to rebuild the job's detector and reproduce one training step.

    Attributes:
        extractor: the resolved ``extractor`` node (``_target_`` and arguments).
        meta_arch: the resolved ``meta_arch`` node; necks and heads inside are ``_partial_``
            factories that get their channel counts from the extractor.
        num_classes: object classes (background excluded), from the dataset.
        optimizer: the training step's optimizer.
        train_batch_size: images per training step (``train.batch_size``, one rank).
        train_precision: autocast of the training step: ``fp32``, or ``train.amp_dtype``
            when ``train.amp`` is on and the device is CUDA (AMP is ignored on CPU).
    """

    extractor: Mapping[str, Any]
    meta_arch: Mapping[str, Any]
    num_classes: int
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    train_batch_size: int = 2
    train_precision: str = "fp32"

    @classmethod
    def from_cfg(cls, cfg, num_classes: int, *, cuda: bool = False) -> ModelRecipe:
        """From the job config (``extractor``, ``meta_arch`` and ``train`` nodes)."""
        train = cfg.get("train")
        amp = train is not None and bool(train.get("amp", False)) and cuda
        return cls(
            extractor=_plain(cfg.extractor),
            meta_arch=_plain(cfg.meta_arch),
            num_classes=int(num_classes),
            optimizer=OptimizerSpec.from_cfg(train.get("optimizer") if train else None),
            train_batch_size=int(train.batch_size) if train is not None else 2,
            train_precision=str(train.get("amp_dtype", "fp16")) if amp else "fp32",
        )

    def build(self):
        """A new :class:`~models.meta_arch.base.DetectionModel` (random or configured
        initial weights, as the config says), on the CPU."""
        from hydra.utils import instantiate

        extractor = instantiate(dict(self.extractor))
        return instantiate(dict(self.meta_arch), extractor=extractor, num_classes=self.num_classes)
