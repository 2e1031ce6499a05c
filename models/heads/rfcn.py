"""R-FCN's second stage: position-sensitive score maps and PS-RoIAlign (Dai et al. 2016).

Computed once per image on the extractor's last map (after its last stage, Huang et al.
2017 section 2.2): a 1x1 "reduce" convolution to 1024 channels, then 1x1 convolutions to
``k * k * (C + 1)`` position-sensitive class maps and ``k * k * 4`` box maps (class-agnostic,
as Dai et al.; ``k * k * 4 * C`` when class-specific). Each RoI is split into ``k x k``
bins; bin ``(i, j)`` reads only its own channel group, and the bins are averaged ("voting").
The only per-RoI work is that pooling, so the cost barely depends on the number of
proposals: the paper's point (Figure 6).

Deviations, and why:
    * Pooling is :func:`torchvision.ops.ps_roi_align` with ``sampling_ratio`` bilinear
      samples per bin and axis (3 by default), i.e. Huang et al.'s "crop and resize the
      7x7 bins to 21x21" then average each bin, rather than Dai et al.'s PS-RoI max/average
      pooling on integer cells.
    * Class and box maps come from one convolution and one PS-RoIAlign call (their channel
      groups concatenated), which is the same arithmetic with one kernel launch fewer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import ps_roi_align, roi_align

from models.matching import ohem_select

__all__ = ["PSRoIHead", "ohem_keep", "ohem_loss"]


class PSRoIHead(nn.Module):
    """Position-sensitive class and box predictors.

    Args:
        in_channels: channels of the input map (the extractor's last map).
        stride: its stride in pixels (16, or 8 in atrous mode).
        num_classes: object classes, background excluded.
        bins: ``k``, bins per RoI side (Huang et al.: 7 for ResNet-101 and Inception-ResNet,
            3 for MobileNet and Inception v2).
        sampling_ratio: bilinear samples per bin and axis (3: 7x7 bins "resized to 21x21";
            4: 3x3 bins resized to 12x12).
        reduce_channels: width of the 1x1 reduce convolution (1024, Dai et al.); 0 or None
            skips it.
        class_agnostic_boxes: one box per RoI (Dai et al.) instead of one per class.

    Shapes:
        forward: ``features [B, C, H, W]``, ``rois [R, 5]`` (image index, xyxy pixels) ->
        ``(cls_logits [R, num_classes + 1], box_deltas [R, num_classes or 1, 4])``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        stride: int,
        num_classes: int,
        bins: int = 7,
        sampling_ratio: int = 3,
        reduce_channels: int | None = 1024,
        class_agnostic_boxes: bool = True,
    ):
        super().__init__()
        self.bins = int(bins)
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = int(sampling_ratio)
        self.num_scores = num_classes + 1
        self.num_box_classes = 1 if class_agnostic_boxes else num_classes
        self.reduce = nn.Conv2d(in_channels, reduce_channels, 1) if reduce_channels else None
        k2 = self.bins * self.bins
        # One convolution for the class and the box maps: ps_roi_align reads output channel c
        # from input channels [c*k*k, (c+1)*k*k), so the two groups simply stack.
        self.ps = nn.Conv2d(
            reduce_channels or in_channels, k2 * (self.num_scores + 4 * self.num_box_classes), 1
        )
        with torch.no_grad():
            nn.init.normal_(self.ps.weight[: k2 * self.num_scores], std=0.01)  # class maps
            nn.init.normal_(self.ps.weight[k2 * self.num_scores :], std=0.001)  # box maps
            nn.init.zeros_(self.ps.bias)
        if self.reduce is not None:
            nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.reduce.bias)

    @property
    def crop_size(self) -> int:
        """Side of the sampled grid per RoI: ``bins * sampling_ratio`` (Huang et al.: 7x7 bins
        "resized to 21x21", 3x3 bins to 12x12)."""
        return self.bins * self.sampling_ratio

    def score_maps(self, features: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, k*k*(C+1 + 4*Cb), H, W]``: the once-per-image part."""
        x = F.relu(self.reduce(features)) if self.reduce is not None else features
        return self.ps(x)

    def forward(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.pool(self.score_maps(features), rois)

    def pool(self, maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """The per-RoI part: PS-RoIAlign of :meth:`score_maps` output, then average voting."""
        if torch.compiler.is_exporting():  # ONNX has no PS-RoIAlign: the same sums, via RoIAlign
            votes = ps_roi_align_votes(
                maps, rois.to(maps.dtype), self.bins, self.spatial_scale, self.sampling_ratio
            )
        else:
            pooled = ps_roi_align(
                maps, rois.to(maps.dtype), self.bins, self.spatial_scale, self.sampling_ratio
            )  # [R, C+1 + 4*Cb, k, k]
            votes = pooled.mean(dim=(2, 3))  # average voting over the bins
        cls_logits = votes[:, : self.num_scores]
        box_deltas = votes[:, self.num_scores :].reshape(-1, self.num_box_classes, 4)
        return cls_logits, box_deltas

    def extra_repr(self) -> str:
        return f"bins={self.bins}, sampling_ratio={self.sampling_ratio}, spatial_scale={self.spatial_scale}"


def ps_roi_align_votes(
    maps: Tensor, rois: Tensor, bins: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """``ps_roi_align(maps, rois, bins, spatial_scale, sampling_ratio).mean(dim=(2, 3))``
    written with :func:`torchvision.ops.roi_align`, which has an ONNX operator (``RoiAlign``)
    where PS-RoIAlign has none.

    Bin ``(i, j)`` of output channel ``c`` averages ``sampling_ratio ** 2`` bilinear samples
    of input channel ``c * k * k + i * k + j`` inside the bin's sub-box: exactly RoIAlign with
    a 1x1 output over that sub-box (``aligned=True``: PS-RoIAlign also shifts by half a pixel
    and does not clamp the size). So the channel groups of the ``k * k`` bins become
    ``k * k`` pseudo-images, every RoI ``k * k`` sub-box RoIs (one per bin, on its group), and
    one RoIAlign call takes the same samples as ``ps_roi_align``; only the copy of the maps
    into that layout is extra.

    Args:
        maps: ``[B, C' * k * k, H, W]`` position-sensitive maps.
        rois: ``[R, 5]`` (image index, xyxy pixels).

    Returns:
        ``[R, C']`` votes (each channel averaged over its ``k x k`` bins).
    """
    b, ch, h, w = maps.shape
    k2 = bins * bins
    groups = maps.reshape(b, ch // k2, k2, h, w).transpose(1, 2).reshape(b * k2, ch // k2, h, w)
    steps = torch.arange(bins, dtype=rois.dtype, device=rois.device) / bins
    x1, y1, x2, y2 = rois[:, 1:2], rois[:, 2:3], rois[:, 3:4], rois[:, 4:5]  # [R, 1]
    bx, by = (x2 - x1) / bins, (y2 - y1) / bins
    sx = (x1 + steps * (x2 - x1)).unsqueeze(1).expand(-1, bins, -1)  # [R, k(i), k(j)]
    sy = (y1 + steps * (y2 - y1)).unsqueeze(2).expand(-1, -1, bins)
    bx, by = bx.unsqueeze(2).expand_as(sx), by.unsqueeze(2).expand_as(sy)
    index = rois[:, :1].long() * k2 + torch.arange(k2, device=rois.device)  # [R, k*k]
    sub = torch.stack(
        [
            index.to(rois.dtype),
            sx.reshape(-1, k2),
            sy.reshape(-1, k2),
            (sx + bx).reshape(-1, k2),
            (sy + by).reshape(-1, k2),
        ],
        dim=2,
    ).reshape(-1, 5)  # [R * k*k, 5], bin (i, j) of RoI r at row r * k*k + i * k + j
    pooled = roi_align(groups, sub, 1, spatial_scale, sampling_ratio, aligned=True)
    return pooled.reshape(rois.shape[0], k2, ch // k2).mean(dim=1)


def ohem_loss(
    ce: Tensor, box: Tensor, rois: Tensor, *, num: int, nms_threshold: float | None = None
) -> tuple[Tensor, Tensor]:
    """Online hard example mining (Shrivastava et al. 2016, as used by Dai et al.).

    Per image, the ``num`` RoIs with the highest total loss (classification + box) are kept;
    only they contribute, and both losses are divided by how many were kept.

    Args:
        ce: ``[R]`` per-RoI classification loss.
        box: ``[R]`` per-RoI box loss (0 at negatives).
        rois: ``[R, 5]`` RoIs sorted by image index (column 0).
        num: RoIs kept per image (128).
        nms_threshold: if set, NMS at this IoU among the loss-ranked RoIs first.

    Returns:
        ``(loss_cls, loss_box)`` scalars.
    """
    keep = ohem_keep((ce + box).detach(), rois, num=num, nms_threshold=nms_threshold)
    n = keep.sum().clamp(min=1).to(ce.dtype)
    return torch.where(keep, ce, 0.0).sum() / n, torch.where(keep, box, 0.0).sum() / n


def ohem_keep(
    loss: Tensor, rois: Tensor, *, num: int, nms_threshold: float | None = None
) -> Tensor:
    """Per image, the ``num`` highest-loss RoIs (after NMS among them when set).

    Args:
        loss: ``[R]`` per-RoI total loss (no gradient needed).
        rois: ``[R, 5]`` RoIs sorted by image index (column 0).

    Returns:
        ``[R]`` bool mask of the kept RoIs.
    """
    counts = torch.bincount(rois[:, 0].long()).tolist()
    return torch.cat(
        [
            ohem_select(
                per_image,
                num,
                boxes=r[:, 1:] if nms_threshold else None,
                iou_threshold=nms_threshold or 0.7,
            )
            for per_image, r in zip(loss.split(counts), rois.split(counts), strict=True)
        ]
        or [torch.zeros_like(loss, dtype=torch.bool)]
    )
