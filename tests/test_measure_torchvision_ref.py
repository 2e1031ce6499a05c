"""The torchvision reference wrapper: the four steps, label shift, anchors, training losses,
and the two-stage FLOPs hook on torchvision's Faster R-CNN.

SSDLite's steps run in tests/test_measure_job.py (eval in-process, training in the memory probe).
"""

from __future__ import annotations

import pytest
import torch
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)

from benchmark.measure.flops import count_predict
from models.errors import IncompatibleConfigError
from models.meta_arch.torchvision_ref import TorchvisionDetector, backbone_name


@pytest.fixture(scope="module")
def frcnn():
    torch.manual_seed(0)
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    return TorchvisionDetector(name=name, num_classes=3, image_size=96, extractor="ignored")


def test_steps_and_label_shift(frcnn):
    model = frcnn
    assert model.model.transform.min_size == (96,) and model.model.transform.max_size == 96
    assert model.num_anchors((96, 96)) > 0
    images = [torch.rand(3, 96, 96) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 70]]), "labels": torch.tensor([2])}] * 2
    model.train()
    losses = model(images, targets)
    assert losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode():
        dets = model(images)
    for d in dets:  # labels back in 0..C-1; torchvision's label 0 never leaks out
        labels = d["labels"]
        assert labels.numel() == 0 or 0 <= int(labels.min()) <= int(labels.max()) < 3


def test_faster_rcnn_counted_at_num_proposals(frcnn):
    model = frcnn.eval()
    x = model.preprocess([torch.rand(3, 96, 96)]).tensor
    report = count_predict(model, x)
    assert report.num_proposals == model.num_proposals == 150
    # The box head's first FC layer (256 * 7 * 7 -> 1024) runs once per proposal.
    assert report.by_op["aten.addmm"] * 1e9 >= 150 * 256 * 49 * 1024
    assert report.by_op["torchvision.roi_align"] > 0
    assert model.model.rpn.nms_thresh == 0.7  # the hook restored the RPN's settings


def test_backbone_name_and_unknown_builder():
    assert backbone_name("ssdlite320_mobilenet_v3_large") == "mobilenet_v3_large"
    assert backbone_name("fasterrcnn_resnet50_fpn_v2") == "resnet50_fpn_v2"
    assert backbone_name("ssd300_vgg16") == "vgg16"
    with pytest.raises(IncompatibleConfigError):
        TorchvisionDetector(name="no_such_builder", num_classes=2, image_size=96)
