"""Anchor-to-ground-truth matching and the samplers that follow it.

Huang et al. 2017 (section 3.2) name the two matchers: *Argmax* (many-to-one with IoU
thresholds, used for every meta-architecture in their experiments) and *Bipartite*
(greedy one-to-one). After matching, each meta-architecture samples anchors its own way:
hard negatives at 3:1 (SSD, DSSD, RefineDet), balanced random sampling (RPN 256 @ 50%,
Fast R-CNN 64 @ 25% in the TF OD API) or online hard example mining (R-FCN).

A *matches* tensor holds, per anchor, the matched ground-truth index ``>= 0``,
:data:`NEGATIVE` (background) or :data:`IGNORE` (no loss). The values equal torchvision's
``Matcher.BELOW_LOW_THRESHOLD`` / ``BETWEEN_THRESHOLDS``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

__all__ = [
    "IGNORE",
    "NEGATIVE",
    "argmax_match",
    "balanced_sample",
    "bipartite_match",
    "hard_negative_mining",
    "match_batch",
    "ohem_select",
]

NEGATIVE = -1
IGNORE = -2


def argmax_match(
    iou: Tensor,
    *,
    pos_threshold: float,
    neg_threshold: float,
    allow_low_quality: bool = True,
) -> Tensor:
    """Argmax matching with thresholds.

    Each anchor takes its highest-IoU ground truth if that IoU is ``>= pos_threshold``;
    below ``neg_threshold`` it is :data:`NEGATIVE`; in between :data:`IGNORE`
    (``pos_threshold == neg_threshold`` gives no ignored anchors, as SSD's 0.5).

    With ``allow_low_quality`` every ground truth also claims its best anchor(s), all
    anchors tied at its maximum IoU, whatever the thresholds: SSD's "best anchor per
    object first" and Faster R-CNN's low-quality matches. Such an anchor is assigned to
    the ground truth claiming it (the one with the highest IoU if several do). So an
    object gets a positive unless its best anchors are all claimed by another object with
    a higher IoU with them (two objects sharing a best anchor: the other wins, and this one
    keeps only anchors it matches above ``pos_threshold``, possibly none). That is Huang et
    al.'s *Argmax* (the TF OD API's ``force_match_for_each_row``) and torchvision's
    behaviour; Liu et al.'s Caffe SSD avoids it with greedy bipartite matching first
    (:func:`bipartite_match`), which gives every object its own anchor. Unlike torchvision,
    a ground truth that overlaps no anchor at all (max IoU 0) claims nothing, instead of
    turning every anchor positive.

    Args:
        iou: ``[G, A]`` IoU between ground truths and anchors.
        pos_threshold: minimum IoU for a positive.
        neg_threshold: IoU below which an anchor is negative.
        allow_low_quality: also give every ground truth its best anchor(s).

    Returns:
        ``[A]`` int64 matches: ground-truth index, :data:`NEGATIVE` or :data:`IGNORE`.
        ``G == 0`` gives all :data:`NEGATIVE`.
    """
    if neg_threshold > pos_threshold:
        raise ValueError(f"neg_threshold {neg_threshold} > pos_threshold {pos_threshold}")
    num_gt, num_anchors = iou.shape
    if num_gt == 0 or num_anchors == 0:
        return torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=iou.device)
    best_iou, matches = iou.max(dim=0)  # [A], [A]
    # masked_fill_ rather than boolean-index assignment: no host sync on CUDA.
    matches.masked_fill_(best_iou < pos_threshold, IGNORE)
    matches.masked_fill_(best_iou < neg_threshold, NEGATIVE)
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [G, 1]
        claims = (iou == best_per_gt) & (best_per_gt > 0)  # [G, A]
        # Only the few claimed columns need resolving; work on that small sub-matrix.
        cols = claims.any(dim=0).nonzero().squeeze(1)
        sub = iou[:, cols].masked_fill(~claims[:, cols], -1.0)
        matches[cols] = sub.argmax(dim=0)
    return matches


def bipartite_match(iou: Tensor) -> Tensor:
    """Greedy bipartite matching (Huang et al.'s "Bipartite").

    Repeatedly takes the highest remaining (ground truth, anchor) pair and removes both,
    so each ground truth gets exactly one anchor (while anchors last) and each anchor at
    most one ground truth. Like the TF OD API's ``GreedyBipartiteMatcher`` it matches
    even at zero IoU. Loops over ground truths only; no host sync.

    Args:
        iou: ``[G, A]`` IoU (any similarity where higher is better works).

    Returns:
        ``[A]`` int64: ground-truth index for the ``min(G, A)`` matched anchors,
        :data:`NEGATIVE` elsewhere.
    """
    num_gt, num_anchors = iou.shape
    matches = torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=iou.device)
    if num_gt == 0 or num_anchors == 0:
        return matches
    work = iou.detach().clone()
    gt_ids = torch.arange(num_gt, device=iou.device)
    for _ in range(min(num_gt, num_anchors)):
        flat = work.argmax()  # 0-d tensor: indexing with it avoids .item() syncs
        gt = torch.div(flat, num_anchors, rounding_mode="floor")
        anchor = flat - gt * num_anchors
        matches[anchor] = gt_ids[gt]
        work[gt, :] = -torch.inf
        work[:, anchor] = -torch.inf
    return matches


def match_batch(
    gt_boxes: list[Tensor],
    anchors: Tensor,
    *,
    pos_threshold: float,
    neg_threshold: float,
    allow_low_quality: bool = True,
) -> Tensor:
    """:func:`argmax_match` every image of a batch against shared anchors.

    Args:
        gt_boxes: per image ``[G_i, 4]`` xyxy ground truths (``G_i`` may be 0).
        anchors: ``[A, 4]`` xyxy anchors.
        pos_threshold: see :func:`argmax_match`.
        neg_threshold: see :func:`argmax_match`.
        allow_low_quality: see :func:`argmax_match`.

    Returns:
        ``[B, A]`` int64 matches.
    """
    if not gt_boxes:
        return torch.empty((0, anchors.shape[0]), dtype=torch.int64, device=anchors.device)
    return torch.stack(
        [
            argmax_match(
                box_iou(boxes, anchors),
                pos_threshold=pos_threshold,
                neg_threshold=neg_threshold,
                allow_low_quality=allow_low_quality,
            )
            for boxes in gt_boxes
        ]
    )


def hard_negative_mining(
    neg_loss: Tensor,
    pos_mask: Tensor,
    *,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 0,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Per image, keep the negatives with the highest loss (SSD's 3:1 rule).

    Args:
        neg_loss: ``[B, A]`` per-anchor background classification loss; values at
            positives (and ignored anchors) are not used. Not differentiated through.
        pos_mask: ``[B, A]`` bool positives.
        neg_pos_ratio: negatives per positive, per image (``floor(ratio * num_pos)``).
        min_negatives: at least this many negatives per image (e.g. for images with no
            positives; 0 keeps Liu et al.'s rule).
        ignore_mask: ``[B, A]`` bool anchors that are neither positive nor negative
            (e.g. IGNORE matches, or anchors filtered by RefineDet's ARM).

    Returns:
        ``[B, A]`` bool negatives, disjoint from ``pos_mask`` and ``ignore_mask``; per
        image ``min(max(floor(ratio * num_pos), min_negatives), num_candidates)`` of them.
    """
    candidates = ~pos_mask if ignore_mask is None else ~(pos_mask | ignore_mask)
    num_pos = pos_mask.sum(dim=1, keepdim=True)  # [B, 1]
    num_neg = (num_pos * neg_pos_ratio).floor().long().clamp(min=min_negatives)  # [B, 1]
    with torch.no_grad():
        loss = neg_loss.detach().masked_fill(~candidates, -torch.inf)
        order = loss.argsort(dim=1, descending=True)  # [B, A]
        ranks = torch.arange(loss.shape[1], device=loss.device).expand_as(order)
        # Scatter "rank < quota" back to anchor positions: one sort, no second argsort.
        neg_mask = torch.empty_like(candidates).scatter_(1, order, ranks < num_neg)
    # When the quota exceeds the candidates, ranks reach the -inf (excluded) anchors.
    return neg_mask & candidates


def balanced_sample(
    matches: Tensor,
    *,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random balanced sampling of positives and negatives per image (Faster R-CNN).

    Per image: ``num_pos = min(#positives, int(num_samples * positive_fraction))``, then
    ``num_neg = min(#negatives, num_samples - num_pos)``, so negatives fill in when
    positives are short (RPN: 256 @ 0.5; box classifier: 64 @ 0.25 in the TF OD API).

    Vectorized with one sort per batch: each anchor gets a random key in ``[0, 1)``, plus
    2 if positive, 0 if negative, -2 if ignored. Sorted descending, each row holds its
    positives (random order) then its negatives (random order), so the selection is a
    rank window per row.

    Args:
        matches: ``[B, A]`` matches (``>= 0`` positive, :data:`NEGATIVE`, :data:`IGNORE`).
        num_samples: anchors sampled per image.
        positive_fraction: target fraction of positives.
        generator: random generator on ``matches.device``, for reproducibility.

    Returns:
        ``(pos_mask, neg_mask)``, each ``[B, A]`` bool.
    """
    is_pos = matches >= 0
    is_neg = matches == NEGATIVE
    total_pos = is_pos.sum(dim=1, keepdim=True)  # [B, 1]
    total_neg = is_neg.sum(dim=1, keepdim=True)
    num_pos = total_pos.clamp(max=int(num_samples * positive_fraction))
    num_neg = torch.minimum(total_neg, num_samples - num_pos)
    keys = torch.rand(matches.shape, generator=generator, device=matches.device)
    keys.add_(is_pos.to(keys.dtype), alpha=2.0)
    keys.sub_((matches < NEGATIVE).to(keys.dtype), alpha=2.0)  # IGNORE sorts last
    order = keys.argsort(dim=1, descending=True)
    ranks = torch.arange(matches.shape[1], device=matches.device).expand_as(order)
    sorted_pos = ranks < num_pos
    sorted_neg = (ranks >= total_pos) & (ranks < total_pos + num_neg)
    pos_mask = torch.empty_like(is_pos).scatter_(1, order, sorted_pos)
    neg_mask = torch.empty_like(is_pos).scatter_(1, order, sorted_neg)
    return pos_mask, neg_mask


def ohem_select(
    losses: Tensor,
    num: int,
    *,
    boxes: Tensor | None = None,
    iou_threshold: float = 0.7,
) -> Tensor:
    """Online hard example mining: keep the ``num`` RoIs with the highest loss (R-FCN).

    R-FCN (Dai et al. 2016) sorts all RoIs of an image by loss and keeps the 128 with the
    highest: the default, plain top-k by loss. Shrivastava et al.'s OHEM first runs NMS
    (IoU 0.7) over the loss-ranked RoIs, so that overlapping RoIs do not all count as hard
    examples; pass ``boxes`` for that variant.

    Args:
        losses: ``[R]`` per-RoI total (classification + box) loss; not differentiated.
        num: RoIs to keep (``min(num, R)`` are kept).
        boxes: optional ``[R, 4]`` xyxy RoIs for the NMS variant.
        iou_threshold: NMS threshold of the NMS variant.

    Returns:
        ``[R]`` bool mask of the selected RoIs.
    """
    scores = losses.detach()
    if boxes is None:
        keep = scores.topk(min(num, scores.numel())).indices
    else:
        # nms returns indices sorted by decreasing score, here the loss.
        keep = nms(boxes.detach().float(), scores.float(), iou_threshold)[:num]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask[keep] = True
    return mask
