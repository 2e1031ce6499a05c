"""Region proposals and second-stage RoI sampling for the two-stage family.

Three steps sit between the region proposal network and the box classifier:

* :func:`generate_proposals` - decode the RPN's deltas, keep the ``pre_nms_topk`` best
  anchors per image, clip to the image, drop degenerate boxes, NMS (IoU 0.7) and keep the
  ``num_proposals`` best (Ren et al. 2015; Huang et al. 2017 section 2.1). One
  :func:`torchvision.ops.batched_nms` call serves the whole batch (the image is the group).
* :func:`top_proposals` - the fixed-count variant FLOPs are counted with: the top
  ``num_proposals`` anchors by objectness, no NMS, repeated if there are fewer anchors, so
  the box classifier always runs on exactly ``num_proposals`` RoIs per image.
* :func:`sample_rois` - match proposals (plus the ground truth, optional) to objects at
  IoU 0.5 and sample the box classifier's minibatch (64 RoIs at 25% positives for Faster
  R-CNN) or keep them all (R-FCN, whose OHEM picks the hard ones in the loss).

Proposals travel as a padded batch, :class:`Proposals` (``[B, N, 4]`` plus a validity mask),
so sampling is vectorized across images; the box classifier receives torchvision's RoI
format ``[R, 5]`` = ``(image index, x1, y1, x2, y2)``. Boxes are xyxy absolute pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, nms, remove_small_boxes

from models.box_ops import BoxCoder
from models.matching import IGNORE, NEGATIVE, argmax_match, balanced_sample

__all__ = [
    "PaddedBoxes",
    "Proposals",
    "RoISample",
    "generate_proposals",
    "pad_targets",
    "sample_rois",
    "to_rois",
    "top_proposals",
]


class Proposals(NamedTuple):
    """A padded batch of proposals.

    Attributes:
        boxes: ``[B, N, 4]`` xyxy pixels, zeros where not valid.
        scores: ``[B, N]`` objectness probabilities, 0 where not valid.
        valid: ``[B, N]`` bool; valid entries come first in each row, best score first.
    """

    boxes: Tensor
    scores: Tensor
    valid: Tensor


class PaddedBoxes(NamedTuple):
    """Ground truth padded to the batch's largest object count.

    Attributes:
        boxes: ``[B, G, 4]`` xyxy pixels, zeros where not valid.
        labels: ``[B, G]`` int64 in ``0..C-1``, 0 where not valid.
        valid: ``[B, G]`` bool.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor


class RoISample(NamedTuple):
    """The box classifier's training minibatch.

    Attributes:
        rois: ``[R, 5]`` ``(image index, x1, y1, x2, y2)``, sorted by image index.
        labels: ``[R]`` int64, 0 background, ``k + 1`` for class ``k``.
        box_targets: ``[R, 4]`` encoded deltas of the matched object, zeros at negatives.
    """

    rois: Tensor
    labels: Tensor
    box_targets: Tensor


def _gather_boxes(
    deltas: Tensor, anchors: Tensor, idx: Tensor, coder: BoxCoder, image_size: tuple[int, int]
) -> Tensor:
    """Decode the selected anchors: ``deltas [B, A, 4]``, ``idx [B, K]`` -> ``[B, K, 4]`` clipped."""
    picked = deltas.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return clip_boxes_to_image(coder.decode(picked, anchors[idx]), image_size)


@torch.no_grad()
def generate_proposals(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int],
    *,
    coder: BoxCoder,
    pre_nms_topk: int,
    nms_threshold: float,
    num_proposals: int,
    min_size: float = 1e-3,
) -> Proposals:
    """RPN outputs -> at most ``num_proposals`` boxes per image after NMS.

    Only the ``pre_nms_topk`` best anchors of each image are decoded, which bounds the cost
    of decoding and NMS on large images. Not differentiable: Huang et al. (section 3.4)
    disable backpropagation through the proposal coordinates.

    Args:
        logits: ``[B, A]`` objectness logits.
        deltas: ``[B, A, 4]`` encoded box deltas.
        anchors: ``[A, 4]`` xyxy pixels.
        image_size: ``(H, W)`` boxes are clipped to (the padded batch: ``predict`` does not
            see the per-image sizes).
        coder: the box coder the deltas were encoded with.
        pre_nms_topk: anchors per image kept before NMS.
        nms_threshold: NMS IoU (0.7).
        num_proposals: proposals kept per image after NMS.
        min_size: boxes narrower or shorter than this (pixels) are dropped.

    Returns:
        :class:`Proposals` with ``N = num_proposals``; images with fewer survivors are padded.
    """
    num_images, num_anchors = logits.shape
    k = min(pre_nms_topk, num_anchors)
    top_logits, idx = logits.topk(k, dim=1)  # [B, k]
    boxes = _gather_boxes(deltas, anchors, idx, coder, image_size).reshape(-1, 4)  # [B*k, 4]
    scores = top_logits.reshape(-1)
    if num_images == 1:
        return _single_image(boxes, scores, nms_threshold, num_proposals, min_size)
    image_ids = torch.arange(num_images, device=logits.device).repeat_interleave(k)
    keep = remove_small_boxes(boxes, min_size)
    # One call for the batch; NMS ordering by logit equals ordering by probability.
    keep = keep[batched_nms(boxes[keep], scores[keep], image_ids[keep], nms_threshold)]
    # ``keep`` is sorted by score over the whole batch: a stable sort by image groups it per
    # image while keeping each image's score order, so the rank within an image is the
    # position minus the image's first position.
    keep = keep[torch.sort(image_ids[keep], stable=True).indices]
    ids = image_ids[keep]
    counts = torch.bincount(ids, minlength=num_images)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[ids]
    sel = rank < num_proposals
    keep, ids, rank = keep[sel], ids[sel], rank[sel]

    out_boxes = boxes.new_zeros((num_images, num_proposals, 4))
    out_scores = scores.new_zeros((num_images, num_proposals))
    valid = torch.zeros((num_images, num_proposals), dtype=torch.bool, device=logits.device)
    out_boxes[ids, rank] = boxes[keep]
    out_scores[ids, rank] = scores[keep].sigmoid()
    valid[ids, rank] = True
    return Proposals(out_boxes, out_scores, valid)


def _single_image(
    boxes: Tensor, scores: Tensor, nms_threshold: float, num_proposals: int, min_size: float
) -> Proposals:
    """:func:`generate_proposals` for one image (the batch-1 timing protocol): the same
    proposals, computed so that only NMS has a data-dependent shape, which ``torch.export``
    can trace (``bench.backend=onnxruntime`` exports this path).

    ``boxes [k, 4]`` and ``scores [k]`` (logits) are the top-k candidates, best first.
    """
    k = boxes.shape[0]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    big = ((w >= min_size) & (h >= min_size)).nonzero().squeeze(1)  # remove_small_boxes
    keep = big[nms(boxes[big], scores[big], nms_threshold)]
    kept = torch.zeros(k, dtype=torch.bool, device=boxes.device).index_fill(0, keep, True)
    # Candidates are sorted by score, so a kept box's rank is the number of kept boxes before
    # it; sorting by (rank if kept, else k + position) puts the kept ones first, in order.
    rank = kept.cumsum(0) - 1
    position = torch.arange(k, device=boxes.device)
    order = torch.where(kept, rank, k + position).sort().indices[:num_proposals]
    valid = kept[order] & (rank[order] < num_proposals)
    out_boxes = torch.where(valid[:, None], boxes[order], 0.0)
    out_scores = torch.where(valid, scores[order].sigmoid(), 0.0)
    if k < num_proposals:  # fewer anchors than proposals: pad (static sizes)
        pad = num_proposals - k
        out_boxes = torch.cat([out_boxes, out_boxes.new_zeros((pad, 4))])
        out_scores = torch.cat([out_scores, out_scores.new_zeros(pad)])
        valid = torch.cat([valid, valid.new_zeros(pad)])
    return Proposals(out_boxes[None], out_scores[None], valid[None])


@torch.no_grad()
def top_proposals(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int],
    *,
    coder: BoxCoder,
    num_proposals: int,
) -> Proposals:
    """Exactly ``num_proposals`` proposals per image: the best anchors, no NMS.

    The FLOP-counting contract of ``benchmark/measure/flops.py``: the second stage's cost must
    not depend on what untrained weights happen to propose. With fewer anchors than
    ``num_proposals`` the ranked list is repeated.

    Args:
        logits: ``[B, A]``; deltas: ``[B, A, 4]``; anchors: ``[A, 4]``; image_size: ``(H, W)``.

    Returns:
        :class:`Proposals` with ``N = num_proposals``, all valid.
    """
    num_anchors = logits.shape[1]
    k = min(num_proposals, num_anchors)
    top_logits, idx = logits.topk(k, dim=1)
    if k < num_proposals:
        reps = math.ceil(num_proposals / k)
        idx = idx.repeat(1, reps)[:, :num_proposals]
        top_logits = top_logits.repeat(1, reps)[:, :num_proposals]
    boxes = _gather_boxes(deltas, anchors, idx, coder, image_size)
    return Proposals(boxes, top_logits.sigmoid(), torch.ones_like(top_logits, dtype=torch.bool))


def to_rois(boxes: Tensor, valid: Tensor) -> Tensor:
    """Padded ``[B, N, 4]`` boxes + ``[B, N]`` mask -> ``[R, 5]`` RoIs sorted by image."""
    b, n = valid.nonzero(as_tuple=True)
    return torch.cat([b.to(boxes.dtype).unsqueeze(1), boxes[b, n]], dim=1)


def pad_targets(gt_boxes: list[Tensor], gt_labels: list[Tensor]) -> PaddedBoxes:
    """Per-image ``[G_i, 4]`` boxes and ``[G_i]`` labels -> :class:`PaddedBoxes` ``[B, G]``.

    ``G = max(1, max_i G_i)``: at least one (invalid) column, so gathering "the matched
    object" stays a valid index even when no image has objects.
    """
    num = max([1] + [len(b) for b in gt_boxes])
    ref = gt_boxes[0]
    boxes = ref.new_zeros((len(gt_boxes), num, 4))
    labels = torch.zeros((len(gt_boxes), num), dtype=torch.int64, device=ref.device)
    valid = torch.zeros((len(gt_boxes), num), dtype=torch.bool, device=ref.device)
    for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        boxes[i, : len(b)] = b
        labels[i, : len(b)] = lab
        valid[i, : len(b)] = True
    return PaddedBoxes(boxes, labels, valid)


@torch.no_grad()
def sample_rois(
    proposals: Proposals,
    gt: PaddedBoxes,
    *,
    coder: BoxCoder,
    fg_threshold: float = 0.5,
    num_samples: int | None = 64,
    positive_fraction: float = 0.25,
    add_gt: bool = True,
) -> RoISample:
    """Assign classification / regression targets to proposals and sample the minibatch.

    A proposal is positive (the matched object's class) at IoU ``>= fg_threshold`` with some
    object, otherwise background: the TF Object Detection API's second-stage argmax matcher
    (no ignored band, no low-quality matches).

    Args:
        proposals: the RPN's proposals, ``[B, N, 4]``.
        gt: padded ground truth, ``[B, G, 4]``.
        coder: box coder for the regression targets (relative to the proposal).
        fg_threshold: IoU for a positive (0.5).
        num_samples: RoIs per image (64 for Faster R-CNN), balanced with
            :func:`models.matching.balanced_sample`; ``None`` keeps every proposal (R-FCN).
        positive_fraction: target fraction of positives (0.25).
        add_gt: append the ground-truth boxes to the proposals, so every object has a
            perfect positive even while the RPN is still untrained.

    Returns:
        :class:`RoISample` with ``R <= B * num_samples`` RoIs (``B * (N + G)`` at most when
        ``num_samples`` is None).
    """
    boxes, valid = proposals.boxes, proposals.valid
    if add_gt:
        boxes = torch.cat([boxes, gt.boxes.to(boxes.dtype)], dim=1)
        valid = torch.cat([valid, gt.valid], dim=1)
    matches = torch.stack(
        [
            # Padded ground-truth rows come last, so indices into the valid prefix are
            # indices into the padded rows as well.
            argmax_match(
                box_iou(g[v], b),
                pos_threshold=fg_threshold,
                neg_threshold=fg_threshold,
                allow_low_quality=False,
            )
            for g, v, b in zip(gt.boxes, gt.valid, boxes, strict=True)
        ]
    )  # [B, P]
    matches = matches.masked_fill(~valid, IGNORE)
    if num_samples is None:
        pos, neg = matches >= 0, matches == NEGATIVE
    else:
        pos, neg = balanced_sample(
            matches, num_samples=num_samples, positive_fraction=positive_fraction
        )
    img, idx = (pos | neg).nonzero(as_tuple=True)  # sorted by image, then proposal
    roi_boxes = boxes[img, idx]
    matched = matches[img, idx].clamp(min=0)
    is_pos = pos[img, idx]
    labels = torch.where(is_pos, gt.labels[img, matched] + 1, 0)
    # Negatives (and images without objects) encode against padding: masked to zero.
    targets = coder.encode(gt.boxes[img, matched].to(roi_boxes.dtype), roi_boxes)
    targets = torch.where(is_pos.unsqueeze(1), targets, 0.0)
    rois = torch.cat([img.to(roi_boxes.dtype).unsqueeze(1), roi_boxes], dim=1)
    return RoISample(rois, labels, targets)
