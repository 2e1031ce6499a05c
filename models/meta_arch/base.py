"""The one base class every detector subclasses.

A detector runs in four steps, each overridable on its own:

1. :meth:`DetectionModel.preprocess` - normalize with the extractor's mean/std and pad a list
   of images into one batch. It never resizes: resizing belongs to the data pipeline.
2. :meth:`DetectionModel.predict` - pure tensors in, a dict of tensors out. This is the
   "network" part that FLOPs are counted on and that is timed as ``predict``.
3. :meth:`DetectionModel.postprocess` - decode boxes, score threshold, NMS, top-k.
4. :meth:`DetectionModel.loss` - training losses from ``predict``'s outputs and targets.

``forward`` keeps torchvision's convention so torchvision's own detectors and ours run
through the same harness: a list of ``[3, H, W]`` float images in [0, 1] (plus targets in
training) gives a loss dict in training mode and a list of detections in eval mode.

Box format everywhere: ``xyxy`` in absolute pixels of the (resized) input image.
Labels: ``0 .. num_classes - 1``; ``num_classes`` excludes background. Heads that need a
background class add it internally at index 0 and shift back in ``postprocess``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.extractors.base import FeatureExtractor

Target = dict[str, Tensor]  # {"boxes": [N, 4] xyxy float, "labels": [N] int64}
Detections = dict[str, Tensor]  # {"boxes": [D, 4] xyxy, "labels": [D] int64, "scores": [D]}


class ImageBatch(NamedTuple):
    """A padded, normalized batch.

    Attributes:
        tensor: ``[B, 3, H, W]`` normalized images, zero-padded at the bottom/right.
        image_sizes: per image ``(height, width)`` before padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]


FAMILIES = ("single-shot", "two-stage")


def import_object(dotted: str) -> Any:
    """``"models.necks.tcb.TCBTopDown"`` -> the class (``_target_`` strings of configs)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelInfo:
    """What a detector says about itself, recorded in every result (``benchmark.job``).

    The report reads these instead of keeping lists of names, so a new meta-architecture
    (or a torchvision detector of either family) is labelled right without touching it.

    Attributes:
        family: ``"single-shot"`` or ``"two-stage"`` (Huang et al. 2017 section 2).
        display_name: the paper's name (``Faster R-CNN``), for labels and legends.
        resize_mode: ``"square"`` or ``"shorter_side"`` (see :class:`DetectionModel`).
        proposals: whether a number of proposals applies (``num_proposals``).
        takes_neck: whether the single-shot context modules (the ``neck`` config group,
            ``top_down``) apply; a detector without them rejects a ``neck=`` choice.
        neck: the context module this instance runs (``none``, ``ssd_extra``, ``dssd``,
            ``tcb``, ``refinenet``...); None when ``takes_neck`` is False or not known yet.
        num_proposals: test-time proposals per image of this instance (None without).
    """

    family: str
    display_name: str
    resize_mode: str
    proposals: bool
    takes_neck: bool
    neck: str | None = None
    num_proposals: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")

    def result_keys(self) -> dict[str, Any]:
        """The ``result.json`` keys (declared in ``benchmark.schema``)."""
        return {
            "family": self.family,
            "meta_arch_name": self.display_name,
            "resize_mode": self.resize_mode,
            "uses_proposals": self.proposals,
            "neck": self.neck,
            "num_proposals": self.num_proposals,
        }


class DetectionModel(nn.Module):
    """Base detector.

    Class attributes (the detector's metadata, see :class:`ModelInfo`; a subclass sets the
    ones that differ):
        family: ``"single-shot"`` or ``"two-stage"``.
        display_name: the name in papers and plots.
        resize_mode: how the data pipeline must resize for this family: ``"square"``
            (fixed M x M, the single-shot family) or ``"shorter_side"`` (shorter side M,
            longer side capped, the two-stage family; Huang et al. 2017 section 3.3).
        proposals: whether ``num_proposals`` applies.
        takes_neck: whether a single-shot context module (``top_down``) can be chosen.

    Attributes:
        size_divisible: batches are padded to a multiple of this (the extractor's stride).
    """

    family: ClassVar[str] = "single-shot"
    display_name: ClassVar[str] = "detector"
    resize_mode: ClassVar[str] = "square"
    proposals: ClassVar[bool] = False
    takes_neck: ClassVar[bool] = False

    @classmethod
    def class_info(cls) -> ModelInfo:
        """The metadata every instance of this class shares (known before building one)."""
        return ModelInfo(
            family=cls.family,
            display_name=cls.display_name,
            resize_mode=cls.resize_mode,
            proposals=cls.proposals,
            takes_neck=cls.takes_neck,
        )

    def info(self) -> ModelInfo:
        """This instance's metadata: :meth:`class_info` plus its neck and proposals."""
        base = self.class_info()
        num = getattr(self, "num_proposals", None) if base.proposals else None
        return dataclasses.replace(
            base, neck=self.neck_name(), num_proposals=None if num is None else int(num)
        )

    def neck_name(self) -> str | None:
        """The context module this instance runs; None for detectors without one."""
        return None

    def cost_parts(self) -> dict[str, list[nn.Module]]:
        """The submodules whose work is the feature extractor's and the neck's.

        ``benchmark.measure.flops`` attributes the multiply-adds of ``predict`` by these
        (``gmacs_extractor``, ``gmacs_neck``); everything else ``predict`` runs is head work.
        Each module must be called as a module (its forward hooks run) inside ``predict``.

        Returns:
            ``{"extractor": [...], "neck": [...]}``; here the extractor and no neck (a
            two-stage detector's extractor is its trunk: the last stage, run on the crops,
            belongs to the box classifier).
        """
        return {"extractor": [self.extractor], "neck": []}

    @classmethod
    def config_info(cls, config: Mapping[str, Any]) -> ModelInfo:
        """The metadata from constructor arguments alone (a resolved ``meta_arch`` config),
        without building: the report's fallback for results written before jobs recorded
        :meth:`info`."""
        num = config.get("num_proposals") if cls.proposals else None
        return dataclasses.replace(
            cls.class_info(), num_proposals=None if num is None else int(num)
        )

    def __init__(self, *, extractor: FeatureExtractor, num_classes: int, size_divisible: int = 1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (background excluded), got {num_classes}")
        self.extractor = extractor
        self.num_classes = num_classes
        self.size_divisible = size_divisible
        self.register_buffer(
            "pixel_mean", torch.tensor(extractor.mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(extractor.std).view(1, 3, 1, 1), persistent=False
        )

    # -- step 1 -------------------------------------------------------------------------
    def preprocess(self, images: list[Tensor] | Tensor) -> ImageBatch:
        """Normalize and pad images into one batch.

        Args:
            images: list of ``[3, H_i, W_i]`` float images in [0, 1], or a ``[B, 3, H, W]`` tensor.

        Returns:
            ImageBatch with ``tensor`` ``[B, 3, H_max', W_max']`` (padded to
            ``size_divisible``) and the unpadded sizes.
        """
        if isinstance(images, Tensor) and images.dim() == 4:
            sizes = [tuple(images.shape[-2:])] * images.shape[0]
            batch = (images - self.pixel_mean) / self.pixel_std
            return ImageBatch(self._pad_to_divisible(batch), sizes)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if len(set(sizes)) == 1:
            batch = torch.stack(list(images))
        else:
            h = max(s[0] for s in sizes)
            w = max(s[1] for s in sizes)
            batch = images[0].new_zeros((len(images), 3, h, w))
            for i, im in enumerate(images):
                batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        # Padding is zero *after* normalization, i.e. the mean colour, as in torchvision.
        batch = (batch - self.pixel_mean) / self.pixel_std
        if len(set(sizes)) != 1:
            for i, (h_i, w_i) in enumerate(sizes):
                batch[i, :, h_i:, :] = 0
                batch[i, :, :, w_i:] = 0
        return ImageBatch(self._pad_to_divisible(batch), sizes)

    def _pad_to_divisible(self, batch: Tensor) -> Tensor:
        d = self.size_divisible
        if d <= 1:
            return batch
        h, w = batch.shape[-2:]
        ph, pw = (-h) % d, (-w) % d
        return F.pad(batch, (0, pw, 0, ph)) if ph or pw else batch

    @property
    def output_stride(self) -> int | None:
        """Stride of the deepest extractor map the detector computes (Huang et al.'s "output
        stride": 16, or 8 in atrous mode, for the two-stage models); None without one."""
        extractor = getattr(self, "extractor", None)
        info = getattr(extractor, "feature_info", None)
        return max(f.stride for f in info) if info else None

    # -- steps 2-4, per family ------------------------------------------------------------
    def predict(self, images: Tensor, targets: list[Target] | None = None) -> dict[str, Tensor]:
        """Run the network. Args: images ``[B, 3, H, W]`` normalized. ``targets`` only for
        families whose second stage samples RoIs against ground truth during training."""
        raise NotImplementedError

    def postprocess(
        self, outputs: dict[str, Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        raise NotImplementedError

    def loss(
        self, outputs: dict[str, Tensor], targets: list[Target], image_sizes: list[tuple[int, int]]
    ) -> dict[str, Tensor]:
        """Returns named scalar losses; training minimizes their sum."""
        raise NotImplementedError

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        """Anchors (default boxes) per image at ``(height, width)``: the "#Boxes" of the papers."""
        raise NotImplementedError

    # -- torchvision-style entry point ------------------------------------------------------
    def forward(self, images: list[Tensor] | Tensor, targets: list[Target] | None = None):
        batch = self.preprocess(images)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            outputs = self.predict(batch.tensor, targets)
            return self.loss(outputs, targets, batch.image_sizes)
        outputs = self.predict(batch.tensor)
        return self.postprocess(outputs, batch.image_sizes)
