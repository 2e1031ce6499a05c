"""Shared fixtures: tiny on-disk datasets in every supported layout.

Each dataset fixture writes a dataset into ``tmp_path`` and returns a ``data`` config dict
that ``benchmark.data.build_data`` accepts directly (wrap it with ``OmegaConf.create`` and
merge it into a full config for end-to-end tests). Images are 64 px, with each object
drawn as a filled rectangle of a per-class colour, so a model can even fit them.

``fake_report``: the fake paper-like sweep of ``report_fakes.py`` with its report written
once per session, shared (read-only) by the report tests.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(autouse=True)
def _no_child_outlives_its_test():
    """Kill multiprocessing children a test left running (a hung one would hold the output
    pipe of CI open long after pytest ended, and take a core from the tests after it)."""
    yield
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)


_COLOURS = [(230, 40, 40), (40, 90, 230), (40, 180, 60)]


def _write_image(path: Path, width: int, height: int, boxes_xyxy, labels, seed: int) -> None:
    """Noisy grey JPEG with the given boxes filled in their class colour."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), label in zip(boxes_xyxy, labels, strict=True):
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=_COLOURS[label % len(_COLOURS)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)


# COCO split spec: (file, width, height, [(category_id, [x, y, w, h], iscrowd), ...]).
# Category ids are non-contiguous and not in name order on purpose: labels follow the
# ids (3 -> 0 "cat", 7 -> 1 "dog", 11 -> 2 "bird").
COCO_CATEGORIES = [
    {"id": 11, "name": "bird", "supercategory": "animal"},
    {"id": 3, "name": "cat", "supercategory": "animal"},
    {"id": 7, "name": "dog", "supercategory": "animal"},
]
_COCO_SPLITS = {
    "train": [
        (
            "t1.jpg",
            64,
            64,
            [(3, [4, 6, 20, 24], 0), (7, [30, 30, 28, 20], 0), (11, [0, 0, 64, 64], 1)],
        ),
        ("t2.jpg", 64, 64, [(11, [10, 12, 40, 36], 0)]),
        ("t3.jpg", 64, 48, [(3, [2, 2, 16, 16], 0), (7, [40, 20, 20, 24], 0)]),
        ("t4.jpg", 64, 64, []),  # a negative
    ],
    "val": [
        ("v1.jpg", 64, 64, [(3, [8, 8, 24, 24], 0), (11, [36, 36, 20, 20], 1)]),
        ("v2.jpg", 48, 64, [(7, [5, 10, 30, 40], 0)]),  # portrait: 48 wide, 64 high
        ("v3.jpg", 64, 64, []),
    ],
}


def write_tiny_coco(root: Path) -> dict:
    """Write the tiny COCO-format dataset under ``root``; return its ``data`` config."""
    cfg = {"name": "coco"}
    for s, (split, images) in enumerate(_COCO_SPLITS.items()):
        folder = root / f"{split}2017"
        entries, anns = [], []
        for i, (file_name, w, h, objects) in enumerate(images, start=1):
            image_id = 100 * (s + 1) + i  # not 1..N: ids must be carried through, not re-counted
            entries.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            label_of = {3: 0, 7: 1, 11: 2}
            xyxy = [(x, y, x + bw, y + bh) for _, (x, y, bw, bh), _ in objects]
            _write_image(
                folder / file_name, w, h, xyxy, [label_of[c] for c, _, _ in objects], seed=image_id
            )
            for category_id, bbox, crowd in objects:
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": crowd,
                    }
                )
        ann_file = root / "annotations" / f"instances_{split}2017.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(
            json.dumps({"images": entries, "annotations": anns, "categories": COCO_CATEGORIES})
        )
        cfg[f"{split}_images"] = str(folder)
        cfg[f"{split}_annotations"] = str(ann_file)
    return cfg


# VOC split spec: id -> (width, height, [(name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)]).
_VOC_SPLITS = {
    "train": {
        "000001": (64, 64, [("dog", (1, 1, 20, 30), 0), ("cat", (30, 10, 64, 64), 0)]),
        "000002": (64, 48, [("cat", (5, 5, 40, 40), 0)]),
        "000003": (64, 64, []),  # a negative
    },
    "val": {
        "000004": (64, 64, [("cat", (11, 21, 30, 40), 0), ("dog", (40, 40, 60, 60), 1)]),
        "000005": (48, 64, [("dog", (1, 1, 48, 64), 0)]),
    },
}


def write_tiny_voc(root: Path) -> dict:
    """Write the tiny Pascal VOC folder under ``root``; return its ``data`` config."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    label_of = {"cat": 0, "dog": 1}
    for split, images in _VOC_SPLITS.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
        for image_id, (w, h, objects) in images.items():
            xyxy = [(b[0] - 1, b[1] - 1, b[2], b[3]) for _, b, _ in objects]
            _write_image(
                root / "JPEGImages" / f"{image_id}.jpg",
                w,
                h,
                xyxy,
                [label_of[n] for n, _, _ in objects],
                seed=int(image_id),
            )
            objs = "".join(
                f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                for name, b, difficult in objects
            )
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename>"
                f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"
            )
    return {"name": "voc", "root": str(root)}


@pytest.fixture
def tiny_coco(tmp_path) -> dict:
    """A 4 + 3 image COCO-format dataset (ids 3/7/11, a crowd box, negatives); its data config."""
    return write_tiny_coco(tmp_path / "coco")


@pytest.fixture
def tiny_voc(tmp_path) -> dict:
    """A 3 + 2 image VOC folder (train/val lists, a difficult object, a negative); its data config."""
    return write_tiny_voc(tmp_path / "voc")


@pytest.fixture
def tiny_synthetic(tmp_path) -> dict:
    """Data config of a small synthetic set (20 + 8 images of 96 px) generated under tmp_path."""
    return {
        "name": "synthetic",
        "root": str(tmp_path / "synthetic"),
        "num_train": 20,
        "num_val": 8,
        "gen_size": 96,
        "seed": 0,
    }


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cluster`` start a Ray or SLURM cluster and run sweeps on it (minutes
    each): the plain ``pytest`` skips them, with this reason, to stay fast; they run when
    selected (``-m cluster``, as .ci/run does after installing them) or named on the
    command line (``pytest tests/test_cluster_ray.py``)."""
    if "cluster" in (config.option.markexpr or ""):
        return
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    skip = pytest.mark.skip(
        reason="starts a local Ray/SLURM cluster: run `pytest -m cluster` "
        "(after pip install -e '.[cluster]'; SLURM: root + apt-get install slurm-wlm munge)"
    )
    for item in items:
        if "cluster" in item.keywords and Path(item.path).resolve() not in named:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fake_report(tmp_path_factory):
    """``write_report``'s summary of the fake sweep (``.folder`` holds the sweep and its
    report files). Shared by every report test: read it, never write into it."""
    from report_fakes import make_fake_sweep

    from benchmark.report import write_report

    return write_report(make_fake_sweep(tmp_path_factory.mktemp("sweeps") / "paper"))
