"""COCO-format and Pascal VOC parsing: label mapping, crowd/difficult handling, cleaning."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from benchmark.data import DatasetError, build_data
from benchmark.data.voc import default_splits


def _build(cfg, **kw):
    kw.setdefault("resize_mode", "square")
    kw.setdefault("image_size", 64)
    return build_data(cfg, **kw)


def _gt(data, image_id):
    anns = data.val_coco.loadAnns(data.val_coco.getAnnIds(imgIds=[image_id]))
    return sorted((a["category_id"], a["iscrowd"], tuple(a["bbox"])) for a in anns)


# --- COCO format ----------------------------------------------------------------------


def test_coco_non_contiguous_category_ids(tiny_coco):
    data = _build(tiny_coco)
    assert data.name == "coco"
    # Labels follow ascending category id (3, 7, 11), not the file's or the names' order.
    assert data.class_names == ["cat", "dog", "bird"]
    assert data.label_to_category_id == [3, 7, 11]
    # Exact boxes from the parsed records: training items are randomly flipped.
    record = data.train.records[0]  # t1: cat, dog, and a crowd bird
    assert record.image_id == 101
    assert record.labels.tolist() == [0, 1]
    assert record.boxes.tolist() == [[4, 6, 24, 30], [30, 30, 58, 50]]
    _, target = data.train[0]
    assert target["image_id"] == 101 and sorted(target["labels"].tolist()) == [0, 1]
    assert target["orig_size"] == (64, 64) and target["size"] == (64, 64)


def test_coco_crowd_kept_for_eval_only(tiny_coco):
    data = _build(tiny_coco)
    assert data.stats["train"]["dropped"]["crowd"] == 1
    assert data.stats["val"]["dropped"]["crowd"] == 1
    # val v1 (id 201): the crowd bird is in the ground truth as iscrowd=1, not in the target.
    assert _gt(data, 201) == [(3, 0, (8.0, 8.0, 24.0, 24.0)), (11, 1, (36.0, 36.0, 20.0, 20.0))]
    _, target = data.val[0]
    assert target["labels"].tolist() == [0]
    assert sorted(data.val_coco.getImgIds()) == [201, 202, 203]
    assert data.val_coco.loadCats(11)[0]["name"] == "bird"


def test_coco_negatives_are_kept(tiny_coco):
    data = _build(tiny_coco)
    assert data.stats["train"] == {
        "images": 4,
        "boxes": 5,
        "negatives": 1,
        "clipped": 0,
        "dropped": {
            "degenerate": 0,
            "outside_image": 0,
            "crowd": 1,
            "degenerate_after_resize": 0,
        },
    }
    _, target = data.train[3]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_coco_bad_boxes_are_dropped_and_counted(tiny_coco, caplog):
    path = tiny_coco["train_annotations"]
    with open(path) as f:
        coco = json.load(f)
    extra = [
        [10, 10, 0, 5],  # zero width -> degenerate
        [10, 10, 5, -3],  # negative height -> degenerate
        [100, 10, 10, 10],  # entirely right of the 64 px image -> outside_image
        [50, 50, 30, 30],  # partly outside -> clipped to [50, 50, 64, 64]
    ]
    for i, bbox in enumerate(extra):
        coco["annotations"].append(
            {"id": 100 + i, "image_id": 102, "category_id": 3, "bbox": bbox, "iscrowd": 0}
        )
    with open(path, "w") as f:
        json.dump(coco, f)
    with caplog.at_level(logging.WARNING):
        data = _build(tiny_coco)
    stats = data.stats["train"]
    assert stats["dropped"] == {
        "degenerate": 2,
        "outside_image": 1,
        "crowd": 1,
        "degenerate_after_resize": 0,
    }
    assert stats["clipped"] == 1 and stats["boxes"] == 6
    assert data.train.records[1].boxes.tolist() == [[10, 12, 50, 48], [50, 50, 64, 64]]
    assert "instances_train2017.json" in caplog.text and "t2.jpg" in caplog.text
    assert "degenerate" in caplog.text and "outside_image" in caplog.text


# --- Pascal VOC -----------------------------------------------------------------------


def test_voc_parse_and_one_based_conversion(tiny_voc):
    data = _build(tiny_voc)
    assert data.name == "voc"
    assert data.class_names == ["cat", "dog"]
    assert data.label_to_category_id == [1, 2]
    record = data.train.records[0]  # 000001: dog (1,1,20,30), cat (30,10,64,64) 1-based inclusive
    assert record.labels.tolist() == [1, 0]
    assert record.boxes.tolist() == [[0, 0, 20, 30], [29, 9, 64, 64]]
    assert data.stats["train"]["negatives"] == 1 and data.stats["train"]["boxes"] == 3
    # A box over the whole 48 x 64 image maps to exactly the image: (0, 0, 48, 64).
    assert _gt(data, 2) == [(2, 0, (0.0, 0.0, 48.0, 64.0))]


def test_voc_difficult_is_crowd_in_eval(tiny_voc):
    data = _build(tiny_voc)
    assert _gt(data, 1) == [(1, 0, (10.0, 20.0, 20.0, 20.0)), (2, 1, (39.0, 39.0, 21.0, 21.0))]
    _, target = data.val[0]
    assert target["labels"].tolist() == [0]
    assert data.stats["val"]["dropped"]["crowd"] == 1


def test_voc_explicit_class_names(tiny_voc):
    data = _build({**tiny_voc, "class_names": ["dog", "cat", "horse"]})
    assert data.class_names == ["dog", "cat", "horse"]
    assert data.train.records[0].labels.tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"000001\.xml.*unknown class 'cat'"):
        _build({**tiny_voc, "class_names": ["dog"]})


def test_voc_default_splits(tmp_path):
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for name in ("train", "val", "trainval"):
        (main / f"{name}.txt").write_text("x\n")
    assert default_splits(str(tmp_path), None, None) == ("train", "val")  # VOC2012: no test
    (main / "test.txt").write_text("x\n")
    assert default_splits(str(tmp_path), None, None) == ("trainval", "test")  # VOC2007
    assert default_splits(str(tmp_path), "train", "val") == ("train", "val")
