"""Box coder, IoU, clipping and NMS against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from models.box_ops import BoxCoder, batched_nms_topk, box_iou, clip_boxes, multiclass_nms


def test_encode_hand_computed_delta():
    # Anchor centre (5, 10), size 10 x 20; box centre (11, 22), size 20 x 40.
    anchor = torch.tensor([0.0, 0.0, 10.0, 20.0])
    box = torch.tensor([1.0, 2.0, 21.0, 42.0])
    deltas = BoxCoder().encode(box, anchor)
    expected = torch.tensor([10 * 6 / 10, 10 * 12 / 20, 5 * math.log(2), 5 * math.log(2)])
    torch.testing.assert_close(deltas, expected)


def test_encode_decode_round_trip_and_broadcasting():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(7, 2, generator=gen) * 100
    anchors = torch.cat((xy, xy + 5 + torch.rand(7, 2, generator=gen) * 50), dim=1)  # [7, 4]
    xy = torch.rand(3, 2, generator=gen) * 100
    boxes = torch.cat((xy, xy + 5 + torch.rand(3, 2, generator=gen) * 50), dim=1)  # [3, 4]
    coder = BoxCoder()
    deltas = coder.encode(boxes[:, None, :], anchors)  # [3, 1, 4] vs [7, 4]
    assert deltas.shape == (3, 7, 4)
    decoded = coder.decode(deltas, anchors)
    torch.testing.assert_close(decoded, boxes[:, None, :].expand(3, 7, 4), rtol=1e-4, atol=1e-3)


def test_decode_clamps_dw_dh_at_bbox_xform_clip():
    coder = BoxCoder()
    anchor = torch.tensor([0.0, 0.0, 16.0, 16.0])
    deltas = torch.tensor([0.0, 0.0, 5 * 100.0, 5 * 100.0])  # exp(100) would overflow fp32
    box = coder.decode(deltas, anchor)
    assert torch.isfinite(box).all()
    # Width capped at exp(log(1000 / 16)) * 16 = 1000, centred on the anchor centre 8.
    torch.testing.assert_close(box, torch.tensor([8 - 500.0, 8 - 500.0, 8 + 500.0, 8 + 500.0]))
    # Negative dw is not clamped.
    small = coder.decode(torch.tensor([0.0, 0.0, -5 * math.log(2), 0.0]), anchor)
    torch.testing.assert_close(small[2] - small[0], torch.tensor(8.0))


def test_decode_promotes_half_deltas():
    anchors = torch.tensor([[1000.0, 1000.0, 1100.0, 1050.0]])
    out = BoxCoder().decode(torch.zeros(1, 4, dtype=torch.float16), anchors)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, anchors)


def test_box_iou_and_clip():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    clipped = clip_boxes(torch.tensor([[-5.0, -1.0, 50.0, 30.0]]), (20, 40))  # (H, W)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 40.0, 20.0]]))


def _nms_case():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: best, label 0
            [1.0, 1.0, 11.0, 11.0],  # 1: IoU 0.68 with 0, same label -> suppressed
            [1.0, 1.0, 11.0, 11.0],  # 2: same box, other label -> kept
            [50.0, 50.0, 60.0, 60.0],  # 3: below score threshold
            [30.0, 30.0, 40.0, 40.0],  # 4: separate, label 0
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.05, 0.6])
    labels = torch.tensor([0, 0, 1, 0, 0])
    return boxes, scores, labels


def test_batched_nms_topk_keeps_expected_boxes_classwise():
    boxes, scores, labels = _nms_case()
    keep = batched_nms_topk(
        boxes, scores, labels, iou_threshold=0.5, max_detections=10, score_threshold=0.1
    )
    assert keep.tolist() == [0, 2, 4]
    keep = batched_nms_topk(
        boxes, scores, labels, iou_threshold=0.5, max_detections=2, score_threshold=0.1
    )
    assert keep.tolist() == [0, 2]


def test_batched_nms_topk_applies_topk_before_nms():
    boxes, scores, labels = _nms_case()
    # Top 2 candidates are boxes 0 and 1; NMS then removes 1, so box 4 never competes.
    keep = batched_nms_topk(
        boxes, scores, labels, iou_threshold=0.5, max_detections=10, pre_nms_topk=2
    )
    assert keep.tolist() == [0]


def test_batched_nms_topk_empty():
    keep = batched_nms_topk(
        torch.zeros(0, 4),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        iou_threshold=0.5,
        max_detections=5,
    )
    assert keep.shape == (0,)


def test_multiclass_nms_shared_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.02, 0.6]])  # [A=3, C=2]
    out_boxes, out_scores, out_labels = multiclass_nms(
        boxes,
        scores,
        score_threshold=0.05,
        iou_threshold=0.5,
        pre_nms_topk=100,
        max_detections=10,
        class_agnostic_boxes=True,
    )
    # class 0: anchor 0 (0.9) suppresses anchor 1; class 1: anchors 1 (0.7), 2 (0.6) and
    # anchor 0 (0.1) suppressed by anchor 1.
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.7, 0.6]))
    assert out_labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(out_boxes, boxes[[0, 1, 2]])


def test_multiclass_nms_class_specific_boxes_and_topk():
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]],
            [[50.0, 50.0, 60.0, 60.0], [101.0, 101.0, 111.0, 111.0]],
        ]
    )  # [A=2, C=2, 4]
    scores = torch.tensor([[0.9, 0.5], [0.3, 0.4]])
    out_boxes, out_scores, out_labels = multiclass_nms(
        boxes,
        scores,
        score_threshold=0.0,
        iou_threshold=0.5,
        pre_nms_topk=None,
        max_detections=10,
        class_agnostic_boxes=False,
    )
    assert out_labels.tolist() == [0, 1, 0]  # (0,1) at 0.4 suppressed by (0,1)'s 0.5 box
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.5, 0.3]))
    torch.testing.assert_close(out_boxes, boxes[[0, 0, 1], [0, 1, 0]])
    _, top_scores, _ = multiclass_nms(
        boxes,
        scores,
        score_threshold=0.0,
        iou_threshold=0.5,
        pre_nms_topk=2,
        max_detections=1,
        class_agnostic_boxes=False,
    )
    torch.testing.assert_close(top_scores, torch.tensor([0.9]))


def test_multiclass_nms_checks_box_layout():
    with pytest.raises(ValueError):
        multiclass_nms(
            torch.zeros(3, 4),
            torch.zeros(3, 2),
            score_threshold=0.0,
            iou_threshold=0.5,
            pre_nms_topk=None,
            max_detections=5,
            class_agnostic_boxes=False,
        )
