"""Format-neutral split representation shared by the COCO, VOC and synthetic loaders.

Every loader parses its files into a :class:`SplitBuilder`, which validates and cleans
boxes the same way for all formats, counts what it dropped and why, and produces
(a) the per-image training records and (b) the COCO ground truth used by COCOeval.

Box convention everywhere in this module: ``xyxy`` absolute pixel coordinates in the
*original* image, continuous (a box covering pixel columns 0..9 is ``x1=0, x2=10``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO

from benchmark.data.errors import DatasetError

logger = logging.getLogger(__name__)

# Reasons a box does not reach the training targets; the keys of ``stats["dropped"]``.
DROP_DEGENERATE = "degenerate"  # zero or negative width/height as annotated
DROP_OUTSIDE = "outside_image"  # nothing left after clipping to the image
DROP_CROWD = "crowd"  # COCO iscrowd / VOC difficult: kept in val_coco as iscrowd=1 only
DROP_REASONS = (DROP_DEGENERATE, DROP_OUTSIDE, DROP_CROWD)

_MAX_EXAMPLES = 5  # file names quoted per drop reason in the warning


@dataclass
class ImageRecord:
    """One image and its training boxes, in original-image pixels.

    Attributes:
        path: Absolute path of the image file.
        image_id: Id of the image in the split's COCO ground truth.
        width: Original width in pixels.
        height: Original height in pixels.
        boxes: float32 ``[N, 4]`` xyxy boxes (clipped to the image; crowd removed).
        labels: int64 ``[N]`` contiguous labels ``0..C-1``.
    """

    path: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


def quiet_coco(dataset: dict) -> COCO:
    """Build a pycocotools ``COCO`` object from an in-memory dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class SplitBuilder:
    """Collects one split's images and boxes, validates them and counts what is dropped.

    Args:
        split: Split name for messages and stats (``"train"``, ``"val"``).
        source: The annotation file or folder the split comes from (named in messages).
        categories: COCO categories ``[{"id", "name"}]`` of the ground truth, in label order.
    """

    def __init__(self, split: str, source: str, categories: list[dict]):
        self.split = split
        self.source = source
        self.categories = categories
        self._records: dict[int, ImageRecord] = {}
        self._boxes: dict[int, list] = defaultdict(list)
        self._labels: dict[int, list] = defaultdict(list)
        self._gt_images: list[dict] = []
        self._gt_anns: list[dict] = []
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._examples: dict[str, list[str]] = defaultdict(list)
        self._clipped = 0

    def has_image(self, image_id: int) -> bool:
        """Whether ``image_id`` was added."""
        return image_id in self._records

    def add_image(self, image_id: int, path: str, width: int, height: int) -> None:
        """Register an image. Existence of the file is checked in :meth:`finish`."""
        if image_id in self._records:
            raise DatasetError(f"{self.source}: duplicate image id {image_id}")
        if width <= 0 or height <= 0:
            raise DatasetError(f"{self.source}: image {path} has size {width}x{height}")
        self._records[image_id] = ImageRecord(os.path.abspath(path), image_id, width, height)
        self._gt_images.append(
            {"id": image_id, "file_name": os.path.basename(path), "width": width, "height": height}
        )

    def add_box(
        self,
        image_id: int,
        xyxy: tuple[float, float, float, float],
        label: int,
        *,
        crowd: bool = False,
        area: float | None = None,
    ) -> None:
        """Validate one annotated box and route it to the training targets and/or val GT.

        Args:
            image_id: Id of an image already added.
            xyxy: Box as annotated, continuous pixel coordinates of the original image.
            label: Contiguous label ``0..C-1``.
            crowd: Crowd (COCO) or difficult (VOC): evaluation-only, ``iscrowd=1`` in GT.
            area: Object area for COCOeval's small/medium/large split (COCO's segment
                area); defaults to the clipped box area.
        """
        rec = self._records[image_id]
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        name = os.path.basename(rec.path)
        if not (x2 > x1 and y2 > y1):
            self._drop(DROP_DEGENERATE, name)
            return
        cx1, cy1 = min(max(x1, 0.0), rec.width), min(max(y1, 0.0), rec.height)
        cx2, cy2 = min(max(x2, 0.0), rec.width), min(max(y2, 0.0), rec.height)
        if not (cx2 > cx1 and cy2 > cy1):
            self._drop(DROP_OUTSIDE, name)
            return
        self._clipped += (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
        w, h = cx2 - cx1, cy2 - cy1
        self._gt_anns.append(
            {
                "id": len(self._gt_anns) + 1,  # COCOeval treats gt id 0 as "unmatched"
                "image_id": image_id,
                "category_id": self.categories[label]["id"],
                "bbox": [cx1, cy1, w, h],
                "area": float(area) if area and area > 0 else w * h,
                "iscrowd": int(crowd),
            }
        )
        if crowd:
            self._drop(DROP_CROWD, name)
            return
        self._boxes[image_id].append((cx1, cy1, cx2, cy2))
        self._labels[image_id].append(label)

    def _drop(self, reason: str, name: str) -> None:
        self._dropped[reason] += 1
        if len(self._examples[reason]) < _MAX_EXAMPLES and name not in self._examples[reason]:
            self._examples[reason].append(name)

    def finish(self) -> tuple[list[ImageRecord], COCO, dict]:
        """Check files, log drops, and return ``(records, ground_truth, stats)``.

        Raises:
            DatasetError: The split is empty or some image files do not exist.
        """
        if not self._records:
            raise DatasetError(f"{self.source}: the {self.split} split has no images")
        missing = [r.path for r in self._records.values() if not os.path.isfile(r.path)]
        if missing:
            shown = ", ".join(missing[:_MAX_EXAMPLES])
            raise DatasetError(
                f"{self.source}: {len(missing)} of {len(self._records)} {self.split} images "
                f"are missing: {shown}"
            )
        records = []
        for image_id, rec in self._records.items():
            if self._boxes[image_id]:
                rec.boxes = np.asarray(self._boxes[image_id], np.float32).reshape(-1, 4)
                rec.labels = np.asarray(self._labels[image_id], np.int64)
            records.append(rec)
        stats = {
            "images": len(records),
            "boxes": int(sum(len(r.labels) for r in records)),
            "negatives": int(sum(len(r.labels) == 0 for r in records)),
            "clipped": self._clipped,
            "dropped": dict(self._dropped),
        }
        self._log(stats)
        ground_truth = quiet_coco(
            {
                "info": {"description": f"detbench {self.split} ground truth from {self.source}"},
                "images": self._gt_images,
                "annotations": self._gt_anns,
                "categories": [
                    {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")}
                    for c in self.categories
                ],
            }
        )
        return records, ground_truth, stats

    def _log(self, stats: dict) -> None:
        # Crowd/difficult boxes are expected and not worth a warning; bad boxes are.
        bad = {k: v for k, v in self._dropped.items() if v and k != DROP_CROWD}
        if bad:
            detail = "; ".join(
                f"{n} {reason} (e.g. {', '.join(self._examples[reason])})"
                for reason, n in bad.items()
            )
            logger.warning("%s (%s): dropped boxes: %s", self.source, self.split, detail)
        if self._clipped:
            logger.info(
                "%s (%s): clipped %d boxes to the image", self.source, self.split, self._clipped
            )
        logger.info(
            "%s (%s): %d images, %d boxes, %d negatives, %d crowd/difficult",
            self.source,
            self.split,
            stats["images"],
            stats["boxes"],
            stats["negatives"],
            self._dropped[DROP_CROWD],
        )
