"""A realistic random COCO ground truth and detection set for the evaluation tests.

Several categories with non-contiguous ids, objects of every COCO size (small, medium,
large at 400 px), crowd boxes, images without objects, images without detections, a
category that is detected but never annotated, one image with more than 100 detections
(maxDet truncation), and detections of every quality: near-perfect, loose (IoU between
the COCO thresholds), wrong class, background.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORY_IDS = (2, 5, 9, 14)  # 14 is detected but never annotated
ANNOTATED = CATEGORY_IDS[:3]
SIZE = 400


def _box(rng: np.random.Generator) -> list[float]:
    side = float(np.exp(rng.uniform(np.log(12), np.log(220))))  # 12-220 px: all three sizes
    w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
    x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
    return [x, y, w, h]


def _jitter(box: list[float], rng: np.random.Generator, amount: float) -> list[float]:
    x, y, w, h = box
    dx, dy, dw, dh = rng.normal(0, amount, 4)
    return [x + dx * w, y + dy * h, max(1.0, w * (1 + dw)), max(1.0, h * (1 + dh))]


def random_coco(
    seed: int = 0, num_images: int = 40, score_decimals: int | None = 2, background: int = 5
) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and a detection list (results format).

    Args:
        score_decimals: round the scores (ties between detections, as when detections are
            saved with rounded scores); None keeps them unique.
        background: at most this many background detections per image.
    """
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for index in range(num_images):
        image_id = 3 * index + 1  # non-contiguous ids
        images.append({"id": image_id, "width": SIZE, "height": SIZE, "file_name": f"{index}.jpg"})
        kind = index % 10
        num_objects = 0 if kind == 0 else int(rng.integers(1, 7))  # every 10th image empty
        for _ in range(num_objects):
            box = _box(rng)
            crowd = int(rng.random() < 0.08)
            category = int(rng.choice(ANNOTATED))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": crowd,
                }
            )
            if kind == 3:  # images without any detection
                continue
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per object
                quality = rng.choice(["tight", "loose", "wrong class"], p=[0.5, 0.35, 0.15])
                amount = 0.04 if quality == "tight" else 0.18
                det_category = (
                    int(rng.choice(CATEGORY_IDS)) if quality == "wrong class" else category
                )
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": det_category,
                        "bbox": _jitter(box, rng, amount),
                        "score": float(rng.beta(5, 2) if quality == "tight" else rng.beta(2, 3)),
                    }
                )
        if kind != 3:
            num_background = (
                130 if index == 7 else int(rng.integers(0, background + 1))
            )  # >100: truncation
            for _ in range(num_background):
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": int(rng.choice(CATEGORY_IDS)),
                        "bbox": _box(rng),
                        "score": float(rng.beta(1.2, 4)),
                    }
                )
    if score_decimals is not None:
        for d in detections:
            d["score"] = round(d["score"], score_decimals)
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, detections


def coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def run_cocoeval(gt: dict, detections: list[dict]) -> COCOeval:
    """pycocotools' evaluate + accumulate + summarize, quietly."""
    coco_gt = coco_from_dict(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def replicate(gt: dict, detections: list[dict], copies: np.ndarray) -> tuple[dict, list[dict]]:
    """The dataset in which image i (in id order) appears ``copies[i]`` times, each copy a new
    image with its own ids: what a bootstrap resample with those multiplicities stands for."""
    images = sorted(gt["images"], key=lambda im: im["id"])
    stride = 1 + max(im["id"] for im in images)
    new_images, new_annotations, new_detections = [], [], []
    for image, count in zip(images, copies, strict=True):
        for c in range(int(count)):
            new_id = image["id"] + c * stride
            new_images.append({**image, "id": new_id})
            for a in gt["annotations"]:
                if a["image_id"] == image["id"]:
                    new_annotations.append(
                        {**a, "id": len(new_annotations) + 1, "image_id": new_id}
                    )
            new_detections += [
                {**d, "image_id": new_id} for d in detections if d["image_id"] == image["id"]
            ]
    dataset = {**gt, "images": new_images, "annotations": new_annotations}
    return dataset, new_detections
