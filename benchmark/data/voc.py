"""Parse and validate a Pascal VOC folder, converting it to the COCO-style split form.

Layout: ``root/Annotations/<id>.xml``, ``root/JPEGImages/<id>.jpg``,
``root/ImageSets/Main/<split>.txt`` (one image id per line).

Coordinates: VOC ``bndbox`` values are 1-based *inclusive* pixel indices, i.e. pixel
``i`` covers the continuous interval ``[i - 1, i]``. We convert
``(xmin, ymin, xmax, ymax) -> (xmin - 1, ymin - 1, xmax, ymax)`` so a box spanning the
whole 500-pixel-wide image becomes ``x1=0, x2=500``, matching COCO's continuous convention.

``difficult`` objects are dropped from training targets and kept in the converted
ground truth with ``iscrowd=1``, so COCOeval neither rewards nor penalises them (the
VOC protocol's treatment of difficult objects). COCO category ids are ``label + 1``.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from PIL import Image

from benchmark.data.errors import DatasetError
from benchmark.data.records import SplitBuilder

logger = logging.getLogger(__name__)


@dataclass
class _VocObject:
    name: str
    xyxy: tuple[float, float, float, float]  # already converted to continuous xyxy
    difficult: bool


@dataclass
class _VocImage:
    xml: str
    path: str
    width: int
    height: int
    objects: list[_VocObject]


def default_splits(root: str, train_split: str | None, val_split: str | None) -> tuple[str, str]:
    """Resolve the split names.

    Val: ``test`` if ``ImageSets/Main/test.txt`` exists, else ``val``. Train: ``trainval``
    if it exists *and* val is ``test``, else ``train``. (VOC2012 has trainval and val but
    no test labels: training on trainval there would train on the validation images.)
    """
    main = os.path.join(root, "ImageSets", "Main")

    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(main, f"{name}.txt"))

    val = val_split or ("test" if has("test") else "val")
    train = train_split or ("trainval" if has("trainval") and val == "test" else "train")
    return train, val


def load_voc(
    root: str,
    train_split: str | None = None,
    val_split: str | None = None,
    class_names: list[str] | None = None,
):
    """Parse both splits of a VOC folder.

    Args:
        root: The VOC folder (e.g. ``VOCdevkit/VOC2007``).
        train_split: Name of the ImageSets/Main list for training (None: see
            :func:`default_splits`).
        val_split: Name of the list for validation (None: see :func:`default_splits`).
        class_names: Label order; None collects the object names of both splits, sorted.

    Returns:
        ``(splits, categories)`` where ``splits`` maps ``"train"``/``"val"`` to
        ``(records, ground_truth COCO, stats)`` and categories is ``[{"id", "name"}]``.

    Raises:
        DatasetError: Missing folders/lists/files, malformed XML, unknown class names,
            an empty split.
    """
    root = os.path.abspath(os.path.expanduser(root))
    for sub in ("", "Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        if not os.path.isdir(os.path.join(root, sub)):
            raise DatasetError(f"{os.path.join(root, sub)}: VOC folder not found")
    names = dict(zip(("train", "val"), default_splits(root, train_split, val_split), strict=True))
    parsed = {
        split: [_parse_xml(root, i) for i in _read_ids(root, name)] for split, name in names.items()
    }
    _warn_overlap(root, names, parsed)

    if class_names is None:
        class_names = sorted(
            {o.name for images in parsed.values() for im in images for o in im.objects}
        )
        if not class_names:
            raise DatasetError(f"{root}/Annotations: no objects found to collect class names from")
    class_names = [str(c) for c in class_names]
    label_of = {n: i for i, n in enumerate(class_names)}
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(class_names)]

    splits = {}
    for split, images in parsed.items():
        list_file = os.path.join(root, "ImageSets", "Main", f"{names[split]}.txt")
        builder = SplitBuilder(split, list_file, categories)
        for image_id, im in enumerate(images, start=1):
            builder.add_image(image_id, im.path, im.width, im.height)
            for o in im.objects:
                if o.name not in label_of:
                    raise DatasetError(
                        f"{im.xml}: unknown class '{o.name}' (not in data.class_names)"
                    )
                builder.add_box(image_id, o.xyxy, label_of[o.name], crowd=o.difficult)
        splits[split] = builder.finish()
    return splits, categories


def _read_ids(root: str, split_name: str) -> list[str]:
    path = os.path.join(root, "ImageSets", "Main", f"{split_name}.txt")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: split list not found")
    with open(path, encoding="utf-8") as f:
        # First token only: tolerates the "<id> <flag>" format of per-class lists.
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: split list is empty")
    return ids


def _parse_xml(root: str, image_id: str) -> _VocImage:
    xml = os.path.join(root, "Annotations", f"{image_id}.xml")
    if not os.path.isfile(xml):
        raise DatasetError(f"{xml}: annotation file not found")
    try:
        tree = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml}: malformed XML: {e}") from e

    path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
    filename = (tree.findtext("filename") or "").strip()
    if not os.path.isfile(path) and filename:
        # Some VOC-style exports use another extension; the XML names the real file.
        path = os.path.join(root, "JPEGImages", filename)
    if not os.path.isfile(path):
        raise DatasetError(f"{xml}: image {path} is missing")

    try:
        width = int(float(tree.findtext("size/width") or 0))
        height = int(float(tree.findtext("size/height") or 0))
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise ValueError("object without <bndbox>")
            xmin, ymin, xmax, ymax = (
                float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            objects.append(
                _VocObject(
                    name=(obj.findtext("name") or "").strip(),
                    xyxy=(xmin - 1.0, ymin - 1.0, xmax, ymax),  # 1-based inclusive -> continuous
                    difficult=bool(int(float(obj.findtext("difficult") or 0))),
                )
            )
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{xml}: malformed annotation: {e}") from e
    if width <= 0 or height <= 0:
        # Some VOC-style exports leave <size> empty: read it from the image header.
        try:
            with Image.open(path) as im:
                width, height = im.size
        except OSError as e:
            raise DatasetError(f"{path}: unreadable image: {e}") from e
    return _VocImage(xml, path, width, height, objects)


def _warn_overlap(root: str, names: dict, parsed: dict) -> None:
    overlap = {im.path for im in parsed["train"]} & {im.path for im in parsed["val"]}
    if overlap:
        logger.warning(
            "%s: splits %s and %s share %d images (e.g. %s)",
            root,
            names["train"],
            names["val"],
            len(overlap),
            os.path.basename(next(iter(overlap))),
        )
