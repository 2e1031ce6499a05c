"""The region proposal network shared by Faster R-CNN and R-FCN (Ren et al. 2015).

:class:`RPN` is the whole first stage as one component, like torchvision's
``RegionProposalNetwork`` and Detectron2's ``RPN``: grid anchors (4 scales x 3 aspect ratios
of a base size), :class:`RPNHead` (a 3x3 convolution on the stride-16 map, stride 8 in atrous
mode, then 1x1 convolutions predicting one objectness logit and four box deltas per anchor),
proposal generation (decode, top 1000, NMS at 0.7, the best ``num_proposals``) and the
training loss: anchors are matched to objects at IoU 0.7 / 0.3 (every object also claims its
best anchors), 256 anchors per image are sampled at up to 50% positives, and the loss is a
sigmoid cross entropy on the sample plus smooth L1 on its positives, both divided by the
sample size (Huang et al. 2017 sections 3.2 and 3.6; the TF Object Detection API's
first-stage settings, whose loss weights are 1 and 2).

Deviations, and why:
    * One sigmoid logit per anchor instead of a two-way softmax (Ren et al., TF OD API):
      the same model with half the output channels, as torchvision and Detectron2 do.
    * Anchor sizes scale with the input: the base size is ``256 * image_size / 600``, i.e.
      the TF OD API's 256 px at Huang et al.'s M = 600, shrunk for the small images this
      benchmark trains on (at M = 160: 17, 34, 68, 137 px instead of 64..512 px, which would
      miss most objects). ``base_size`` sets it in pixels; with neither it is 256.
    * The ``pre_nms_topk`` (1000) best anchors per image are kept before NMS, which bounds
      NMS cost on large inputs; the TF OD API runs NMS over all anchors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.anchors import grid_anchors
from models.box_ops import BoxCoder
from models.heads.proposals import PaddedBoxes, Proposals, generate_proposals, top_proposals
from models.losses import smooth_l1
from models.matching import balanced_sample, match_batch

__all__ = ["RPN", "RPNHead", "rpn_loss"]


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


class RPN(nn.Module):
    """The first stage: anchors, :class:`RPNHead`, proposals, target assignment and loss.

    Args:
        in_channels: channels of the map it reads (the meta-architecture's RPN map).
        stride: that map's stride in pixels (16, or 8 in atrous mode).
        image_size: the shorter side M the data pipeline resizes to; sets the anchor base
            size (``256 * M / 600``) when ``base_size`` is None.
        anchor_scales: anchor sizes as multiples of the base size (0.25, 0.5, 1, 2).
        aspect_ratios: ``w / h`` (0.5, 1, 2).
        base_size: base size in pixels (overrides ``image_size``).
        channels: width of the head's 3x3 convolution (512).
        pos_threshold, neg_threshold: anchor IoU thresholds (0.7, 0.3).
        batch_size, positive_fraction: anchors sampled per image for the loss (256 at 0.5).
        nms_threshold: proposal NMS IoU (0.7).
        pre_nms_topk: anchors per image kept before proposal NMS (1000).
        box_coder_weights: (10, 10, 5, 5) (Huang et al. 3.2).
        loss_weights: multipliers of ``(loss_rpn_cls, loss_rpn_box)``: (1, 2) as the TF OD API.

    Shapes:
        forward: ``features [B, C, H/s, W/s]`` -> (:class:`Proposals` ``[B, N, 4]`` xyxy
        pixels, ``{"rpn_logits": [B, A], "rpn_deltas": [B, A, 4], "anchors": [A, 4]}``) with
        ``A = H/s * W/s * K`` anchors in (y, x, anchor) order.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        stride: int,
        image_size: int | None = None,
        anchor_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        base_size: float | None = None,
        channels: int = 512,
        pos_threshold: float = 0.7,
        neg_threshold: float = 0.3,
        batch_size: int = 256,
        positive_fraction: float = 0.5,
        nms_threshold: float = 0.7,
        pre_nms_topk: int = 1000,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        loss_weights: Sequence[float] = (1.0, 2.0),
    ):
        super().__init__()
        if base_size is None:
            base_size = 256.0 * (image_size / 600.0 if image_size else 1.0)
        self.stride = int(stride)
        self.anchor_sizes = tuple(float(s) * float(base_size) for s in anchor_scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.anchors_per_location = len(self.anchor_sizes) * len(self.aspect_ratios)
        self.head = RPNHead(in_channels, self.anchors_per_location, channels=channels)
        self.coder = BoxCoder(tuple(box_coder_weights))
        self.pos_threshold, self.neg_threshold = pos_threshold, neg_threshold
        self.batch_size, self.positive_fraction = batch_size, positive_fraction
        self.nms_threshold, self.pre_nms_topk = nms_threshold, pre_nms_topk
        self.loss_weights = tuple(float(w) for w in loss_weights)

    def anchors(self, map_size: tuple[int, int], device: torch.device | None = None) -> Tensor:
        """``[H*W*K, 4]`` xyxy pixel anchors for a map of ``map_size`` (cached, shared)."""
        return grid_anchors(
            map_size,
            self.stride,
            scales=self.anchor_sizes,
            aspect_ratios=self.aspect_ratios,
            device=device,
        )

    def forward(
        self,
        features: Tensor,
        image_size: tuple[int, int],
        num_proposals: int,
        *,
        fixed: bool = False,
    ) -> tuple[Proposals, dict[str, Tensor]]:
        """Predict, then propose at most ``num_proposals`` boxes per image clipped to
        ``image_size`` (the padded batch). ``fixed``: exactly ``num_proposals`` by objectness,
        no NMS (the FLOP-counting contract, ``benchmark/measure/flops.py``)."""
        logits, deltas = self.head(features)
        anchors = self.anchors(tuple(features.shape[-2:]), features.device)
        if fixed:
            proposals = top_proposals(
                logits, deltas, anchors, image_size, coder=self.coder, num_proposals=num_proposals
            )
        else:
            proposals = generate_proposals(
                logits,
                deltas,
                anchors,
                image_size,
                coder=self.coder,
                pre_nms_topk=self.pre_nms_topk,
                nms_threshold=self.nms_threshold,
                num_proposals=num_proposals,
            )
        return proposals, {"rpn_logits": logits, "rpn_deltas": deltas, "anchors": anchors}

    def loss(
        self, outputs: dict[str, Tensor], gt_boxes: list[Tensor], gt: PaddedBoxes
    ) -> dict[str, Tensor]:
        """``{"loss_rpn_cls", "loss_rpn_box"}``, weighted, from :meth:`forward`'s outputs and
        the ground truth (per image ``[G_i, 4]`` xyxy, and the same padded)."""
        cls, box = rpn_loss(
            outputs["rpn_logits"],
            outputs["rpn_deltas"],
            outputs["anchors"],
            gt_boxes,
            gt,
            coder=self.coder,
            pos_threshold=self.pos_threshold,
            neg_threshold=self.neg_threshold,
            batch_size=self.batch_size,
            positive_fraction=self.positive_fraction,
        )
        w_cls, w_box = self.loss_weights
        return {"loss_rpn_cls": cls * w_cls, "loss_rpn_box": box * w_box}

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{s:g}" for s in self.anchor_sizes)
        return f"stride={self.stride}, anchor_sizes=({sizes}), aspect_ratios={self.aspect_ratios}"
