"""COCO evaluation with pycocotools: all 12 standard box metrics with bootstrap confidence
intervals over the validation images (:mod:`benchmark.bootstrap`), detections saved as JSON."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from benchmark import schema
from benchmark.bootstrap import BootstrapSettings, interval_keys
from benchmark.data import build_loader
from benchmark.device import Device
from benchmark.timing_lock import NO_GATE, WorkGate

# The twelve COCOeval.stats, declared in benchmark/schema/keys.py in summarize()'s order.
METRIC_KEYS = tuple(schema.names(probe="cocoeval"))
# Every accuracy key of a result: the metrics, their intervals and the bootstrap's bookkeeping
# (benchmark.bootstrap.interval_key_names writes them; the schema declares them).
ACCURACY_KEYS = (*METRIC_KEYS, *schema.names(probe="bootstrap"))
DETECTIONS_FILE = "detections.json"


@torch.inference_mode()
def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    label_to_category_id: list[int],
    device: torch.device,
    *,
    batch_size: int = 8,
    progress: bool = True,
    gate: WorkGate = NO_GATE,
) -> list[dict]:
    """Run ``model`` over ``dataset`` and return detections in COCO results format.

    Each batch runs as a work unit of ``gate``: it never overlaps another job's measurement
    on this machine (``benchmark.timing_lock``).

    Boxes are mapped from the resized input back to original image pixels and written as
    ``[x, y, width, height]``; labels go back to the dataset's category ids.
    """
    model.eval()
    loader = build_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        pin_memory=Device(torch.device(device)).pin_memory,
    )
    cat_ids = torch.as_tensor(label_to_category_id)
    results: list[dict] = []
    for images, targets in tqdm(
        loader, desc="eval", unit="batch", disable=not progress, leave=False
    ):
        with gate.unit():
            outputs = model([im.to(device) for im in images])
        for out, t in zip(outputs, targets, strict=True):
            (oh, ow), (h, w) = t["orig_size"], t["size"]
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
            boxes = out["boxes"].float().cpu() * scale
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
            cats = cat_ids[out["labels"].cpu()]
            for box, score, cat in zip(
                xywh.tolist(), out["scores"].float().cpu().tolist(), cats.tolist(), strict=True
            ):
                results.append(
                    {
                        "image_id": int(t["image_id"]),
                        "category_id": int(cat),
                        "bbox": [round(v, 2) for v in box],
                        "score": round(score, 5),
                    }
                )
    return results


def coco_metrics(
    coco_gt: COCO,
    detections: list[dict],
    image_ids: list[int] | None = None,
    *,
    bootstrap: BootstrapSettings | None = None,
) -> tuple[dict, str]:
    """COCOeval on boxes.

    Args:
        bootstrap: when given, add the interval keys (:func:`benchmark.bootstrap.interval_keys`:
            ``<metric>_ci_low``/``_ci_high``, ``bootstrap_*``) computed from this evaluation's
            per-image matching.

    Returns:
        ``{metric: value}`` for the 12 standard metrics (None where COCOeval reports -1, e.g.
        no small objects in the ground truth), the interval keys if asked, and the printed
        summary.
    """
    if not detections:  # loadRes rejects an empty list; no detections means zero AP and AR
        metrics = {k: 0.0 for k in METRIC_KEYS}
        if bootstrap is not None:
            metrics.update(interval_keys(None, metrics, bootstrap))
        return metrics, "no detections"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # loadRes adds keys (id, area, iscrowd, a box polygon as segmentation) to the dicts
        # it is given: hand it copies, so detections.json holds the detections only.
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=float)
    metrics = {k: (None if v < 0 else float(v)) for k, v in zip(METRIC_KEYS, stats, strict=True)}
    if bootstrap is not None:
        metrics.update(interval_keys(ev, dict(metrics), bootstrap))
    return metrics, buf.getvalue()


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    coco_gt: COCO,
    label_to_category_id: list[int],
    device: torch.device,
    out_dir: Path | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    bootstrap: BootstrapSettings | None = None,
    gate: WorkGate = NO_GATE,
) -> dict:
    """Predict on ``dataset``, write ``detections.json`` (and ``coco_eval.txt``) into
    ``out_dir``, and return the 12 COCO metrics with their bootstrap intervals
    (:data:`ACCURACY_KEYS`; ``bootstrap=None`` means the default settings; ``gate``: see
    :func:`predict_dataset`)."""
    detections = predict_dataset(
        model,
        dataset,
        label_to_category_id,
        device,
        batch_size=batch_size,
        progress=progress,
        gate=gate,
    )
    metrics, summary = coco_metrics(
        coco_gt,
        detections,
        image_ids=sorted(coco_gt.getImgIds()),
        bootstrap=bootstrap or BootstrapSettings(),
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / DETECTIONS_FILE).write_text(json.dumps(detections))
        (out_dir / "coco_eval.txt").write_text(summary)
    return metrics
