"""Resizing with box scaling, augmentation validity, collate and the loader, YAML keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision import tv_tensors

from benchmark.data import build_data, build_loader, collate
from benchmark.data.transforms import default_max_size
from benchmark.device import Device

_REPO = Path(__file__).resolve().parents[1]


def _val_item(data, image_id):
    index = next(i for i, r in enumerate(data.val.records) if r.image_id == image_id)
    return data.val.records[index], data.val[index]


def test_square_resize_scales_boxes(tiny_coco):
    data = build_data(tiny_coco, resize_mode="square", image_size=96)
    record, (image, target) = _val_item(data, 202)  # 48 wide x 64 high, box [5, 10, 35, 50]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
    assert image.shape == (3, 96, 96) and image.min() >= 0.0 and image.max() <= 1.0
    assert target["orig_size"] == (64, 48) and target["size"] == (96, 96)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    expected = torch.tensor(record.boxes) * torch.tensor([96 / 48, 96 / 64, 96 / 48, 96 / 64])
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)


@pytest.mark.parametrize(
    ("image_size", "max_size", "size"),
    [
        (96, None, (128, 96)),  # shorter side 48 -> 96, longer 64 -> 128 (< default cap 164)
        (96, 112, (112, 84)),  # longer side capped at 112, shorter ends at 84
        (96, 96, (96, 72)),  # cap == M: the whole image fits in 96
    ],
)
def test_shorter_side_resize(tiny_coco, image_size, max_size, size):
    data = build_data(
        tiny_coco, resize_mode="shorter_side", image_size=image_size, max_size=max_size
    )
    record, (image, target) = _val_item(data, 202)  # portrait 48 x 64 (w x h)
    assert tuple(image.shape[-2:]) == size and target["size"] == size
    sy, sx = size[0] / 64, size[1] / 48
    expected = torch.tensor(record.boxes) * torch.tensor([sx, sy, sx, sy])
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)


def test_default_max_size():
    assert default_max_size(600) == 1024
    assert default_max_size(128) == 218


def test_eval_transforms_are_deterministic(tiny_voc):
    data = build_data(tiny_voc, resize_mode="square", image_size=64, augment=True)
    (a, ta), (b, tb) = data.val[0], data.val[0]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


def test_augmented_boxes_stay_valid(tiny_synthetic):
    data = build_data(tiny_synthetic, resize_mode="square", image_size=64, augment=True)
    torch.manual_seed(0)
    changed = 0
    for _epoch in range(3):
        for i in range(len(data.train)):
            image, target = data.train[i]
            boxes, labels = target["boxes"], target["labels"]
            assert image.shape == (3, 64, 64) and image.dtype == torch.float32
            assert image.min() >= 0.0 and image.max() <= 1.0
            assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
            assert labels.dtype == torch.int64 and ((labels >= 0) & (labels < 5)).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (boxes >= 0).all() and (boxes <= 64).all()
            assert target["size"] == (64, 64)
            changed += len(labels) != len(data.train.records[i].labels)
    assert changed > 0  # IoU crops do remove boxes sometimes


def test_collate_and_loader(tiny_coco):
    data = build_data(tiny_coco, resize_mode="shorter_side", image_size=64)
    images, targets = collate([data.val[0], data.val[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2
    assert images[0].shape != images[1].shape  # no stacking: sizes differ

    def order(seed):
        loader = build_loader(data.train, batch_size=3, shuffle=True, seed=seed)
        return [t["image_id"] for _, targets in loader for t in targets]

    assert order(0) == order(0)
    assert sorted(order(0)) == [101, 102, 103, 104]
    loader = build_loader(data.train, batch_size=3, shuffle=False, drop_last=True)
    assert [len(images) for images, _ in loader] == [3]
    assert not loader.pin_memory  # pinned only when asked (Device.pin_memory: CUDA)
    assert not Device.from_spec("cpu").pin_memory
    assert build_loader(data.train, batch_size=3, shuffle=False, pin_memory=True).pin_memory


def test_loader_with_workers(tiny_coco):
    data = build_data(tiny_coco, resize_mode="square", image_size=32)
    loader = build_loader(data.val, batch_size=2, shuffle=False, num_workers=1)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == [201, 202, 203]


@pytest.mark.parametrize("name", ["synthetic", "coco", "voc"])
def test_data_yaml_files(name):
    cfg = OmegaConf.load(_REPO / "sweeps" / "data" / f"{name}.yaml")
    assert cfg.name == name
    for key, value in {
        "image_size": 128,
        "max_size": None,
        "augment": False,
        "num_workers": 0,
    }.items():
        assert cfg[key] == value
