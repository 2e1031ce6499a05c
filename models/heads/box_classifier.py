"""Faster R-CNN's box classifier: crop, the extractor's last stage per RoI, class + box.

Huang et al. 2017 (sections 2.1, 3.4, 3.6): proposals are cropped from the RPN's feature map
with TensorFlow's "crop and resize" to 14x14 (17x17 for the Inception extractors), max-pooled
to 7x7, and run through the rest of the feature extractor ("C4" style: ResNet's conv5 block,
VGG-16's fc6/fc7), followed by a class-score layer (background + C classes) and a
class-specific box-refinement layer.

The last stage runs at its ImageNet strides by default (``stage_stride=None``): ResNet's
conv5_1 at stride 2, so 14 -> 7 -> conv5 gives 4x4 before pooling. Huang et al. (3.6, and
the TF OD API's ResNet box classifier, block4 with stride 1) run conv5_1 at stride 1, so the
7x7 crop stays 7x7 through conv5: about 3x the MACs per RoI of the cheap variant, which is
what makes Faster R-CNN's cost grow with the number of proposals in their Figure 6.
``stage_stride=1`` gives the paper's (the paper presets set it for ResNet-101); the
CPU-sized default keeps the cheap variant. The TF OD API keeps stride 2 for its other
extractors' box classifiers (MobileNet's Conv2d_12, Inception's Mixed_5a / Mixed_7a).

Deviations, and why:
    * Crops use :func:`torchvision.ops.roi_align` with ``aligned=True`` and one sample per
      output cell (``sampling_ratio=1``), which samples each cell's centre bilinearly; TF's
      crop-and-resize samples a corner-aligned grid. Same cost, half-pixel-correct geometry.
    * 17x17 crops are not max-pooled (``crop_pool_kernel`` defaults to 1 for odd crop sizes),
      as the TF OD API's Inception-ResNet configs (``maxpool_kernel_size: 1``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from models.errors import IncompatibleConfigError
from models.extractors.base import LastStage
from models.extractors.timm_split import stride_one_copy
from models.losses import smooth_l1

__all__ = ["BoxClassifier", "roi_losses"]


class BoxClassifier(nn.Module):
    """Crop-and-resize + last stage + linear class / box predictors.

    Args:
        last_stage: the extractor's split (its ``stage`` runs on crops, its ``crop_size``
            is the default crop side).
        in_channels: channels of the cropped map (the trunk's deepest).
        stride: stride of that map (16, or 8 in atrous mode).
        num_classes: object classes, background excluded.
        crop_size: crop side; None takes ``last_stage.crop_size`` (14, 17 for Inception).
        crop_pool_kernel: max-pool kernel and stride on the crops; None gives 2 for even
            crop sizes (14 -> 7, the paper) and 1 (no pooling) for odd ones (17).
        sampling_ratio: bilinear samples per crop cell and axis (1 = crop-and-resize).
        class_agnostic_boxes: one box per RoI instead of one per class.
        stage_stride: None runs the last stage as split (its ImageNet strides, 2 for the
            strided stages); 1 runs every strided convolution / pooling of it at stride 1
            (Huang et al.'s ResNet: conv5_1 at stride 1 on the crops).

    Shapes:
        forward: ``features [B, C, H, W]``, ``rois [R, 5]`` (image index, xyxy pixels) ->
        ``(cls_logits [R, num_classes + 1], box_deltas [R, num_classes or 1, 4])``, column 0
        of the logits being background.
    """

    def __init__(
        self,
        *,
        last_stage: LastStage,
        in_channels: int,
        stride: int,
        num_classes: int,
        crop_size: int | None = None,
        crop_pool_kernel: int | None = None,
        sampling_ratio: int = 1,
        class_agnostic_boxes: bool = False,
        stage_stride: int | None = None,
    ):
        super().__init__()
        self.crop_size = int(crop_size or getattr(last_stage, "crop_size", 14))
        if crop_pool_kernel is None:
            crop_pool_kernel = 2 if self.crop_size % 2 == 0 else 1
        self.pool_kernel = int(crop_pool_kernel)
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = int(sampling_ratio)
        if stage_stride not in (None, 1):
            raise ValueError(f"stage_stride must be None (as split) or 1, got {stage_stride!r}")
        self.stage_stride = stage_stride
        self.stage = last_stage.stage
        if stage_stride == 1:
            self.stage = stride_one_copy(last_stage.stage)
            self._check_stage(in_channels)
        self.num_box_classes = 1 if class_agnostic_boxes else num_classes
        self.cls = nn.Linear(last_stage.out_channels, num_classes + 1)
        self.box = nn.Linear(last_stage.out_channels, self.num_box_classes * 4)
        # Ren et al. / Detectron: N(0, 0.01) for scores, N(0, 0.001) for box deltas.
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.box.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.box.bias)

    def _check_stage(self, in_channels: int) -> None:
        """Run the re-strided stage on a meta-device crop: a stage whose branches no longer
        agree (a functional pooling cannot be re-strided) is an incompatible combination."""
        side = self.crop_size // self.pool_kernel
        try:
            with torch.no_grad():
                copy.deepcopy(self.stage).to("meta")(
                    torch.empty(1, in_channels, side, side, device="meta")
                )
        except RuntimeError as e:
            raise IncompatibleConfigError(
                f"the extractor's last stage cannot run at stride 1 on {side}x{side} crops "
                f"(stage_stride=1): {e}"
            ) from e

    def forward(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():
            # The RoI count is data-dependent; torch.export must know it is not 0 to trace the
            # per-RoI batch norms (the RPN keeps at least its best box on any image).
            torch._check(rois.shape[0] > 0)
        crops = roi_align(
            features,
            rois.to(features.dtype),
            self.crop_size,
            self.spatial_scale,
            self.sampling_ratio,
            aligned=True,
        )  # [R, C, S, S]
        if self.pool_kernel > 1:
            crops = crop_max_pool(crops, self.pool_kernel)
        x = self.stage(crops).mean(dim=(2, 3))  # [R, C5]; VGG's fc7 is already [R, 4096, 1, 1]
        return self.cls(x), self.box(x).view(x.shape[0], self.num_box_classes, 4)

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, pool_kernel={self.pool_kernel}, "
            f"stage_stride={self.stage_stride}, sampling_ratio={self.sampling_ratio}, "
            f"spatial_scale={self.spatial_scale}"
        )


def crop_max_pool(crops: Tensor, k: int) -> Tensor:
    """``F.max_pool2d(crops, k, k)`` (floor mode), fast on the CPU when no gradient is needed.

    PyTorch's CPU max-pool kernel is slow on many small NCHW maps: ``[300, 1024, 14, 14]``
    took ~390 ms on one thread, about 3x as long as the same maximum taken over the ``k * k``
    strided slices (element-wise ``maximum``, vectorized over the whole tensor). The result is
    identical (a maximum is exact). With autograd the max-pool kernel is kept: its backward
    is cheaper than that of the chain of ``maximum`` ops.

    Args:
        crops: ``[R, C, H, W]``.
        k: kernel and stride.

    Returns:
        ``[R, C, H // k, W // k]``.
    """
    if crops.requires_grad and torch.is_grad_enabled():
        return F.max_pool2d(crops, k, k)
    h, w = crops.shape[-2] // k * k, crops.shape[-1] // k * k
    x = crops[..., :h, :w]
    out = x[..., 0::k, 0::k]
    for i in range(k):
        for j in range(k):
            if i or j:
                out = torch.maximum(out, x[..., i::k, j::k])
    return out


def roi_losses(
    cls_logits: Tensor, box_deltas: Tensor, labels: Tensor, box_targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-RoI second-stage losses (shared by Faster R-CNN and R-FCN).

    Args:
        cls_logits: ``[R, C + 1]``, background at column 0.
        box_deltas: ``[R, C, 4]`` class-specific or ``[R, 1, 4]`` class-agnostic.
        labels: ``[R]`` int64, 0 background, ``k + 1`` class ``k``.
        box_targets: ``[R, 4]`` encoded deltas (read at positives only).

    Returns:
        ``(cross entropy [R], smooth L1 summed over the 4 coordinates [R])``; the box term
        uses the deltas of the RoI's own class and is 0 at negatives.
    """
    ce = F.cross_entropy(cls_logits, labels, reduction="none")
    column = (labels - 1).clamp(min=0) if box_deltas.shape[1] > 1 else torch.zeros_like(labels)
    pred = box_deltas[torch.arange(labels.numel(), device=labels.device), column]  # [R, 4]
    box = smooth_l1(pred, box_targets, reduction="none").sum(dim=1) * (labels > 0)
    return ce, box
