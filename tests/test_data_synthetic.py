"""The synthetic dataset: deterministic, cached, atomic, and varied enough to be a benchmark."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
import torch

import benchmark.data.synthetic as synthetic
from benchmark.data import build_data
from benchmark.data.synthetic import SyntheticParams, ensure_synthetic, synthetic_folder
from benchmark.data.synthetic_draw import LARGE_MIN, SHAPES, SMALL_MAX

SMALL = SyntheticParams(num_train=20, num_val=8, gen_size=96)


def _files(folder: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_generation_is_deterministic(tmp_path):
    a = ensure_synthetic(SMALL, root=str(tmp_path / "a"))
    b = ensure_synthetic(SMALL, root=str(tmp_path / "b"))
    fa, fb = _files(os.path.dirname(a["train_images"])), _files(os.path.dirname(b["train_images"]))
    assert len(fa) == 20 + 8 + 3  # images + two JSON files + generator.json
    assert fa == fb


def test_seed_changes_the_data(tmp_path):
    a = ensure_synthetic(SMALL, root=str(tmp_path))
    b = ensure_synthetic(
        SyntheticParams(num_train=20, num_val=8, gen_size=96, seed=1), root=str(tmp_path)
    )
    assert a["train_images"] != b["train_images"]
    assert _files(a["train_images"]) != _files(b["train_images"])


def test_second_call_reuses_the_cache(tmp_path, monkeypatch):
    first = ensure_synthetic(SMALL, root=str(tmp_path))

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "_generate_split", fail)
    assert ensure_synthetic(SMALL, root=str(tmp_path)) == first
    # Nothing but the finished dataset is left in the cache folder (no temp folders).
    assert os.listdir(tmp_path) == [SMALL.digest()]


def test_cache_location_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp_path / "env"))
    digest = SMALL.digest()
    assert synthetic_folder(SMALL) == str(tmp_path / "env" / "synthetic" / digest)
    assert synthetic_folder(SMALL, cache_dir=str(tmp_path / "c")) == str(
        tmp_path / "c" / "synthetic" / digest
    )
    assert synthetic_folder(SMALL, root=str(tmp_path / "r"), cache_dir=str(tmp_path / "c")) == str(
        tmp_path / "r" / digest
    )
    monkeypatch.delenv("DETBENCH_CACHE")
    assert synthetic_folder(SMALL) == os.path.expanduser(
        os.path.join("~", ".cache", "detbench", "synthetic", digest)
    )


def _generate_in_child(root: str) -> None:
    ensure_synthetic(SMALL, root=root)


def test_concurrent_generation_does_not_clash(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_generate_in_child, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert os.listdir(tmp_path) == [SMALL.digest()]
    reference = ensure_synthetic(SMALL, root=str(tmp_path / "ref"))
    assert _files(str(tmp_path / SMALL.digest())) == _files(
        os.path.dirname(reference["train_images"])
    )


def test_all_classes_and_coco_size_bands(tmp_path):
    params = SyntheticParams(num_train=60, num_val=10)
    paths = ensure_synthetic(params, root=str(tmp_path))
    with open(paths["train_annotations"]) as f:
        coco = json.load(f)
    assert [c["name"] for c in coco["categories"]] == list(SHAPES[:5])
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4, 5}
    areas = [a["area"] for a in coco["annotations"]]
    small = sum(a < SMALL_MAX for a in areas) / len(areas)
    large = sum(a > LARGE_MIN for a in areas) / len(areas)
    assert 0.25 < small < 0.6 and 0.05 < large < 0.3, (small, large)
    sizes = {(im["width"], im["height"]) for im in coco["images"]}
    assert sizes == {(160, 160), (213, 160), (160, 213)}  # several aspect ratios
    negatives = {im["id"] for im in coco["images"]} - {a["image_id"] for a in coco["annotations"]}
    assert 0 < len(negatives) < 10
    for a in coco["annotations"]:  # every box lies inside its image
        im = coco["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert (
            w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        )


def test_build_data_synthetic(tiny_synthetic):
    data = build_data(tiny_synthetic, resize_mode="square", image_size=64)
    assert data.name == "synthetic"
    assert data.class_names == list(SHAPES[:5])
    assert data.label_to_category_id == [1, 2, 3, 4, 5]
    assert len(data.train) == 20 and len(data.val) == 8
    assert data.stats["train"]["images"] == 20
    assert sorted(data.val_coco.getImgIds()) == list(range(1, 9))
    image, target = data.val[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert target["labels"].dtype == torch.int64
    assert ((target["labels"] >= 0) & (target["labels"] < 5)).all()


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticParams(num_classes=len(SHAPES) + 1)
