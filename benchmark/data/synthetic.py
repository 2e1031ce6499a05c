"""The embedded synthetic dataset: generated once per parameter set, cached as COCO format.

Folder layout (a regular COCO-format dataset, loaded by the same code as ``data=coco``)::

    <folder>/train/000001.jpg ...       <folder>/instances_train.json
    <folder>/val/000001.jpg ...         <folder>/instances_val.json
    <folder>/generator.json             parameters, generator version, summary counts

Where ``<folder>`` is ``<base>/<digest of the generator parameters>`` and ``<base>`` is,
first match wins: ``data.root``; the ``cache_dir`` argument + ``/synthetic``;
``$DETBENCH_CACHE/synthetic``; ``~/.cache/detbench/synthetic``. Keying by digest means
changing any parameter (or :data:`GENERATOR_VERSION`) never reuses a stale set.

Generation writes into a temporary sibling folder and renames it into place, which is
atomic on one filesystem: concurrent jobs either see the whole dataset or none, and a
job that loses the race simply discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

from benchmark.data.synthetic_draw import LARGE_MIN, SHAPES, SMALL_MAX, render_image

logger = logging.getLogger(__name__)

# Bump whenever synthetic_draw changes what it draws: it is part of the cache key.
GENERATOR_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines the generated images (the cache key).

    Attributes:
        num_train: Training images.
        num_val: Validation images.
        num_classes: Classes, ``SHAPES[:num_classes]`` (at most ``len(SHAPES)``).
        gen_size: Shorter side of the generated images in pixels.
        aspect_ratios: Width/height ratios images are drawn with (uniformly).
        max_objects: At most this many objects per image (fewer if they do not fit).
        negative_fraction: Fraction of images without any object.
        image_format: ``"jpg"`` or ``"png"``.
        seed: Base seed; image ``i`` of a split uses ``(seed, split, i)``.
    """

    num_train: int = 600
    num_val: int = 150
    num_classes: int = 5
    gen_size: int = 160
    aspect_ratios: tuple[float, ...] = (1.0, 4 / 3, 3 / 4)
    max_objects: int = 6
    negative_fraction: float = 0.05
    image_format: str = "jpg"
    seed: int = 0

    def __post_init__(self):
        # Rounded so 4/3 in code and 1.3333 in YAML are the same dataset (same cache key).
        object.__setattr__(
            self, "aspect_ratios", tuple(round(float(a), 4) for a in self.aspect_ratios)
        )
        if not 1 <= self.num_classes <= len(SHAPES):
            raise ValueError(
                f"data.num_classes must be in 1..{len(SHAPES)}, got {self.num_classes}"
            )
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"data.image_format must be 'jpg' or 'png', got {self.image_format!r}")
        if self.gen_size < 64 or self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"invalid synthetic parameters: {self}")

    @classmethod
    def from_config(cls, cfg: Mapping) -> SyntheticParams:
        """Pick the generator keys out of a ``data`` config node (other keys are ignored)."""
        kwargs = {f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None}
        if "aspect_ratios" in kwargs:
            kwargs["aspect_ratios"] = tuple(kwargs["aspect_ratios"])
        return cls(**kwargs)

    def digest(self) -> str:
        """Short stable hash of the parameters and the generator version."""
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(SHAPES[: self.num_classes])


def synthetic_folder(
    params: SyntheticParams, root: str | None = None, cache_dir: str | None = None
) -> str:
    """Where the dataset for ``params`` lives (see the module docstring for the precedence)."""
    if root:
        base = root
    elif cache_dir:
        base = os.path.join(cache_dir, "synthetic")
    elif os.environ.get("DETBENCH_CACHE"):
        base = os.path.join(os.environ["DETBENCH_CACHE"], "synthetic")
    else:
        base = os.path.join("~", ".cache", "detbench", "synthetic")
    return os.path.abspath(os.path.join(os.path.expanduser(base), params.digest()))


def ensure_synthetic(
    params: SyntheticParams, root: str | None = None, cache_dir: str | None = None
) -> dict:
    """Generate the dataset unless cached, and return its COCO-format paths.

    Returns:
        ``{"train_images", "train_annotations", "val_images", "val_annotations"}``.
    """
    folder = synthetic_folder(params, root, cache_dir)
    if not os.path.isfile(os.path.join(folder, "generator.json")):
        base = os.path.dirname(folder)
        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=base)
        try:
            start = time.perf_counter()
            summary = {split: _generate_split(params, tmp, split) for split in _SPLIT_CODES}
            _write_json(
                os.path.join(tmp, "generator.json"),
                {"version": GENERATOR_VERSION, "params": asdict(params), "summary": summary},
            )
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable
            try:
                os.rename(tmp, folder)
            except OSError:
                if not os.path.isfile(os.path.join(folder, "generator.json")):
                    raise
                logger.info(
                    "%s: generated concurrently by another process; using that copy", folder
                )
            else:
                logger.info(
                    "%s: generated synthetic dataset in %.1f s: %s",
                    folder,
                    time.perf_counter() - start,
                    summary,
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return {
        "train_images": os.path.join(folder, "train"),
        "train_annotations": os.path.join(folder, "instances_train.json"),
        "val_images": os.path.join(folder, "val"),
        "val_annotations": os.path.join(folder, "instances_val.json"),
    }


def _generate_split(params: SyntheticParams, folder: str, split: str) -> dict:
    """Draw one split into ``folder/<split>`` + ``instances_<split>.json``; return counts."""
    n = params.num_train if split == "train" else params.num_val
    os.makedirs(os.path.join(folder, split))
    images, annotations = [], []
    sizes = {"small": 0, "medium": 0, "large": 0}
    for i in range(n):
        # One generator per image: images do not depend on each other or on the split size.
        rng = np.random.default_rng([params.seed, _SPLIT_CODES[split], i])
        aspect = float(params.aspect_ratios[int(rng.integers(len(params.aspect_ratios)))])
        if aspect >= 1:
            height, width = params.gen_size, int(round(params.gen_size * aspect))
        else:
            height, width = int(round(params.gen_size / aspect)), params.gen_size
        image, objects = render_image(
            rng, width, height, params.num_classes, params.max_objects, params.negative_fraction
        )
        file_name = f"{i + 1:06d}.{params.image_format}"
        path = os.path.join(folder, split, file_name)
        if params.image_format == "jpg":
            image.save(path, quality=92)
        else:
            image.save(path)
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for o in objects:
            x1, y1, x2, y2 = o.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": o.label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": o.area,
                    "iscrowd": 0,
                }
            )
            band = "small" if o.area < SMALL_MAX else "large" if o.area > LARGE_MIN else "medium"
            sizes[band] += 1
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(params.class_names)
    ]
    _write_json(
        os.path.join(folder, f"instances_{split}.json"),
        {
            "info": {"description": f"detbench synthetic {split}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        },
    )
    return {"images": n, "boxes": len(annotations), **sizes}


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
