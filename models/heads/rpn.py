"""The region proposal network shared by Faster R-CNN and R-FCN (Ren et al. 2015).

A 3x3 convolution on the stride-16 (8 when atrous) map, then 1x1 convolutions predicting
one objectness logit and four box deltas per anchor. Training: anchors are matched to
objects at IoU 0.7 / 0.3 (every object also claims its best anchors), 256 anchors per image
are sampled at up to 50% positives, and the loss is a sigmoid cross entropy on the sample
plus smooth L1 on its positives, both divided by the sample size (Huang et al. 2017
sections 3.2 and 3.6; the TF Object Detection API's first-stage settings).

Deviations, and why:
    * One sigmoid logit per anchor instead of a two-way softmax (Ren et al., TF OD API):
      the same model with half the output channels, as torchvision and Detectron2 do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.box_ops import BoxCoder
from models.heads.proposals import PaddedBoxes
from models.losses import smooth_l1
from models.matching import balanced_sample, match_batch

__all__ = ["RPNHead", "rpn_loss"]


class RPNHead(nn.Module):
    """Objectness and box deltas for every anchor of one feature map.

    Args:
        in_channels: channels of the input map.
        num_anchors: anchors per location (4 scales x 3 ratios = 12).
        channels: width of the shared 3x3 convolution (512 in the TF OD API).

    Shapes:
        forward: ``[B, C, H, W]`` -> ``(logits [B, H*W*K], deltas [B, H*W*K, 4])`` in
        (y, x, anchor) order, the order of :func:`models.anchors.grid_anchors`.
    """

    def __init__(self, in_channels: int, num_anchors: int, *, channels: int = 512):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls = nn.Conv2d(channels, num_anchors, 1)
        self.box = nn.Conv2d(channels, num_anchors * 4, 1)
        for conv in (self.conv, self.cls, self.box):  # Ren et al.: N(0, 0.01), zero bias
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        b = x.shape[0]
        # Channel a (or a * 4 + k) is anchor a: permuting to NHWC gives (y, x, anchor) order.
        logits = self.cls(t).permute(0, 2, 3, 1).reshape(b, -1)
        deltas = self.box(t).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return logits, deltas


def rpn_loss(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: list[Tensor],
    gt: PaddedBoxes,
    *,
    coder: BoxCoder,
    pos_threshold: float = 0.7,
    neg_threshold: float = 0.3,
    batch_size: int = 256,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """RPN target assignment, sampling and loss.

    Args:
        logits: ``[B, A]`` objectness logits.
        deltas: ``[B, A, 4]`` predicted deltas.
        anchors: ``[A, 4]`` xyxy pixels.
        gt_boxes: per image ``[G_i, 4]`` xyxy ground truth (``G_i`` may be 0).
        gt: the same boxes padded (:func:`models.heads.proposals.pad_targets`).
        coder: box coder (the project's ``[10, 10, 5, 5]``).
        pos_threshold: IoU for a positive anchor (0.7).
        neg_threshold: IoU below which an anchor is negative (0.3).
        batch_size: anchors sampled per image (256).
        positive_fraction: maximum fraction of positives in the sample (0.5).
        generator: random generator for the sampling.

    Returns:
        ``(loss_cls, loss_box)`` scalars, each divided by the number of sampled anchors.
    """
    matches = match_batch(
        gt_boxes,
        anchors,
        pos_threshold=pos_threshold,
        neg_threshold=neg_threshold,
        allow_low_quality=True,
    )  # [B, A]
    pos, neg = balanced_sample(
        matches, num_samples=batch_size, positive_fraction=positive_fraction, generator=generator
    )
    sampled = pos | neg
    num = sampled.sum().clamp(min=1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, pos.to(logits.dtype), reduction="none")
    # torch.where keeps the graph dense (no boolean-index copy of the [B, A] logits).
    loss_cls = torch.where(sampled, bce, 0.0).sum() / num
    img, idx = pos.nonzero(as_tuple=True)
    targets = coder.encode(gt.boxes[img, matches[img, idx]].to(deltas.dtype), anchors[idx])
    loss_box = smooth_l1(deltas[img, idx], targets, reduction="sum") / num
    return loss_cls, loss_box
