"""Losses against hand-computed values and a loop-based multibox reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from models.losses import (
    multibox_loss,
    sigmoid_classification_loss,
    smooth_l1,
    softmax_cross_entropy,
)


def test_smooth_l1_hand_values():
    pred = torch.zeros(2)
    target = torch.tensor([0.5, 2.0])
    # |d| < 1: 0.5 d^2 = 0.125; |d| >= 1: |d| - 0.5 = 1.5.
    torch.testing.assert_close(smooth_l1(pred, target), torch.tensor(1.625))
    torch.testing.assert_close(smooth_l1(pred, target, beta=0.0), torch.tensor(2.5))


def test_softmax_cross_entropy_shapes_and_ignore():
    logits = torch.randn(2, 5, 4)
    targets = torch.tensor([[0, 1, 3, -1, 2], [0, 0, 0, 0, 1]])
    loss = softmax_cross_entropy(logits, targets)
    assert loss.shape == (2, 5)
    assert loss[0, 3] == 0
    expected = F.cross_entropy(logits[1], targets[1], reduction="none")
    torch.testing.assert_close(loss[1], expected)


def test_sigmoid_classification_loss_one_hot_and_focal():
    logits = torch.randn(4, 3)
    targets = torch.tensor([0, 1, 3, -1])  # background, class 0, class 2, ignored
    one_hot = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    loss = sigmoid_classification_loss(logits, targets, reduction="none")
    torch.testing.assert_close(loss[:3], bce[:3])
    assert (loss[3] == 0).all()
    torch.testing.assert_close(sigmoid_classification_loss(logits, targets), bce[:3].sum())
    focal = sigmoid_classification_loss(logits, targets, gamma=2.0, alpha=0.25)
    ref = sigmoid_focal_loss(logits[:3], one_hot[:3], alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(focal, ref)


def _multibox_reference(cls_logits, box_deltas, cls_targets, box_targets, ratio=3):
    """Loop-based reference: per image top ratio*npos background-CE negatives."""
    total_cls, total_box, total_pos = 0.0, 0.0, 0
    for b in range(cls_logits.shape[0]):
        ce = F.cross_entropy(cls_logits[b], cls_targets[b].clamp(min=0), reduction="none")
        pos = cls_targets[b] > 0
        cand = (cls_targets[b] == 0).nonzero().squeeze(1).tolist()
        cand.sort(key=lambda i: -ce[i].item())
        negs = cand[: ratio * int(pos.sum())]
        total_cls += ce[pos].sum() + ce[negs].sum()
        total_box += F.smooth_l1_loss(box_deltas[b][pos], box_targets[b][pos], reduction="sum")
        total_pos += int(pos.sum())
    return total_cls / total_pos, total_box / total_pos


def test_multibox_loss_matches_reference_and_normalizes_by_batch_positives():
    gen = torch.Generator().manual_seed(0)
    cls_logits = torch.randn(2, 30, 4, generator=gen)
    box_deltas = torch.randn(2, 30, 4, generator=gen)
    box_targets = torch.randn(2, 30, 4, generator=gen)
    cls_targets = torch.zeros(2, 30, dtype=torch.long)
    cls_targets[0, [1, 7]] = torch.tensor([1, 3])
    cls_targets[1, [4]] = 2
    cls_targets[1, [10, 11]] = -1  # ignored
    box_targets[cls_targets <= 0] = float("nan")  # never read off the positives
    out = multibox_loss(cls_logits, box_deltas, cls_targets, box_targets)
    ref_cls, ref_box = _multibox_reference(cls_logits, box_deltas, cls_targets, box_targets)
    torch.testing.assert_close(out["loss_cls"], ref_cls)
    torch.testing.assert_close(out["loss_box"], ref_box)


def test_multibox_loss_ignore_mask_excludes_anchors():
    cls_logits = torch.zeros(1, 6, 3)
    cls_logits[0, 2, 1] = 10.0  # anchor 2 would be the hardest negative
    cls_targets = torch.tensor([[1, 0, 0, 0, 0, 0]])
    ignore = torch.tensor([[False, False, True, False, False, False]])
    out = multibox_loss(
        cls_logits, torch.zeros(1, 6, 4), cls_targets, torch.zeros(1, 6, 4), ignore_mask=ignore
    )
    # Uniform logits elsewhere: CE = log 3 for the positive and 3 negatives, N = 1.
    torch.testing.assert_close(out["loss_cls"], 4 * torch.log(torch.tensor(3.0)))
    assert out["loss_box"] == 0


def test_multibox_loss_zero_positives_is_zero_with_graph():
    cls_logits = torch.randn(2, 10, 3, requires_grad=True)
    box_deltas = torch.randn(2, 10, 4, requires_grad=True)
    cls_targets = torch.zeros(2, 10, dtype=torch.long)
    out = multibox_loss(cls_logits, box_deltas, cls_targets, torch.zeros(2, 10, 4))
    total = out["loss_cls"] + out["loss_box"]
    assert torch.isfinite(total) and total.item() == 0
    total.backward()
    assert cls_logits.grad is not None and (cls_logits.grad == 0).all()
    assert box_deltas.grad is not None and (box_deltas.grad == 0).all()


@pytest.mark.parametrize("ratio", [1.0, 3.0])
def test_multibox_loss_gradients_flow(ratio):
    cls_logits = torch.randn(1, 12, 3, requires_grad=True)
    box_deltas = torch.randn(1, 12, 4, requires_grad=True)
    cls_targets = torch.zeros(1, 12, dtype=torch.long)
    cls_targets[0, 0] = 1
    out = multibox_loss(
        cls_logits, box_deltas, cls_targets, torch.zeros(1, 12, 4), neg_pos_ratio=ratio
    )
    (out["loss_cls"] + out["loss_box"]).backward()
    # Only the positive and the mined negatives receive classification gradient.
    touched = (cls_logits.grad.abs().sum(-1) > 0).sum().item()
    assert touched == 1 + int(ratio)
    assert (box_deltas.grad[0, 1:] == 0).all() and (box_deltas.grad[0, 0] != 0).any()
