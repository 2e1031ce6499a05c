"""Detection losses: localization (smooth L1), classification (softmax / sigmoid / focal)
and SSD's multibox loss with hard negative mining.

Target conventions: classification targets use 0 for background and ``k`` for class
``k - 1`` (labels are ``0..C-1`` everywhere else in the project), and -1 for anchors that
take no loss. Box targets are :class:`models.box_ops.BoxCoder` deltas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from models.matching import hard_negative_mining

__all__ = ["multibox_loss", "sigmoid_classification_loss", "smooth_l1", "softmax_cross_entropy"]


def smooth_l1(pred: Tensor, target: Tensor, *, beta: float = 1.0, reduction: str = "sum") -> Tensor:
    """Smooth L1 / Huber loss (Huang et al. section 3.2) over any matching shapes.

    ``beta`` is the L2-to-L1 switch point (``beta = 0`` is plain L1; torchvision's Faster
    R-CNN uses 1/9). Wrapper of :func:`torch.nn.functional.smooth_l1_loss`.
    """
    return F.smooth_l1_loss(pred, target, beta=beta, reduction=reduction)


def softmax_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    reduction: str = "none",
    *,
    ignore_index: int = -1,
) -> Tensor:
    """Softmax cross entropy with background at index 0.

    Args:
        logits: ``[..., C + 1]`` scores, column 0 background.
        targets: ``[...]`` int64, 0 background, ``k`` class ``k - 1``, ``ignore_index``
            (-1) no loss.
        reduction: ``"none"`` (``[...]``, 0 at ignored entries), ``"sum"`` or ``"mean"``
            (over non-ignored entries).

    Returns:
        Loss of shape ``[...]`` or a scalar.
    """
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        reduction=reduction,
        ignore_index=ignore_index,
    )
    return loss.view(targets.shape) if reduction == "none" else loss


def sigmoid_classification_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 0.0,
    alpha: float = -1,
    reduction: str = "sum",
) -> Tensor:
    """Per-class sigmoid (binary) cross entropy, focal when ``gamma > 0``.

    No background column: background is the all-zeros one-hot row. With ``gamma = 0``
    and ``alpha < 0`` this is plain BCE and skips the focal-term arithmetic; otherwise it
    is :func:`torchvision.ops.sigmoid_focal_loss` (Lin et al.: ``gamma=2, alpha=0.25``).

    Args:
        logits: ``[..., C]`` per-class logits.
        targets: ``[...]`` int64, 0 background, ``k > 0`` class ``k - 1``, -1 (any
            negative) no loss.
        gamma: focusing parameter.
        alpha: positive-class weight in ``[0, 1]``; negative disables weighting.
        reduction: ``"none"`` (``[..., C]``, zeros at ignored rows), ``"sum"`` or
            ``"mean"`` (over the elements of non-ignored rows).

    Returns:
        Loss of shape ``[..., C]`` or a scalar.
    """
    num_classes = logits.shape[-1]
    classes = torch.arange(1, num_classes + 1, device=targets.device)
    one_hot = (targets.unsqueeze(-1) == classes).to(logits.dtype)  # [..., C]
    if gamma == 0 and alpha < 0:
        loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    else:
        loss = sigmoid_focal_loss(logits, one_hot, alpha=alpha, gamma=gamma, reduction="none")
    valid = targets >= 0
    loss = loss * valid.unsqueeze(-1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (valid.sum() * num_classes).clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def multibox_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    cls_targets: Tensor,
    box_targets: Tensor,
    *,
    neg_pos_ratio: float = 3.0,
    ignore_mask: Tensor | None = None,
    beta: float = 1.0,
) -> dict[str, Tensor]:
    """SSD multibox loss (Liu et al. eq. 1-3; RefineDet eq. 1 for each of ARM and ODM).

    Softmax cross entropy over positives plus the ``neg_pos_ratio`` : 1 hardest negatives
    per image, and smooth L1 over positives, each divided by the total number of
    positives ``N`` over the batch. If ``N == 0`` both losses are 0 (Liu et al.): no
    negatives are mined, and the zeros stay attached to the graph so ``backward`` works
    and gives zero gradients.

    Args:
        cls_logits: ``[B, A, C + 1]`` logits, column 0 background.
        box_deltas: ``[B, A, 4]`` predicted deltas.
        cls_targets: ``[B, A]`` int64, 0 background, ``k`` class ``k - 1``, -1 ignore.
        box_targets: ``[B, A, 4]`` encoded targets; only read at positives, so anything
            (even NaN) may sit elsewhere.
        neg_pos_ratio: negatives per positive, per image.
        ignore_mask: ``[B, A]`` bool anchors excluded from both losses, e.g. RefineDet's
            negative anchor filtering (ARM background score above 0.99).
        beta: smooth L1 switch point.

    Returns:
        ``{"loss_cls": scalar, "loss_box": scalar}``.
    """
    num_classes = cls_logits.shape[-1]
    valid = cls_targets >= 0
    if ignore_mask is not None:
        valid = valid & ~ignore_mask
    pos_mask = (cls_targets > 0) & valid  # [B, A]
    # CE for every anchor: at negatives it is the background loss that mining ranks.
    ce = F.cross_entropy(
        cls_logits.reshape(-1, num_classes),
        cls_targets.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(cls_targets.shape)  # [B, A]
    neg_mask = hard_negative_mining(ce, pos_mask, neg_pos_ratio=neg_pos_ratio, ignore_mask=~valid)
    # torch.where (not boolean indexing) keeps a dense graph and avoids a host sync.
    loss_cls = torch.where(pos_mask | neg_mask, ce, 0.0).sum()
    # Boolean indexing here so that garbage box targets off the positives never leak in.
    loss_box = smooth_l1(box_deltas[pos_mask], box_targets[pos_mask], beta=beta, reduction="sum")
    num_pos = pos_mask.sum().clamp(min=1).to(ce.dtype)
    return {"loss_cls": loss_cls / num_pos, "loss_box": loss_box / num_pos}
