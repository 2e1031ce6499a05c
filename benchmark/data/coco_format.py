"""Parse and validate a COCO-format split (``instances_*.json`` + image folder).

COCO boxes are ``[x, y, w, h]`` in continuous pixel coordinates (top-left corner),
converted here to xyxy. Category ids may be non-contiguous: labels are assigned in
ascending category-id order, so label ``i`` is the ``i``-th smallest id.
"""

from __future__ import annotations

import json
import os
from numbers import Real

from PIL import Image

from benchmark.data.errors import DatasetError
from benchmark.data.records import ImageRecord, SplitBuilder

_REQUIRED_KEYS = ("images", "annotations", "categories")


def read_json(path: str) -> dict:
    """Load a COCO annotation file, turning every failure into a DatasetError."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read annotation file: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in _REQUIRED_KEYS:
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or invalid '{key}' list")
    return data


def parse_categories(path: str, data: dict) -> list[dict]:
    """Categories sorted by id (= label order), validated.

    Returns:
        ``[{"id": int, "name": str, "supercategory": str}]``, index = contiguous label.
    """
    cats = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DatasetError(f"{path}: category #{i} needs an integer 'id' and a 'name': {c!r}")
        cats.append(
            {"id": c["id"], "name": str(c["name"]), "supercategory": c.get("supercategory", "")}
        )
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: duplicate category ids")
    if not cats:
        raise DatasetError(f"{path}: no categories")
    return sorted(cats, key=lambda c: c["id"])


def load_coco_split(
    split: str, images_dir: str, annotations: str, categories: list[dict] | None = None
) -> tuple[list[ImageRecord], object, dict, list[dict]]:
    """Parse, validate and clean one COCO-format split.

    Args:
        split: ``"train"`` or ``"val"`` (for messages and stats).
        images_dir: Folder that ``file_name`` entries are relative to.
        annotations: Path of the COCO ``instances`` JSON.
        categories: Categories of an already-loaded split; this split must use the same
            category ids so labels mean the same thing in train and val.

    Returns:
        ``(records, ground_truth COCO, stats, categories)``.

    Raises:
        DatasetError: Missing folder/file/images, malformed JSON, unknown ids, empty split.
    """
    images_dir = os.path.abspath(os.path.expanduser(images_dir))
    annotations = os.path.abspath(os.path.expanduser(annotations))
    if not os.path.isdir(images_dir):
        raise DatasetError(f"{images_dir}: image folder not found ({split} split)")
    data = read_json(annotations)
    cats = parse_categories(annotations, data)
    if categories is not None and [c["id"] for c in cats] != [c["id"] for c in categories]:
        raise DatasetError(
            f"{annotations}: category ids {[c['id'] for c in cats]} differ from the train "
            f"split's {[c['id'] for c in categories]}"
        )
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    builder = SplitBuilder(split, annotations, cats)

    for i, img in enumerate(data["images"]):
        try:
            image_id, file_name = img["id"], img["file_name"]
            if not isinstance(image_id, int):
                raise TypeError(f"image id must be an integer, got {image_id!r}")
            path = os.path.join(images_dir, file_name)
            if "width" in img and "height" in img:
                width, height = int(img["width"]), int(img["height"])
            else:
                width, height = _size_from_header(annotations, path)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{annotations}: malformed image entry #{i}: {e!r}") from e
        builder.add_image(image_id, path, width, height)

    for i, ann in enumerate(data["annotations"]):
        try:
            image_id, category_id, bbox = ann["image_id"], ann["category_id"], ann["bbox"]
            if len(bbox) != 4 or not all(isinstance(v, Real) for v in bbox):
                raise ValueError(f"bbox must be 4 numbers, got {bbox!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{annotations}: malformed annotation #{i}: {e!r}") from e
        if category_id not in label_of:
            raise DatasetError(
                f"{annotations}: annotation #{i} has unknown category id {category_id} "
                f"(known: {sorted(label_of)})"
            )
        if not builder.has_image(image_id):
            raise DatasetError(
                f"{annotations}: annotation #{i} refers to unknown image id {image_id}"
            )
        x, y, w, h = bbox
        # "ignore" is the flag some COCO-style exports (e.g. CrowdHuman) use for the same idea.
        crowd = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
        builder.add_box(
            image_id, (x, y, x + w, y + h), label_of[category_id], crowd=crowd, area=ann.get("area")
        )

    records, ground_truth, stats = builder.finish()
    return records, ground_truth, stats, cats


def _size_from_header(source: str, path: str) -> tuple[int, int]:
    """``(width, height)`` read from the image header (PIL opens lazily: no decode)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as e:
        raise DatasetError(f"{source}: image {path} is missing") from e
    except OSError as e:
        raise DatasetError(f"{path}: unreadable image: {e}") from e
