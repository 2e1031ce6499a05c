"""COCO evaluation (benchmark/evaluate.py) against answers known by hand: the accuracy axis of
every result goes through these few lines (rescaling to original pixels, xyxy to xywh, label to
category id, COCO's -1 to null)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmark.data.dataset import DetectionDataset
from benchmark.data.records import ImageRecord, quiet_coco
from benchmark.data.transforms import build_transforms
from benchmark.evaluate import METRIC_KEYS, coco_metrics, evaluate, predict_dataset

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]  # label 0 -> 3, 1 -> 7


def _gt(boxes_xywh, image=(1, 200, 200), category_id=3):
    """A one-image ground truth with ``boxes_xywh`` (area = w * h)."""
    image_id, width, height = image
    anns = [
        {
            "id": i,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": list(b),
            "area": b[2] * b[3],
            "iscrowd": 0,
        }
        for i, b in enumerate(boxes_xywh, start=1)
    ]
    images = [{"id": image_id, "width": width, "height": height, "file_name": "x.jpg"}]
    return quiet_coco({"images": images, "annotations": anns, "categories": CATEGORIES})


def _dets(boxes_xywh, image_id=1, category_id=3, score=0.9):
    return [
        {"image_id": image_id, "category_id": category_id, "bbox": list(b), "score": score}
        for b in boxes_xywh
    ]


def test_ground_truth_as_detections_scores_one():
    boxes = [(10, 10, 100, 100), (120, 20, 70, 150)]  # both large (area > 96^2 = 9216)
    metrics, summary = coco_metrics(_gt(boxes), _dets(boxes))
    for key in ("map", "map_50", "map_75", "map_large", "mar_10", "mar_100", "mar_large"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["mar_1"] == pytest.approx(0.5)  # one detection per image finds 1 of 2
    # No small or medium object in the ground truth: COCO writes -1, the result says null.
    for key in ("map_small", "map_medium", "mar_small", "mar_medium"):
        assert metrics[key] is None, key
    assert "Average Precision" in summary


def test_shifted_box_iou_between_two_thresholds():
    # A 100 px square shifted 20 px right: intersection 80 x 100, union 120 x 100, IoU 2/3.
    # COCO's thresholds are 0.50, 0.55, ..., 0.95: matched at 0.50-0.65 (4 of 10), missed
    # from 0.70 up, so AP is 1 at four thresholds and 0 at six: map = 0.4.
    metrics, _ = coco_metrics(_gt([(10, 10, 100, 100)]), _dets([(30, 10, 100, 100)]))
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map_75"] == pytest.approx(0.0)
    assert metrics["map"] == pytest.approx(0.4)
    assert metrics["map_large"] == pytest.approx(0.4)


def test_wrong_category_is_a_miss_and_no_detections_score_zero():
    gt = _gt([(10, 10, 100, 100)])
    metrics, _ = coco_metrics(gt, _dets([(10, 10, 100, 100)], category_id=7))
    assert metrics["map"] == pytest.approx(0.0)
    assert coco_metrics(gt, []) == (dict.fromkeys(METRIC_KEYS, 0.0), "no detections")


class FixedDetector(nn.Module):
    """Returns, for every image, given boxes (in *original* pixels of a ``orig_w x orig_h``
    image) mapped into the resized input it receives, as a detector would predict them."""

    def __init__(self, boxes_xyxy, labels, orig_size):
        super().__init__()
        self.boxes = torch.tensor(boxes_xyxy, dtype=torch.float32)
        self.labels = torch.tensor(labels)
        self.orig_h, self.orig_w = orig_size

    def forward(self, images):
        out = []
        for im in images:
            h, w = im.shape[-2:]
            scale = torch.tensor([w / self.orig_w, h / self.orig_h] * 2)
            n = len(self.labels)
            out.append(
                {
                    "boxes": self.boxes * scale,
                    "scores": torch.full((n,), 0.8),
                    "labels": self.labels,
                }
            )
        return out


@pytest.fixture
def portrait(tmp_path):
    """One portrait image, 48 wide and 64 high, with a dog (category 7) at xywh 5, 10, 30, 40."""
    from PIL import Image

    path = tmp_path / "p.jpg"
    Image.new("RGB", (48, 64), (128, 128, 128)).save(path)
    gt = _gt([(5, 10, 30, 40)], image=(42, 48, 64), category_id=7)
    return str(path), gt


@pytest.mark.parametrize(
    ("resize_mode", "image_size"),
    [
        ("square", 32),  # 48x64 -> 32x32: x scaled by 2/3, y by 1/2
        ("shorter_side", 96),  # -> 96x128: both by 2
    ],
)
def test_detections_go_back_to_original_pixels(portrait, tmp_path, resize_mode, image_size):
    path, gt = portrait
    record = ImageRecord(path, 42, 48, 64)
    tf = build_transforms(train=False, resize_mode=resize_mode, image_size=image_size)
    dataset = DetectionDataset([record], tf)
    # Label 1 is category 7 (dog); x1 y1 x2 y2 = 5, 10, 35, 50 in the original image.
    model = FixedDetector([[5.0, 10.0, 35.0, 50.0]], [1], orig_size=(64, 48))
    dets = predict_dataset(model, dataset, [3, 7], torch.device("cpu"), progress=False)
    assert dets == [
        {"image_id": 42, "category_id": 7, "bbox": [5.0, 10.0, 30.0, 40.0], "score": 0.8}
    ]
    # Through evaluate(): files written, and the detection matches the ground truth exactly.
    metrics = evaluate(model, dataset, gt, [3, 7], torch.device("cpu"), tmp_path, progress=False)
    assert metrics["map"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "detections.json").read_text()) == dets
    assert "Average Precision" in (tmp_path / "coco_eval.txt").read_text()
