"""Anchor generators: counts, hand-checked boxes, ordering and caching."""

from __future__ import annotations

import math

import pytest
import torch

from models.anchors import grid_anchors, refinedet_anchors, ssd_default_boxes, ssd_scales

SSD300 = dict(
    feature_sizes=[38, 19, 10, 5, 3, 1],
    image_size=(300, 300),
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
)
SSD300_CAFFE = dict(
    min_sizes=[30, 60, 111, 162, 213, 264],
    max_sizes=[60, 111, 162, 213, 264, 315],
    steps=[8, 16, 32, 64, 100, 300],
)
SSD512 = dict(
    feature_sizes=[64, 32, 16, 8, 4, 2, 1],
    image_size=(512, 512),
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
)


def test_ssd_scales():
    assert ssd_scales(6) == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    assert ssd_scales(6, extra_scale=None)[-1] == pytest.approx(1.1)
    assert ssd_scales(1) == pytest.approx([0.2, 1.0])


def test_ssd_box_counts():
    assert ssd_default_boxes(**SSD300).shape == (8732, 4)
    assert ssd_default_boxes(**SSD300, **SSD300_CAFFE).shape == (8732, 4)
    boxes = ssd_default_boxes(**SSD512)
    assert boxes.shape == (24564, 4)
    assert boxes.dtype == torch.float32


def test_ssd300_first_boxes_hand_checked():
    boxes = ssd_default_boxes(**SSD300, **SSD300_CAFFE, clip=False)
    c = 4.0  # first centre: (0 + 0.5) * step 8
    big = math.sqrt(30 * 60) / 2
    w2, h2 = 30 * math.sqrt(2) / 2, 30 / math.sqrt(2) / 2
    expected = torch.tensor(
        [
            [c - 15, c - 15, c + 15, c + 15],  # size 30, ratio 1
            [c - big, c - big, c + big, c + big],  # sqrt(30 * 60), ratio 1
            [c - w2, c - h2, c + w2, c + h2],  # ratio 2 (wide)
            [c - h2, c - w2, c + h2, c + w2],  # ratio 1/2 (tall)
            [12 - 15, c - 15, 12 + 15, c + 15],  # next x: centre (12, 4)
        ]
    )
    torch.testing.assert_close(boxes[:5], expected)
    clipped = ssd_default_boxes(**SSD300, **SSD300_CAFFE)
    torch.testing.assert_close(clipped[:5], expected.clamp(0, 300))
    # Last box: 1x1 layer, centre 150, ratio 1/2 of size 264.
    w, h = 264 / math.sqrt(2), 264 * math.sqrt(2)
    torch.testing.assert_close(
        boxes[-1], torch.tensor([150 - w / 2, 150 - h / 2, 150 + w / 2, 150 + h / 2])
    )


def test_ssd_relative_scales_on_non_square_image():
    boxes = ssd_default_boxes([(1, 1)], (200, 400), aspect_ratios=[[]], scales=[0.5, 0.5])
    # Scale 0.5 of a 200 x 400 (H x W) image is 200 wide, 100 high, centred at (200, 100).
    torch.testing.assert_close(boxes, torch.tensor([[100.0, 50.0, 300.0, 150.0]] * 2))


def test_ssd_order_matches_head_reshape():
    # 2 layers; check index = offset_layer + (y * W + x) * K + k for layer 1.
    boxes = ssd_default_boxes([(4, 6), (2, 3)], (40, 60), aspect_ratios=[[2], [2, 3]], clip=False)
    k_per_loc = 6
    start = 4 * 6 * 4
    y, x = 1, 2
    idx = start + (y * 3 + x) * k_per_loc
    centres = (boxes[idx : idx + k_per_loc, :2] + boxes[idx : idx + k_per_loc, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[50.0, 30.0]]).expand(k_per_loc, 2))


def test_ssd_rejects_ratios_below_one():
    with pytest.raises(ValueError):
        ssd_default_boxes([2], (64, 64), aspect_ratios=[[0.5, 2]])


def test_anchors_are_cached():
    a = ssd_default_boxes(**SSD300)
    assert ssd_default_boxes(**SSD300) is a
    g = grid_anchors((3, 4), 16, scales=[32], aspect_ratios=[1.0])
    assert grid_anchors((3, 4), 16, scales=[32], aspect_ratios=[1.0]) is g


def test_grid_anchors_count_centres_and_order():
    scales, ratios = [0.25, 0.5, 1.0, 2.0], [0.5, 1.0, 2.0]
    anchors = grid_anchors((5, 7), 16, scales=scales, aspect_ratios=ratios, base_size=256)
    assert anchors.shape == (5 * 7 * 12, 4)
    per_loc = anchors.view(5, 7, 12, 4)
    centres = (per_loc[..., :2] + per_loc[..., 2:]) / 2
    # Offset 0: centre of cell (y, x) at (16 x, 16 y).
    torch.testing.assert_close(centres[2, 3], torch.tensor([[48.0, 32.0]]).expand(12, 2))
    wh = per_loc[0, 0, :, 2:] - per_loc[0, 0, :, :2]
    # Ratio-major, scale fastest: anchor 1 is ratio 0.5 (tall), size 128.
    torch.testing.assert_close(wh[1], torch.tensor([128 * math.sqrt(0.5), 128 / math.sqrt(0.5)]))
    torch.testing.assert_close(wh[4 + 3], torch.tensor([512.0, 512.0]))  # ratio 1, size 512
    torch.testing.assert_close(wh.prod(dim=1), (torch.tensor(scales) * 256).pow(2).repeat(3))


def test_grid_anchors_pixel_scales_and_offset():
    anchors = grid_anchors((2, 3), (8, 16), scales=[32], aspect_ratios=[1.0], offset=0.5)
    assert anchors.shape == (6, 4)
    torch.testing.assert_close(anchors[4], torch.tensor([24 - 16, 12 - 16, 24 + 16, 12 + 16.0]))


def test_refinedet_anchors():
    anchors = refinedet_anchors([40, 20, 10, 5], (320, 320), [8, 16, 32, 64])
    assert anchors.shape == (6375, 4)  # RefineDet320's #Boxes
    # First location: centre (4, 4), size 32, ratios 0.5, 1, 2 in that order.
    r = math.sqrt(2)
    expected = torch.tensor(
        [
            [4 - 16 / r, 4 - 16 * r, 4 + 16 / r, 4 + 16 * r],
            [4 - 16, 4 - 16, 4 + 16, 4 + 16],
            [4 - 16 * r, 4 - 16 / r, 4 + 16 * r, 4 + 16 / r],
        ]
    )
    torch.testing.assert_close(anchors[:3], expected)
    last_level = anchors[-3:]
    torch.testing.assert_close(
        last_level[1], torch.tensor([288 - 128, 288 - 128, 288 + 128, 288 + 128.0])
    )
