"""Split-level checks that decide whether a dataset can give a meaningful number at all.

Run by :func:`benchmark.data.build_data` on the parsed splits, before any training:

* :func:`count_resize_drops`: training boxes the model's resize shrinks below
  ``SanitizeBoundingBoxes``' 1 px (the transform then drops them) are counted in
  ``stats["dropped"]["degenerate_after_resize"]`` and taken off ``stats["boxes"]``; so are
  validation boxes, which stay in the COCO ground truth at original resolution (see below)
  and are also reported in ``data_warnings``.
* :func:`check_trainable`: a training split without one trainable box is an error, not a
  job that "trains" to a zero loss.
* :func:`check_val_boxes`: a validation split without one non-crowd box is an error: COCOeval
  has nothing to match and every mAP would be undefined (null).
* :func:`val_only_classes`: a class with validation boxes but no training box is a warning
  (``data_warnings`` in result.json, shown in the report): its AP is 0 and pulls ``map``
  down, which a user may intend (e.g. a subset with rare classes) but must see.

Ground truth of tiny boxes: the COCO ground truth used for evaluation is the annotation at the
*original* resolution, whatever the model's input size. A validation box smaller than 1 px at
the input stays in it and counts as a miss when the detector does not find it: the detector's
resolution is part of what is measured (Huang et al. 2017, section 4.2: small objects suffer
at low resolution), and removing those boxes would make a low resolution look better.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from benchmark.data.errors import DatasetError
from benchmark.data.records import ImageRecord

DROP_RESIZE = "degenerate_after_resize"  # below 1 px at the model's input size
_MIN_SIZE = 1.0  # v2.SanitizeBoundingBoxes' defaults (min_size and min_area)


def _keep_after_resize(
    groups: dict[tuple[int, int], list], resize: v2.Transform
) -> dict[tuple[int, int], torch.Tensor]:
    """Per original ``(h, w)``: a keep mask of the boxes after ``resize``, as the transform
    pipeline's ``SanitizeBoundingBoxes`` computes it."""
    keep = {}
    for (h, w), boxes in groups.items():
        bb = tv_tensors.BoundingBoxes(
            torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(h, w),
        )
        out = resize(bb)  # the same Resize object and size arithmetic the images go through
        _, valid = F.sanitize_bounding_boxes(
            out.as_subclass(torch.Tensor),
            format=out.format,
            canvas_size=out.canvas_size,
            min_size=_MIN_SIZE,
            min_area=_MIN_SIZE,
        )
        keep[(h, w)] = valid
    return keep


def count_resize_drops(
    records: Sequence[ImageRecord], resize: v2.Transform
) -> tuple[int, int, list[str]]:
    """Training targets the (deterministic) resize makes degenerate.

    Random augmentation (zoom out, IoU crop) may shrink or enlarge boxes further per sample;
    this counts what the plain resize alone does, the same for every epoch.

    Args:
        records: Images with their target boxes (xyxy, original pixels).
        resize: The pipeline's resize step (:func:`benchmark.data.transforms.resize_transform`).

    Returns:
        ``(boxes dropped, images left without a box by it, up to 5 example file names)``.
    """
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for rec in records:
        groups[(rec.height, rec.width)].extend(rec.boxes.tolist())
    keep = _keep_after_resize(groups, resize)
    offset: dict[tuple[int, int], int] = defaultdict(int)
    dropped, emptied, examples = 0, 0, []
    for rec in records:
        key, n = (rec.height, rec.width), len(rec.boxes)
        kept = int(keep[key][offset[key] : offset[key] + n].sum()) if n else 0
        offset[key] += n
        if kept < n:
            dropped += n - kept
            emptied += kept == 0
            if len(examples) < 5:
                examples.append(os.path.basename(rec.path))
    return dropped, emptied, examples


def check_trainable(stats: dict, source: str) -> None:
    """Raise unless the training split keeps at least one box the model can learn from.

    Args:
        stats: The training split's stats (``boxes`` already net of resize drops).
        source: The training annotation file or list (named in the message).
    """
    if stats["boxes"] > 0:
        return
    dropped = ", ".join(f"{n} {reason}" for reason, n in stats["dropped"].items() if n)
    raise DatasetError(
        f"{source}: the train split has no trainable box ({stats['images']} images; dropped: "
        f"{dropped or 'none, there are no boxes'}): training would have nothing to learn"
    )


def check_val_boxes(coco: COCO, stats: dict, source: str) -> None:
    """Raise unless the validation ground truth holds at least one non-crowd box."""
    if any(not a.get("iscrowd") for a in coco.dataset["annotations"]):
        return
    crowd = len(coco.dataset["annotations"])
    raise DatasetError(
        f"{source}: the val split has no box to evaluate against ({stats['images']} images, "
        f"{crowd} crowd/difficult boxes, which COCOeval ignores): every mAP would be undefined"
    )


def val_only_classes(
    train_records: Sequence[ImageRecord], val_coco: COCO, categories: list[dict], source: str
) -> list[str]:
    """A warning per class that has validation boxes but no training box.

    Args:
        train_records: Training images (labels = contiguous class index).
        val_coco: Validation ground truth.
        categories: ``[{"id", "name"}]`` in label order.
        source: The validation annotation file or list (named in the warning).
    """
    trained = {int(label) for rec in train_records for label in rec.labels}
    val_counts: dict[int, int] = defaultdict(int)
    for ann in val_coco.dataset["annotations"]:
        if not ann.get("iscrowd"):
            val_counts[ann["category_id"]] += 1
    warnings = []
    for label, cat in enumerate(categories):
        if label not in trained and val_counts.get(cat["id"]):
            warnings.append(
                f"class '{cat['name']}' has {val_counts[cat['id']]} val boxes but no training "
                f"box ({source}): the detector cannot learn it, and its AP of 0 is averaged "
                "into map"
            )
    return warnings
