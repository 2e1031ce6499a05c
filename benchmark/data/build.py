"""``build_data``: from the ``data`` config node to validated datasets and COCO ground truth."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from benchmark.data import checks
from benchmark.data.coco_format import load_coco_split
from benchmark.data.dataset import DetectionDataset
from benchmark.data.errors import DatasetError
from benchmark.data.image_check import check_images
from benchmark.data.synthetic import SyntheticParams, ensure_synthetic
from benchmark.data.transforms import build_transforms, resize_transform
from benchmark.data.voc import default_splits, load_voc

DATASETS = ("synthetic", "coco", "voc")
log = logging.getLogger(__name__)


@dataclass
class DetectionData:
    """Everything a job needs from the data side.

    Attributes:
        train: Dataset of ``(image, target)`` with training transforms (see
            :class:`benchmark.data.dataset.DetectionDataset` for the item format).
        val: Same with eval transforms (resize only).
        class_names: ``class_names[i]`` is the name of contiguous label ``i``.
        val_coco: COCO ground truth of ``val`` for COCOeval, in original-image pixels;
            crowd (COCO) and difficult (VOC) objects are in it with ``iscrowd=1``.
        label_to_category_id: Contiguous label -> category id of ``val_coco``.
        name: ``"synthetic"``, ``"coco"`` or ``"voc"``.
        stats: ``{"train": counts, "val": counts}`` with counts ``images``, ``boxes``
            (target boxes kept), ``negatives`` (images without boxes), ``clipped``
            and ``dropped`` (``{"degenerate", "outside_image", "crowd",
            "degenerate_after_resize"}``: not in targets; in the val split, crowd and
            ``degenerate_after_resize`` boxes stay in ``val_coco``, see
            :mod:`benchmark.data.checks`).
        warnings: Problems that leave the numbers valid but worth a look (a class with
            validation boxes only, validation boxes below 1 px at the input size); the job
            records them as ``data_warnings``.
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    val_coco: COCO
    label_to_category_id: list[int]
    name: str
    stats: dict
    warnings: list[str] = field(default_factory=list)


def build_data(
    cfg_data: Any,
    *,
    resize_mode: str,
    image_size: int,
    max_size: int | None = None,
    augment: bool = False,
    cache_dir: str | None = None,
    progress: bool = True,
) -> DetectionData:
    """Parse and validate a dataset up front and wrap it in transformed datasets.

    Validation, all before the first training step: the annotations (parsed by the
    format's loader), every image file (decoded, size and mode checked, cached:
    :mod:`benchmark.data.image_check`), and the splits as a whole (a trainable box, a box
    to evaluate against, classes without training boxes: :mod:`benchmark.data.checks`).

    Args:
        cfg_data: The ``data`` config node (DictConfig or dict). ``name`` selects the
            format; the dataset-specific keys are read from it (see ``sweeps/data/*.yaml``).
        resize_mode: ``"square"`` (single-shot family) or ``"shorter_side"`` (two-stage).
        image_size: ``M``: square side, or shorter side.
        max_size: Longer-side cap for ``shorter_side`` (None: ``round(1024/600*M)``).
        augment: SSD augmentation on the training split.
        cache_dir: Base folder for generated data (synthetic), below ``data.root``, and
            for the image-check cache (None: ``$DETBENCH_CACHE`` or ``~/.cache/detbench``).
        progress: Show a progress bar while images are checked.

    Returns:
        The :class:`DetectionData`.

    Raises:
        DatasetError: The dataset cannot be used; the message names the file and problem.
        ValueError: Unknown ``name`` or ``resize_mode``.
    """
    cfg = _to_dict(cfg_data)
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"data.name must be one of {DATASETS}, got {name!r}")
    # Built first so a bad resize setting fails before any parsing or generation.
    train_tf = build_transforms(
        train=True,
        resize_mode=resize_mode,
        image_size=image_size,
        max_size=max_size,
        augment=augment,
    )
    val_tf = build_transforms(
        train=False, resize_mode=resize_mode, image_size=image_size, max_size=max_size
    )

    if name == "voc":
        splits, categories = load_voc(
            _required(cfg, "root"),
            cfg.get("train_split"),
            cfg.get("val_split"),
            cfg.get("class_names"),
        )
        (train_records, _, train_stats), (val_records, val_coco, val_stats) = (
            splits["train"],
            splits["val"],
        )
        lists = default_splits(_required(cfg, "root"), cfg.get("train_split"), cfg.get("val_split"))
        sources = [
            os.path.join(_required(cfg, "root"), "ImageSets", "Main", f"{n}.txt") for n in lists
        ]
    else:
        if name == "synthetic":
            paths = ensure_synthetic(SyntheticParams.from_config(cfg), cfg.get("root"), cache_dir)
        else:
            paths = {
                k: _required(cfg, k)
                for k in ("train_images", "train_annotations", "val_images", "val_annotations")
            }
        train_records, _, train_stats, categories = load_coco_split(
            "train", paths["train_images"], paths["train_annotations"]
        )
        val_records, val_coco, val_stats, _ = load_coco_split(
            "val", paths["val_images"], paths["val_annotations"], categories
        )
        sources = [paths["train_annotations"], paths["val_annotations"]]

    train_source, val_source = (os.path.abspath(os.path.expanduser(s)) for s in sources)
    warnings = _check_splits(
        (train_records, train_stats, train_source),
        (val_records, val_stats, val_source),
        val_coco,
        categories,
        resize_transform(resize_mode, image_size, max_size),
    )
    # The costliest check last: every image decoded (or found in the cache).
    for split, records, source in (
        ("train", train_records, train_source),
        ("val", val_records, val_source),
    ):
        check_images(records, split=split, source=source, cache_dir=cache_dir, progress=progress)

    return DetectionData(
        train=DetectionDataset(train_records, train_tf),
        val=DetectionDataset(val_records, val_tf),
        class_names=[c["name"] for c in categories],
        val_coco=val_coco,
        label_to_category_id=[c["id"] for c in categories],
        name=name,
        stats={"train": train_stats, "val": val_stats},
        warnings=warnings,
    )


def _check_splits(train, val, val_coco: COCO, categories: list[dict], resize) -> list[str]:
    """Count resize drops into the stats, raise for unusable splits, return the warnings.

    ``train`` and ``val`` are ``(records, stats, source)``; the stats are updated in place.
    """
    warnings = []
    for split, (records, stats, source) in (("train", train), ("val", val)):
        dropped, emptied, examples = checks.count_resize_drops(records, resize)
        stats["dropped"][checks.DROP_RESIZE] = dropped
        stats["boxes"] -= dropped
        stats["negatives"] += emptied
        if dropped:
            where = f"{source}, e.g. {', '.join(examples)}"
            if split == "train":
                log.warning(
                    "%s: %d training boxes are below 1 px at the model's input size and are "
                    "dropped from the targets",
                    where,
                    dropped,
                )
            else:
                warnings.append(
                    f"{dropped} val boxes are below 1 px at the model's input size ({where}): "
                    "they stay in the COCO ground truth at original resolution and count as "
                    "misses unless detected"
                )
    checks.check_trainable(train[1], train[2])
    checks.check_val_boxes(val_coco, val[1], val[2])
    warnings += checks.val_only_classes(train[0], val_coco, categories, val[2])
    for w in warnings:
        log.warning("data: %s", w)
    return warnings


def _to_dict(cfg_data: Any) -> dict:
    if isinstance(cfg_data, DictConfig):
        # Missing mandatory values (???) stay as the string "???": _required reports them.
        return OmegaConf.to_container(cfg_data, resolve=True, throw_on_missing=False)
    if isinstance(cfg_data, Mapping):
        return dict(cfg_data)
    raise TypeError(f"cfg_data must be a DictConfig or a mapping, got {type(cfg_data).__name__}")


def _required(cfg: dict, key: str) -> str:
    value = cfg.get(key)
    if value in (None, "", "???"):
        raise DatasetError(f"data.{key}: required for data={cfg.get('name')} but not set")
    return str(value)
