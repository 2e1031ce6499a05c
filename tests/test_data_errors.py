"""Every unusable dataset fails up front with a DatasetError naming the file and the problem."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from benchmark.data import DatasetError, build_data

_REPO = Path(__file__).resolve().parents[1]


def _build(cfg):
    return build_data(cfg, resize_mode="square", image_size=64)


def _edit_json(path, fn):
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _set_first_ann(key, value):
    def fn(data):
        data["annotations"][0][key] = value

    return fn


# Each case: mutate the tiny COCO dataset, then expect (file name in message, problem regex).
COCO_CASES = {
    "missing_image_folder": (
        lambda c: shutil.rmtree(c["train_images"]),
        "train2017",
        "image folder not found",
    ),
    "missing_annotation_file": (
        lambda c: os.remove(c["val_annotations"]),
        "instances_val2017.json",
        "annotation file not found",
    ),
    "missing_image": (
        lambda c: os.remove(os.path.join(c["train_images"], "t3.jpg")),
        "t3.jpg",
        "1 of 4 train images are missing",
    ),
    "malformed_json": (
        lambda c: Path(c["train_annotations"]).write_text('{"images": [,]}'),
        "instances_train2017.json",
        "malformed JSON",
    ),
    "not_coco": (
        lambda c: Path(c["train_annotations"]).write_text('{"images": []}'),
        "instances_train2017.json",
        "'annotations'",
    ),
    "unknown_category": (
        lambda c: _edit_json(c["train_annotations"], _set_first_ann("category_id", 99)),
        "instances_train2017.json",
        "unknown category id 99",
    ),
    "unknown_image_id": (
        lambda c: _edit_json(c["val_annotations"], _set_first_ann("image_id", 999)),
        "instances_val2017.json",
        "unknown image id 999",
    ),
    "bad_bbox": (
        lambda c: _edit_json(c["train_annotations"], _set_first_ann("bbox", [1, 2, 3])),
        "instances_train2017.json",
        "malformed annotation",
    ),
    "empty_split": (
        lambda c: _edit_json(c["val_annotations"], lambda d: d.update(images=[], annotations=[])),
        "instances_val2017.json",
        "no images",
    ),
    "val_categories_differ": (
        lambda c: _edit_json(c["val_annotations"], lambda d: d["categories"].pop()),
        "instances_val2017.json",
        "differ",
    ),
}


@pytest.mark.parametrize("case", COCO_CASES)
def test_bad_coco_raises(tiny_coco, case):
    mutate, file_name, problem = COCO_CASES[case]
    mutate(tiny_coco)
    with pytest.raises(DatasetError, match=problem) as info:
        _build(tiny_coco)
    assert file_name in str(info.value)


def _voc(cfg, *parts):
    return Path(cfg["root"], *parts)


VOC_CASES = {
    "missing_root": (lambda c: shutil.rmtree(c["root"]), "voc", "VOC folder not found"),
    "missing_jpeg_folder": (
        lambda c: shutil.rmtree(_voc(c, "JPEGImages")),
        "JPEGImages",
        "VOC folder not found",
    ),
    "missing_split_list": (
        lambda c: os.remove(_voc(c, "ImageSets", "Main", "val.txt")),
        "val.txt",
        "not found",
    ),
    "empty_split_list": (
        lambda c: _voc(c, "ImageSets", "Main", "val.txt").write_text("\n"),
        "val.txt",
        "empty",
    ),
    "missing_xml": (
        lambda c: os.remove(_voc(c, "Annotations", "000002.xml")),
        "000002.xml",
        "not found",
    ),
    "malformed_xml": (
        lambda c: _voc(c, "Annotations", "000004.xml").write_text("<annotation><object>"),
        "000004.xml",
        "malformed XML",
    ),
    "bad_coordinate": (
        lambda c: _voc(c, "Annotations", "000001.xml").write_text(
            _voc(c, "Annotations", "000001.xml")
            .read_text()
            .replace("<xmin>1</xmin>", "<xmin>one</xmin>")
        ),
        "000001.xml",
        "malformed annotation",
    ),
    "missing_image": (
        lambda c: os.remove(_voc(c, "JPEGImages", "000005.jpg")),
        "000005.jpg",
        "missing",
    ),
}


@pytest.mark.parametrize("case", VOC_CASES)
def test_bad_voc_raises(tiny_voc, case):
    mutate, file_name, problem = VOC_CASES[case]
    mutate(tiny_voc)
    with pytest.raises(DatasetError, match=problem) as info:
        _build(tiny_voc)
    assert file_name in str(info.value)


def test_unreadable_image_raises_at_load_time(tiny_coco):
    data = _build(tiny_coco)  # the files are fine when the job starts...
    path = os.path.join(tiny_coco["train_images"], "t2.jpg")
    Path(path).write_bytes(b"not a jpeg")  # ...and one breaks while it runs
    with pytest.raises(DatasetError, match="unreadable image") as info:
        data.train[1]
    assert "t2.jpg" in str(info.value)


def test_image_size_mismatch_raises_up_front(tiny_coco):
    _edit_json(tiny_coco["val_annotations"], lambda d: d["images"][0].update(width=80))
    with pytest.raises(DatasetError, match=r"v1\.jpg: image is 64x64 but annotated as 80x64"):
        _build(tiny_coco)


def test_image_size_mismatch_raises_at_load_time(tiny_coco):
    data = _build(tiny_coco)
    Image.new("RGB", (80, 64)).save(os.path.join(tiny_coco["val_images"], "v1.jpg"))
    with pytest.raises(DatasetError, match=r"v1\.jpg: image is 80x64 but annotated as 64x64"):
        data.val[0]


def test_mandatory_config_keys(tiny_coco):
    cfg = OmegaConf.load(_REPO / "sweeps" / "data" / "coco.yaml")
    with pytest.raises(DatasetError, match="data.train_images"):
        _build(cfg)
    cfg = OmegaConf.merge(cfg, {k: v for k, v in tiny_coco.items() if k != "name"})
    assert len(_build(cfg).train) == 4  # a DictConfig works as well as a dict


def test_unknown_name_and_resize_mode(tiny_coco):
    with pytest.raises(ValueError, match="data.name"):
        _build({"name": "imagenet"})
    with pytest.raises(ValueError, match="resize_mode"):
        build_data(tiny_coco, resize_mode="letterbox", image_size=64)
