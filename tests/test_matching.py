"""Matchers and samplers against hand-built IoU matrices."""

from __future__ import annotations

import torch

from models.matching import (
    IGNORE,
    NEGATIVE,
    argmax_match,
    balanced_sample,
    bipartite_match,
    hard_negative_mining,
    match_batch,
    ohem_select,
)


def test_argmax_thresholds_without_low_quality():
    iou = torch.tensor(
        [
            [0.8, 0.45, 0.2, 0.1, 0.0],
            [0.1, 0.30, 0.6, 0.35, 0.0],
        ]
    )
    matches = argmax_match(iou, pos_threshold=0.5, neg_threshold=0.4, allow_low_quality=False)
    assert matches.dtype == torch.int64
    assert matches.tolist() == [0, IGNORE, 1, NEGATIVE, NEGATIVE]
    # Equal thresholds (SSD's 0.5): nothing ignored; the boundary value is positive.
    iou_edge = torch.tensor([[0.5, 0.49]])
    assert argmax_match(iou_edge, pos_threshold=0.5, neg_threshold=0.5).tolist() == [0, NEGATIVE]


def test_argmax_low_quality_gives_every_gt_its_best_anchor():
    # gt 0 overlaps at most 0.3 (anchor 0), but anchor 0's own argmax is gt 1 (0.6).
    iou = torch.tensor(
        [
            [0.3, 0.1, 0.0, 0.3],
            [0.6, 0.7, 0.0, 0.0],
        ]
    )
    plain = argmax_match(iou, pos_threshold=0.5, neg_threshold=0.4, allow_low_quality=False)
    assert plain.tolist() == [1, 1, NEGATIVE, NEGATIVE]
    low = argmax_match(iou, pos_threshold=0.5, neg_threshold=0.4, allow_low_quality=True)
    # Anchors 0 and 3 tie at gt 0's maximum: both are claimed by gt 0.
    assert low.tolist() == [0, 1, NEGATIVE, 0]


def test_argmax_zero_overlap_gt_claims_nothing():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.7, 0.2]])
    matches = argmax_match(iou, pos_threshold=0.5, neg_threshold=0.4)
    assert matches.tolist() == [NEGATIVE, 1, NEGATIVE]


def test_argmax_empty_gt_is_all_negative():
    matches = argmax_match(torch.zeros(0, 6), pos_threshold=0.5, neg_threshold=0.4)
    assert matches.tolist() == [NEGATIVE] * 6


def test_bipartite_is_greedy_and_unique():
    # Greedy takes (0, 0) = 0.9 first, so gt 1 gets anchor 1 despite its 0.85 on anchor 0.
    iou = torch.tensor([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0]])
    assert bipartite_match(iou).tolist() == [0, 1, NEGATIVE]

    gen = torch.Generator().manual_seed(0)
    iou = torch.rand(6, 40, generator=gen)
    matches = bipartite_match(iou)
    matched = matches[matches >= 0]
    assert sorted(matched.tolist()) == list(range(6))  # each gt exactly one anchor


def test_bipartite_more_gts_than_anchors_and_empty():
    iou = torch.tensor([[0.1, 0.2], [0.9, 0.3], [0.4, 0.8]])
    assert bipartite_match(iou).tolist() == [1, 2]
    assert bipartite_match(torch.zeros(0, 3)).tolist() == [NEGATIVE] * 3


def test_match_batch_shapes_and_empty_image():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]])
    gts = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(0, 4)]
    matches = match_batch(gts, anchors, pos_threshold=0.5, neg_threshold=0.4)
    assert matches.shape == (2, 3)
    assert matches.tolist() == [[0, NEGATIVE, NEGATIVE], [NEGATIVE] * 3]


def test_hard_negative_mining_three_to_one_highest_losses():
    gen = torch.Generator().manual_seed(0)
    loss = torch.rand(2, 20, generator=gen)
    pos = torch.zeros(2, 20, dtype=torch.bool)
    pos[0, [3]] = True
    pos[1, [5, 9]] = True
    loss[pos] = 100.0  # positives must never be mined even with the top loss
    neg = hard_negative_mining(loss, pos)
    assert neg.sum(dim=1).tolist() == [3, 6]
    assert not (neg & pos).any()
    for b in range(2):
        candidates = loss[b].masked_fill(pos[b], -1)
        expected = candidates.topk(int(neg[b].sum())).indices
        assert set(neg[b].nonzero().squeeze(1).tolist()) == set(expected.tolist())


def test_hard_negative_mining_limits_and_ignore():
    loss = torch.arange(6, dtype=torch.float32).flip(0).expand(2, 6).clone()  # 5, 4, ..., 0
    pos = torch.tensor([[True, False, False, False, False, False], [False] * 6])
    ignore = torch.tensor([[False, True, False, False, False, False], [False] * 6])
    neg = hard_negative_mining(loss, pos, neg_pos_ratio=3, ignore_mask=ignore)
    # Image 0: anchor 1 (loss 4) ignored, next three by loss are 2, 3, 4; image 1: none.
    assert neg.tolist() == [[False, False, True, True, True, False], [False] * 6]
    neg = hard_negative_mining(loss, pos, neg_pos_ratio=10, min_negatives=2)
    assert neg.sum(dim=1).tolist() == [5, 2]  # quota capped by the 5 candidates
    assert neg[1].tolist() == [True, True, False, False, False, False]


def _matches(num_pos, num_neg, num_ignore):
    row = [0] * num_pos + [NEGATIVE] * num_neg + [IGNORE] * num_ignore
    return torch.tensor(row)


def test_balanced_sample_counts_and_fill():
    matches = torch.stack([_matches(10, 100, 5), _matches(2, 110, 3), _matches(1, 3, 111)])
    gen = torch.Generator().manual_seed(0)
    pos, neg = balanced_sample(matches, num_samples=16, positive_fraction=0.25, generator=gen)
    assert pos.sum(dim=1).tolist() == [4, 2, 1]
    assert neg.sum(dim=1).tolist() == [12, 14, 3]  # negatives fill in; short rows take all
    assert (matches[pos] >= 0).all()
    assert (matches[neg] == NEGATIVE).all()
    assert not (pos & neg).any()


def test_balanced_sample_is_random_and_reproducible():
    matches = _matches(50, 200, 0)[None]
    a = balanced_sample(
        matches, num_samples=32, positive_fraction=0.5, generator=torch.Generator().manual_seed(1)
    )
    b = balanced_sample(
        matches, num_samples=32, positive_fraction=0.5, generator=torch.Generator().manual_seed(1)
    )
    c = balanced_sample(
        matches, num_samples=32, positive_fraction=0.5, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Positives are not just the first ones in anchor order.
    assert a[0][0, 16:50].any()


def test_ohem_select():
    losses = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2])
    assert ohem_select(losses, 2).tolist() == [False, True, False, True, False]
    assert ohem_select(losses, 10).all()
    boxes = torch.tensor(
        [[0, 0, 1, 1], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9.5], [5, 5, 6, 6]],
        dtype=torch.float32,
    )
    # NMS variant: RoI 3 (0.7) overlaps RoI 1 (0.9), so RoI 2 (0.5) comes in instead.
    mask = ohem_select(losses, 2, boxes=boxes, iou_threshold=0.7)
    assert mask.tolist() == [False, True, True, False, False]


def test_argmax_object_sharing_its_best_anchor_can_lose_it_bipartite_cannot():
    """Two objects whose best anchor is the same: Argmax (Huang et al.) gives it to the one
    with the higher IoU, and the other keeps nothing above the threshold; greedy bipartite
    matching (Liu et al.'s Caffe SSD) gives each object an anchor of its own."""
    iou = torch.tensor(
        [
            [0.6, 0.1, 0.0],  # object 0: best anchor 0
            [0.4, 0.3, 0.0],  # object 1: best anchor 0 too, below 0.5 everywhere
        ]
    )
    matches = argmax_match(iou, pos_threshold=0.5, neg_threshold=0.5)
    assert matches.tolist() == [0, NEGATIVE, NEGATIVE]  # object 1 has no positive
    assert bipartite_match(iou).tolist() == [0, 1, NEGATIVE]
