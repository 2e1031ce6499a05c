"""Data validated before the first training step (issue 13, item 4): every image decoded and
checked (cached), pixel modes converted by rule or rejected, and splits that cannot give a
meaningful number refused (or, where a user could mean it, warned about)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from benchmark.data import DatasetError, build_data
from benchmark.data import image_check as image_check_module
from benchmark.data.images import load_rgb
from benchmark.data.transforms import MEAN_FILL_255


def _build(cfg, tmp_path, **kw):
    kw = {"resize_mode": "square", "image_size": 64, "cache_dir": str(tmp_path / "cache"), **kw}
    return build_data(cfg, **kw)


def _edit_json(path, fn):
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(json.dumps(data))


def _truncate(path):
    """Keep the header (size and mode stay readable) but cut the pixel data."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- every image, up front


def test_corrupt_val_image_fails_before_training(tiny_coco, tmp_path):
    Path(tiny_coco["val_images"], "v2.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"1 of 3 val images cannot be used") as info:
        _build(tiny_coco, tmp_path)
    message = str(info.value)
    assert "instances_val2017.json" in message and "v2.jpg: unreadable image" in message


def test_corrupt_training_image_is_caught_even_if_never_sampled(tiny_coco, tmp_path):
    # t4.jpg is the negative image: a short run may never load it. Its header is intact, so
    # only a full decode finds the damage.
    _truncate(Path(tiny_coco["train_images"], "t4.jpg"))
    with Image.open(Path(tiny_coco["train_images"], "t4.jpg")) as im:
        assert im.size == (64, 64)  # what a header-only check would have accepted
    with pytest.raises(DatasetError, match=r"t4\.jpg: unreadable image: .*truncated"):
        _build(tiny_coco, tmp_path)


def test_every_bad_image_is_named(tiny_coco, tmp_path):
    Path(tiny_coco["train_images"], "t1.jpg").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(Path(tiny_coco["train_images"], "t3.jpg"))
    with pytest.raises(DatasetError, match="2 of 4 train images cannot be used") as info:
        _build(tiny_coco, tmp_path)
    assert "t1.jpg: unreadable image" in str(info.value)
    assert "t3.jpg: image is 32x32 but annotated as 64x48" in str(info.value)


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = image_check_module.decode

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(image_check_module, "decode", counting)
    return calls


def test_image_checks_are_cached_by_size_and_mtime(tiny_coco, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    _build(tiny_coco, tmp_path)
    assert sorted(calls) == ["t1.jpg", "t2.jpg", "t3.jpg", "t4.jpg", "v1.jpg", "v2.jpg", "v3.jpg"]
    calls.clear()
    _build(tiny_coco, tmp_path, image_size=96)  # a re-run (any model size) decodes nothing
    assert calls == []
    t1 = Path(tiny_coco["train_images"], "t1.jpg")
    os.utime(t1, ns=(t1.stat().st_atime_ns, t1.stat().st_mtime_ns + 1_000_000))
    _build(tiny_coco, tmp_path)
    assert calls == ["t1.jpg"]  # only the touched file is decoded again
    # A broken file is never cached: reported on every run until it is fixed.
    Path(tiny_coco["val_images"], "v3.jpg").write_bytes(b"broken")
    for _ in range(2):
        with pytest.raises(DatasetError, match="v3.jpg"):
            _build(tiny_coco, tmp_path)
    # An edited annotation is checked against the cached size without decoding again.
    Image.new("RGB", (64, 64)).save(Path(tiny_coco["val_images"], "v3.jpg"))
    _build(tiny_coco, tmp_path)
    calls.clear()
    _edit_json(tiny_coco["train_annotations"], lambda d: d["images"][0].update(height=60))
    with pytest.raises(DatasetError, match=r"t1\.jpg: image is 64x64 but annotated as 64x60"):
        _build(tiny_coco, tmp_path)
    assert calls == []


def test_image_check_cache_location_and_pruning(tiny_coco, tmp_path, monkeypatch):
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp_path / "env"))
    build_data(tiny_coco, resize_mode="square", image_size=64)
    files = sorted((tmp_path / "env" / "image_checks").glob("*.json"))
    assert len(files) == 2  # one per split
    sources = {json.loads(f.read_text())["source"] for f in files}
    assert sources == {tiny_coco["train_annotations"], tiny_coco["val_annotations"]}
    stale = tmp_path / "env" / "image_checks" / "0123456789abcdef.json"
    stale.write_text(json.dumps({"version": 1, "source": str(tmp_path / "gone.json")}))
    os.utime(Path(tiny_coco["val_images"], "v1.jpg"))  # something to decode, so a write
    build_data(tiny_coco, resize_mode="square", image_size=64)
    assert not stale.exists()  # its dataset is gone: pruned


def test_progress_bar_while_checking(tiny_coco, tmp_path, capsys):
    _build(tiny_coco, tmp_path, progress=False)
    assert "checking" not in capsys.readouterr().err
    os.utime(Path(tiny_coco["val_images"], "v1.jpg"), ns=(1, 1))
    _build(tiny_coco, tmp_path, progress=True)
    assert "checking val images" in capsys.readouterr().err


def test_job_with_a_corrupt_val_image_fails_before_training(tiny_coco, tmp_path, monkeypatch):
    from benchmark import job

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(job, "fit", no_training)
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp_path / "cache"))
    Path(tiny_coco["val_images"], "v1.jpg").write_bytes(b"GIF89a broken")
    result = job.run_job(_job_cfg(tiny_coco, "train.max_iters=2"), tmp_path / "job", progress=False)
    assert result["status"] == "failed", result["error"]
    assert (
        result["error"].startswith("DatasetError: ")
        and "v1.jpg: unreadable image" in (result["error"])
    )


def _job_cfg(data_cfg: dict, *overrides: str):
    keys = ("train_images", "train_annotations", "val_images", "val_annotations")
    with initialize_config_module(config_module="sweeps", version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "meta_arch=ssd",
                "extractor=mobilenet_v3_small",
                "data=coco",
                *(f"data.{k}={data_cfg[k]}" for k in keys),
                "data.image_size=64",
                "num_threads=1",
                "progress=false",
                "timing_lock=false",
                *(
                    f"bench.enabled.{k}=false"
                    for k in ("latency", "throughput", "flops", "memory", "roofline")
                ),
                *overrides,
            ],
        )


# ---------------------------------------------------------------- pixel modes


def _save(tmp_path, name, image, **kw) -> str:
    path = str(tmp_path / name)
    image.save(path, **kw)
    return path


MEAN = MEAN_FILL_255


def _i16(tmp_path):
    # 16-bit grey: k * 257 is k on the 8-bit scale (65535 = 255 * 257).
    grey = np.array([[0, 100 * 257], [128 * 257, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "grey16.png", Image.fromarray(grey))
    with Image.open(path) as im:
        assert im.mode == "I;16"  # what Pillow opens a 16-bit PNG as
    return path, [[(0,) * 3, (100,) * 3], [(128,) * 3, (255,) * 3]]


def _la(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (200, 255))
    la.putpixel((1, 0), (200, 0))  # transparent: the encoder's grey is not the image
    return _save(tmp_path, "la.png", la), [[(200,) * 3, MEAN]]


def _rgba(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))
    return _save(tmp_path, "rgba.png", rgba), [[(10, 20, 30), MEAN]]


def _p_transparent(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * (3 * 254))
    p.putpixel((0, 0), 0)  # red, but index 0 is the transparent one
    p.putpixel((1, 0), 1)  # blue
    return _save(tmp_path, "p.png", p, transparency=0), [[MEAN, (0, 0, 255)]]


def _l_transparent(tmp_path):
    grey = Image.fromarray(np.array([[50, 200]], dtype=np.uint8), "L")
    return _save(tmp_path, "lkey.png", grey, transparency=50), [[MEAN, (200,) * 3]]


def _cmyk(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # full black
    return _save(tmp_path, "cmyk.tif", cmyk), [[(255, 0, 0), (0, 0, 0)]]


def _bilevel(tmp_path):
    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    return _save(tmp_path, "bits.png", one), [[(0,) * 3, (255,) * 3]]


MODE_CASES = {
    "I;16": _i16,
    "LA": _la,
    "RGBA": _rgba,
    "P+transparency": _p_transparent,
    "L+transparency": _l_transparent,
    "CMYK": _cmyk,
    "1": _bilevel,
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_pixel_modes_become_the_right_8_bit_rgb(case, tmp_path):
    path, expected = MODE_CASES[case](tmp_path)
    h, w = len(expected), len(expected[0])
    rgb = load_rgb(path, w, h)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb).tolist() == [[list(px) for px in row] for row in expected]


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("I", np.array([[0, 70000]], dtype=np.int32)),  # 32-bit integers: which range?
        ("F", np.array([[0.0, 0.5]], dtype=np.float32)),  # floats: 0..1? 0..255?
    ],
)
def test_modes_without_a_defined_8_bit_range_are_rejected_by_name(mode, array, tmp_path):
    path = _save(tmp_path, f"{mode}.tif", Image.fromarray(array, mode))
    with pytest.raises(DatasetError, match=rf"{mode}\.tif: unsupported image mode {mode} \("):
        load_rgb(path, 2, 1)


def _coco_with_image(tiny_coco, split: str, index: int, path: str):
    """Point image entry ``index`` of ``split`` at ``path`` (moved into the split's folder)."""
    folder = Path(tiny_coco[f"{split}_images"])
    target = folder / Path(path).name
    os.replace(path, target)

    def fn(d):
        d["images"][index]["file_name"] = target.name

    _edit_json(tiny_coco[f"{split}_annotations"], fn)


def test_sixteen_bit_training_image_is_scaled_not_white(tiny_coco, tmp_path):
    grey = np.full((64, 64), 100 * 257, dtype=np.uint16)  # 100 on the 8-bit scale
    _coco_with_image(tiny_coco, "train", 1, _save(tmp_path, "t2.png", Image.fromarray(grey)))
    data = _build(tiny_coco, tmp_path)
    image, _ = data.train[1]
    assert image.shape == (3, 64, 64)
    assert image.float().mul(255).round().unique().tolist() == [100.0]


def test_unsupported_mode_in_a_split_fails_up_front(tiny_coco, tmp_path):
    floats = Image.fromarray(np.zeros((64, 64), np.float32), "F")
    _coco_with_image(tiny_coco, "val", 2, _save(tmp_path, "v3.tif", floats))
    with pytest.raises(DatasetError, match=r"v3\.tif: unsupported image mode F") as info:
        _build(tiny_coco, tmp_path)
    assert "instances_val2017.json" in str(info.value)


# ---------------------------------------------------------------- boxes and classes


def _all_train_annotations(update):
    def fn(d):
        for ann in d["annotations"]:
            ann.update(update(ann))

    return fn


@pytest.mark.parametrize(
    "update",
    [
        lambda a: {"iscrowd": 1},
        lambda a: {"bbox": [a["bbox"][0], a["bbox"][1], 0, a["bbox"][3]]},  # zero width
    ],
    ids=["all_crowd", "all_degenerate"],
)
def test_no_trainable_box_is_an_error(tiny_coco, tmp_path, update):
    _edit_json(tiny_coco["train_annotations"], _all_train_annotations(update))
    with pytest.raises(DatasetError, match="the train split has no trainable box") as info:
        _build(tiny_coco, tmp_path)
    assert "instances_train2017.json" in str(info.value)


@pytest.mark.parametrize(
    "update",
    [
        lambda d: d.update(annotations=[]),
        lambda d: [a.update(iscrowd=1) for a in d["annotations"]],
    ],
    ids=["no_boxes", "only_crowd"],
)
def test_val_split_without_boxes_is_an_error(tiny_coco, tmp_path, update):
    _edit_json(tiny_coco["val_annotations"], update)
    with pytest.raises(DatasetError, match="the val split has no box to evaluate") as info:
        _build(tiny_coco, tmp_path)
    assert "instances_val2017.json" in str(info.value)


def _add_voc_object(cfg, image_id, name, box):
    xml = Path(cfg["root"], "Annotations", f"{image_id}.xml")
    obj = (
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
    )
    xml.write_text(xml.read_text().replace("</annotation>", obj + "</annotation>"))


def test_class_only_in_val_is_a_warning(tiny_voc, tmp_path):
    assert _build(tiny_voc, tmp_path).warnings == []
    _add_voc_object(tiny_voc, "000005", "bird", (5, 5, 30, 30))  # a val image; no bird in train
    data = _build(tiny_voc, tmp_path)
    assert data.class_names == ["bird", "cat", "dog"]
    (warning,) = data.warnings
    assert "class 'bird' has 1 val boxes but no training box" in warning
    assert "val.txt" in warning


def test_class_only_in_val_warning_ignores_crowd(tiny_coco, tmp_path):
    # Bird (11) in val is a crowd box only: nothing to learn for it, nothing to warn about.
    _edit_json(
        tiny_coco["train_annotations"],
        _all_train_annotations(lambda a: {"iscrowd": 1} if a["category_id"] == 11 else {}),
    )
    assert _build(tiny_coco, tmp_path).warnings == []
    _edit_json(tiny_coco["val_annotations"], lambda d: d["annotations"][1].update(iscrowd=0))
    (warning,) = _build(tiny_coco, tmp_path).warnings
    assert "class 'bird' has 1 val boxes" in warning


def test_job_records_data_warnings(tiny_coco, tmp_path, monkeypatch):
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp_path / "cache"))
    _edit_json(
        tiny_coco["train_annotations"],
        _all_train_annotations(lambda a: {"iscrowd": 1} if a["category_id"] == 11 else {}),
    )
    _edit_json(tiny_coco["val_annotations"], lambda d: d["annotations"][1].update(iscrowd=0))
    from benchmark.job import run_job

    result = run_job(_job_cfg(tiny_coco, "train.max_iters=0"), tmp_path / "job", progress=False)
    assert result["status"] == "ok", result["error"]
    on_disk = json.loads((tmp_path / "job" / "result.json").read_text())
    assert len(on_disk["data_warnings"]) == 1 and "'bird'" in on_disk["data_warnings"][0]


# ---------------------------------------------------------------- boxes lost in the resize


def _write_big_coco(root: Path, size=(640, 640)) -> dict:
    """One 640 px image per split with a 1x1 px box (0.3 px at 192) and a 100 px box."""
    w, h = size
    cats = [{"id": 1, "name": "thing"}]
    cfg = {"name": "coco"}
    for split in ("train", "val"):
        folder = root / split
        folder.mkdir(parents=True)
        Image.new("RGB", (w, h), (120, 120, 120)).save(folder / "big.jpg")
        anns = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [300, 300, 1, 1], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "iscrowd": 0},
        ]
        ann_file = root / f"{split}.json"
        images = [{"id": 1, "file_name": "big.jpg", "width": w, "height": h}]
        ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        cfg.update({f"{split}_images": str(folder), f"{split}_annotations": str(ann_file)})
    return cfg


@pytest.mark.parametrize(
    ("resize_mode", "size"), [("square", (640, 640)), ("shorter_side", (640, 480))]
)
def test_boxes_lost_in_the_resize_are_counted(tmp_path, resize_mode, size):
    cfg = _write_big_coco(tmp_path / "big", size)
    data = _build(cfg, tmp_path, resize_mode=resize_mode, image_size=192)
    train, val = data.stats["train"], data.stats["val"]
    assert train["dropped"]["degenerate_after_resize"] == 1 and train["boxes"] == 1
    # The count is what the training pipeline really does to the targets.
    _, target = data.train[0]
    assert target["boxes"].shape == (1, 4)
    # Val: counted and warned about, but the COCO ground truth keeps the box at original
    # resolution (the truth the detector is measured against).
    assert val["dropped"]["degenerate_after_resize"] == 1
    assert [a["bbox"] for a in data.val_coco.dataset["annotations"]][0] == [300, 300, 1, 1]
    (warning,) = data.warnings
    assert warning.startswith("1 val boxes are below 1 px at the model's input size")
    # At the original size nothing is lost.
    full = _build(cfg, tmp_path, resize_mode=resize_mode, image_size=min(size))
    assert full.stats["train"]["dropped"]["degenerate_after_resize"] == 0 and not full.warnings


def test_every_training_box_lost_in_the_resize_is_an_error(tmp_path):
    cfg = _write_big_coco(tmp_path / "big")
    _edit_json(cfg["train_annotations"], lambda d: d["annotations"].pop())  # only the 1x1 box
    with pytest.raises(DatasetError, match=r"no trainable box .*1 degenerate_after_resize"):
        _build(cfg, tmp_path, image_size=192)
