"""RPN head layout, RPN target assignment / sampling / loss, proposal generation, RoI sampling."""

import math

import pytest
import torch
from torchvision.ops import box_iou

from models.anchors import grid_anchors
from models.box_ops import BoxCoder
from models.heads.proposals import (
    Proposals,
    generate_proposals,
    pad_targets,
    sample_rois,
    to_rois,
    top_proposals,
)
from models.heads.rpn import RPNHead, rpn_loss

CODER = BoxCoder()


def _anchors(size=(8, 8), stride=16):
    return grid_anchors(size, stride, scales=(16.0, 32.0, 64.0), aspect_ratios=(0.5, 1.0, 2.0))


def test_rpn_head_output_order_matches_grid_anchors():
    """Logit ``(y, x, a)`` must land at anchor index ``(y * W + x) * K + a``."""
    head = RPNHead(4, num_anchors=3, channels=4)
    with torch.no_grad():  # make conv an identity-ish map and cls read channel a from input
        head.conv.weight.zero_()
        head.conv.bias.zero_()
        head.conv.weight[:, :, 1, 1] = torch.eye(4)
        head.cls.weight.zero_()
        head.cls.weight[:, :3, 0, 0] = torch.eye(3)
    x = torch.rand(2, 4, 5, 6)
    with torch.no_grad():
        logits, deltas = head(x)
    assert logits.shape == (2, 5 * 6 * 3) and deltas.shape == (2, 5 * 6 * 3, 4)
    y, xx, a = 3, 4, 2
    assert logits[1, (y * 6 + xx) * 3 + a] == pytest.approx(float(x[1, a, y, xx]))


def _gt():
    anchors = _anchors()
    gt = [anchors[100:101].clone() + 1.0, torch.zeros((0, 4))]  # image 1 has no objects
    labels = [torch.tensor([2]), torch.zeros((0,), dtype=torch.int64)]
    return anchors, gt, pad_targets(gt, labels)


def test_rpn_loss_neutral_prediction_and_sample_size():
    anchors, gt, padded = _gt()
    a = anchors.shape[0]
    logits, deltas = torch.zeros(2, a), torch.zeros(2, a, 4)
    loss_cls, loss_box = rpn_loss(logits, deltas, anchors, gt, padded, coder=CODER, batch_size=64)
    # Every sampled anchor costs log 2 at logit 0, whatever the sample size.
    assert float(loss_cls) == pytest.approx(math.log(2), rel=1e-5)
    assert float(loss_box) > 0


def test_rpn_loss_perfect_prediction_is_zero():
    """Targets: IoU >= 0.7 positive (plus the best anchor), < 0.3 negative, else ignored."""
    anchors, gt, padded = _gt()
    iou = box_iou(gt[0], anchors)[0]
    pos = (iou >= 0.7) | (iou == iou.max())
    neg = iou < 0.3
    assert pos.sum() >= 1
    logits = torch.full((2, anchors.shape[0]), -30.0)
    logits[0, pos] = 30.0
    logits[0, ~pos & ~neg] = 0.0  # ignored anchors: anything goes, the loss must not see them
    deltas = torch.zeros(2, anchors.shape[0], 4)
    deltas[0, pos] = CODER.encode(gt[0].expand(int(pos.sum()), 4), anchors[pos])
    loss_cls, loss_box = rpn_loss(logits, deltas, anchors, gt, padded, coder=CODER)
    assert float(loss_cls) < 1e-6 and float(loss_box) < 1e-6


def test_rpn_sampling_respects_batch_size_and_fraction():
    anchors = _anchors()
    gt = [anchors[::7][:40].clone()]  # many objects: more positives than the quota
    padded = pad_targets(gt, [torch.zeros(len(gt[0]), dtype=torch.int64)])
    logits = torch.zeros(1, anchors.shape[0], requires_grad=True)
    loss_cls, _ = rpn_loss(
        logits,
        torch.zeros(1, anchors.shape[0], 4),
        anchors,
        gt,
        padded,
        coder=CODER,
        batch_size=32,
        positive_fraction=0.25,
    )
    loss_cls.backward()
    grad = logits.grad[0]
    # d(BCE)/dlogit at 0 is (0.5 - target) / n: -0.5/n on sampled positives, +0.5/n on negatives.
    assert int((grad < 0).sum()) == 8 and int((grad > 0).sum()) == 24


def test_generate_proposals_nms_topk_clipping_and_batching():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 20.0, 20.0],
            [1.0, 1.0, 21.0, 21.0],
            [40.0, 40.0, 60.0, 60.0],
            [90.0, 90.0, 140.0, 140.0],
            [30.0, 0.0, 50.0, 20.0],
        ]
    )
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    deltas = torch.zeros(2, 5, 4)
    p = generate_proposals(
        logits,
        deltas,
        anchors,
        (100, 120),
        coder=CODER,
        pre_nms_topk=10,
        nms_threshold=0.7,
        num_proposals=3,
    )
    assert p.boxes.shape == (2, 3, 4) and p.valid.all()
    # Anchor 1 overlaps anchor 0 at IoU 0.82: suppressed; top-3 of the rest, by score.
    expected = torch.tensor(
        [[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0], [90.0, 90.0, 120.0, 100.0]]
    )
    assert torch.equal(p.boxes[0], expected)  # the last one clipped to (H, W) = (100, 120)
    assert torch.equal(p.boxes[1], expected)  # NMS does not act across images
    assert torch.allclose(p.scores[0], torch.sigmoid(torch.tensor([5.0, 3.0, 2.0])))
    # pre_nms_topk bounds the candidates: only the two best, one of which is suppressed.
    p = generate_proposals(
        logits,
        deltas,
        anchors,
        (100, 120),
        coder=CODER,
        pre_nms_topk=2,
        nms_threshold=0.7,
        num_proposals=3,
    )
    assert p.valid.sum(1).tolist() == [1, 1] and not p.boxes[:, 1:].any()
    rois = to_rois(p.boxes, p.valid)
    assert rois.tolist() == [[0.0, 0.0, 0.0, 20.0, 20.0], [1.0, 0.0, 0.0, 20.0, 20.0]]


def test_generate_proposals_drops_degenerate_boxes():
    anchors = torch.tensor(
        [[200.0, 200.0, 220.0, 220.0], [0.0, 0.0, 10.0, 10.0]]
    )  # first is off-image
    p = generate_proposals(
        torch.tensor([[9.0, 1.0]]),
        torch.zeros(1, 2, 4),
        anchors,
        (64, 64),
        coder=CODER,
        pre_nms_topk=10,
        nms_threshold=0.7,
        num_proposals=5,
    )
    assert p.valid.sum() == 1 and torch.equal(p.boxes[0, 0], anchors[1])


def test_top_proposals_exact_count_without_nms():
    anchors = _anchors((2, 2))  # 36 anchors, many overlapping
    logits = torch.randn(2, anchors.shape[0])
    p = top_proposals(
        logits,
        torch.zeros(2, anchors.shape[0], 4),
        anchors,
        (32, 32),
        coder=CODER,
        num_proposals=50,
    )  # more than there are anchors: repeated
    assert p.boxes.shape == (2, 50, 4) and p.valid.all()
    assert torch.equal(p.boxes[:, 36:], p.boxes[:, :14])  # the ranked list starts over
    assert (p.scores[:, :35] >= p.scores[:, 1:36]).all()
    assert to_rois(p.boxes, p.valid).shape == (100, 5)


def _proposals_around(box, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    jitter = (torch.rand(n, 4, generator=g) - 0.5) * 40
    boxes = (box + jitter).clamp(min=0)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    return boxes


def test_sample_rois_counts_labels_and_targets():
    gt_box = torch.tensor([[30.0, 30.0, 70.0, 80.0]])
    props = torch.stack([_proposals_around(gt_box[0]), _proposals_around(gt_box[0], seed=1)])
    proposals = Proposals(props, torch.ones(2, 40), torch.ones(2, 40, dtype=torch.bool))
    gt = pad_targets(
        [gt_box, torch.zeros((0, 4))], [torch.tensor([3]), torch.zeros(0, dtype=torch.int64)]
    )
    s = sample_rois(proposals, gt, coder=CODER, num_samples=16, positive_fraction=0.25)
    img = s.rois[:, 0].long()
    assert torch.equal(img, img.sort().values)  # grouped by image
    pos = s.labels > 0
    assert int((img == 0).sum()) == 16 and int((img == 1).sum()) == 16
    assert int(pos[img == 0].sum()) == 4 and not pos[img == 1].any()  # 25%; no objects in image 1
    assert set(s.labels[pos].tolist()) == {4}  # class 3 -> label 4 (background is 0)
    # Positives overlap the object at IoU >= 0.5 and their targets decode back to it.
    assert (box_iou(s.rois[pos, 1:], gt_box) >= 0.5).all()
    decoded = CODER.decode(s.box_targets[pos], s.rois[pos, 1:])
    assert torch.allclose(decoded, gt_box.expand_as(decoded), atol=1e-3)
    assert not s.box_targets[~pos].any()


def test_sample_rois_adds_ground_truth_and_keeps_all_without_quota():
    far = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(5, 1)  # no proposal touches the object
    proposals = Proposals(
        far[None], torch.ones(1, 5), torch.tensor([[True, True, True, False, False]])
    )
    gt = pad_targets([torch.tensor([[50.0, 50.0, 90.0, 90.0]])], [torch.tensor([0])])
    s = sample_rois(proposals, gt, coder=CODER, num_samples=None, add_gt=True)
    assert len(s.labels) == 4  # 3 valid proposals + the ground truth, padding excluded
    assert s.labels.tolist() == [0, 0, 0, 1]
    s = sample_rois(proposals, gt, coder=CODER, num_samples=None, add_gt=False)
    assert s.labels.tolist() == [0, 0, 0]
