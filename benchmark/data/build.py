"""``build_data``: from the ``data`` config node to validated datasets and COCO ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from benchmark.data.coco_format import load_coco_split
from benchmark.data.dataset import DetectionDataset
from benchmark.data.errors import DatasetError
from benchmark.data.synthetic import SyntheticParams, ensure_synthetic
from benchmark.data.transforms import build_transforms
from benchmark.data.voc import load_voc

DATASETS = ("synthetic", "coco", "voc")


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
            (training boxes kept), ``negatives`` (images without boxes), ``clipped``
            and ``dropped`` (``{"degenerate", "outside_image", "crowd"}``: not in targets).
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    val_coco: COCO
    label_to_category_id: list[int]
    name: str
    stats: dict


def build_data(
    cfg_data: Any,
    *,
    resize_mode: str,
    image_size: int,
    max_size: int | None = None,
    augment: bool = False,
    cache_dir: str | None = None,
) -> DetectionData:
    """Parse and validate a dataset up front and wrap it in transformed datasets.

    Args:
        cfg_data: The ``data`` config node (DictConfig or dict). ``name`` selects the
            format; the dataset-specific keys are read from it (see ``sweeps/data/*.yaml``).
        resize_mode: ``"square"`` (single-shot family) or ``"shorter_side"`` (two-stage).
        image_size: ``M``: square side, or shorter side.
        max_size: Longer-side cap for ``shorter_side`` (None: ``round(1024/600*M)``).
        augment: SSD augmentation on the training split.
        cache_dir: Base folder for generated data (synthetic), below ``data.root``.

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

    return DetectionData(
        train=DetectionDataset(train_records, train_tf),
        val=DetectionDataset(val_records, val_tf),
        class_names=[c["name"] for c in categories],
        val_coco=val_coco,
        label_to_category_id=[c["id"] for c in categories],
        name=name,
        stats={"train": train_stats, "val": val_stats},
    )


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
