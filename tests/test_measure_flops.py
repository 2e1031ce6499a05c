"""FLOPs: torchvision's published ``_ops`` reproduced, RoI formulas, per-proposal cost, gaps reported."""

from __future__ import annotations

import pytest
import torch
import torchvision
from measure_toys import ToyRoIModel, one_thread  # noqa: F401 (fixture)
from torch import nn
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    SSD300_VGG16_Weights,
    SSDLite320_MobileNet_V3_Large_Weights,
    ssd300_vgg16,
    ssdlite320_mobilenet_v3_large,
)

from benchmark.measure.flops import count_forward, count_predict, flop_keys, roi_align_macs
from models.meta_arch.torchvision_ref import TorchvisionDetector


@pytest.mark.parametrize(
    ("builder", "weights", "size"),
    [
        (ssd300_vgg16, SSD300_VGG16_Weights.COCO_V1, 300),
        (ssdlite320_mobilenet_v3_large, SSDLite320_MobileNet_V3_Large_Weights.COCO_V1, 320),
    ],
)
def test_torchvision_ops_reproduced(builder, weights, size):
    """torchvision's convention: multiply-adds of one random image at the native size."""
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None)
    report = count_forward(model, [torch.rand(3, size, size)])
    assert report.gmacs == pytest.approx(weights.meta["_ops"], rel=0.005)
    assert report.uncounted_ops == []


def test_wrapper_predict_matches_ssdlite_ops():
    """Our count is on ``predict`` of the wrapped model: for SSDLite that is the whole network."""
    model = TorchvisionDetector(
        name="ssdlite320_mobilenet_v3_large", num_classes=90, image_size=320
    )
    x = model.preprocess([torch.rand(3, 320, 320)]).tensor
    report = count_predict(model, x)
    assert report.gmacs == pytest.approx(
        SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["_ops"], rel=0.005
    )
    assert report.num_proposals is None


@pytest.mark.parametrize(
    ("name", "weights", "size"),
    [
        (
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
            320,
        ),
        ("fasterrcnn_mobilenet_v3_large_fpn", FasterRCNN_MobileNet_V3_Large_FPN_Weights, 800),
    ],
)
def test_two_stage_cross_check_is_exact_on_convolutions(name, weights, size):
    """torchvision's published ``_ops`` of its MobileNet Faster R-CNNs are the convolutions
    alone: no RoIAlign and no box head (the FPN box head's linear layers add ~14 GMACs at
    1000 RoIs). ``gmacs_conv`` reproduces them; ``gmacs`` adds what they leave out.
    (Their ResNet-50 FPN models' ``_ops`` are convolutions + the box head's linear layers at
    1000 RoIs, still without RoIAlign: docs/measurement.md.)"""
    torch.manual_seed(0)
    model = TorchvisionDetector(name=name, num_classes=90, image_size=size)
    report = count_predict(model, model.preprocess([torch.rand(3, size, size)]).tensor)
    assert report.gmacs_conv == pytest.approx(weights.COCO_V1.meta["_ops"], rel=0.005)
    assert report.gmacs_conv == pytest.approx(report.by_op["aten.convolution"])
    assert report.gmacs > report.gmacs_conv + report.by_op["torchvision.roi_align"]  # + box head


def test_resnet50_fpn_ops_are_convolutions_and_box_head_without_roi_align():
    """``fasterrcnn_resnet50_fpn``'s ``_ops`` (134.38) = convolutions + the box head's linear
    layers at its 1000 test-time RoIs; RoIAlign is not in it."""
    torch.manual_seed(0)
    model = TorchvisionDetector(name="fasterrcnn_resnet50_fpn", num_classes=90, image_size=800)
    report = count_predict(model, model.preprocess([torch.rand(3, 800, 800)]).tensor)
    assert report.num_proposals == 1000
    published = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["_ops"]
    assert report.gmacs_conv + report.by_op["aten.addmm"] == pytest.approx(published, rel=0.005)
    assert report.gmacs - report.by_op["torchvision.roi_align"] == pytest.approx(
        published, rel=0.005
    )


def test_roi_align_formula():
    """RoIAlign: C * ph * pw * (sampling points) * 4 bilinear multiply-adds per RoI."""
    x = torch.rand(1, 16, 32, 32)
    rois = torch.tensor([[0, 0, 0, 10, 10], [0, 2, 2, 20, 30.0]])
    assert roi_align_macs(x.shape, rois, 1.0, 7, 7, 2) == 2 * 16 * 49 * 4 * 4
    # Adaptive grid (sampling_ratio <= 0): ceil(10/7)^2 = 4 and ceil(28/7) * ceil(18/7) = 12 points.
    assert roi_align_macs(x.shape, rois, 1.0, 7, 7, 0, aligned=True) == 16 * 49 * 16 * 4
    from benchmark.measure.flops import _count

    counted = _count(lambda: torchvision.ops.roi_align(x, rois, (7, 7), 1.0, 2))
    assert counted.by_op == {"torchvision.roi_align": pytest.approx(2 * 16 * 49 * 4 * 4 / 1e9)}
    ps = _count(
        lambda: torchvision.ops.ps_roi_align(torch.rand(1, 49 * 4, 32, 32), rois, (7, 7), 1.0, 2)
    )
    assert ps.gmacs == pytest.approx(2 * 4 * 49 * 4 * 4 / 1e9)


@pytest.mark.parametrize("n", [8, 32])
def test_per_proposal_cost_is_counted(n):
    """At a fixed number of proposals (the two-stage hook) GMACs grow by exactly the RoIAlign
    and box-head cost of each extra RoI."""
    torch.manual_seed(0)
    small, large = ToyRoIModel(num_proposals=n), ToyRoIModel(num_proposals=2 * n)
    large.load_state_dict(small.state_dict())
    x = torch.rand(1, 3, 64, 64)
    a, b = count_predict(small, x), count_predict(large, x)
    assert (a.num_proposals, b.num_proposals) == (n, 2 * n)
    c, hidden = 8, 16
    per_roi = c * 49 * (2 * 2) * 4 + c * 49 * hidden  # RoIAlign (S=2) + FC head
    assert (b.gmacs - a.gmacs) * 1e9 == pytest.approx(n * per_roi)
    assert b.by_op["torchvision.roi_align"] == pytest.approx(2 * a.by_op["torchvision.roi_align"])


def test_uncounted_contractions_are_listed():
    class Pooled(nn.Module):
        def predict(self, x):
            return {"p": torchvision.ops.roi_pool(x, [torch.tensor([[0.0, 0, 8, 8]])], 2)}

    report = count_predict(Pooled(), torch.rand(1, 4, 16, 16))
    assert report.uncounted_ops == ["torchvision.roi_pool"] and report.gmacs == 0


def _alone(fn, *args) -> float:
    """GMACs of one call counted on its own (a second, independent count)."""
    with torch.inference_mode(), torch.utils.flop_counter.FlopCounterMode(display=False) as c:
        fn(*args)
    return c.get_total_flops() / 2e9


def test_parts_of_ssd_by_hand():
    """SSD's split: extractor and neck as each counts alone on the same input; the head by
    hand, two 3x3 convolutions per prediction map (C_k -> a_k (K+1) scores and a_k 4
    offsets): sum_k H_k W_k 9 C_k a_k (K + 1 + 4) multiply-adds."""
    from models.extractors.timm_extractor import TimmExtractor
    from models.meta_arch.single_shot import SSD

    torch.manual_seed(0)
    model = SSD(extractor=TimmExtractor(model_name="resnet18"), num_classes=3).eval()
    x = torch.rand(1, 3, 96, 96)
    report = count_predict(model, x)
    with torch.inference_mode():
        maps = model.features(x)
        source = model.extractor(x)
    channels = [m.shape[1] for m in maps]
    head = sum(
        m.shape[2] * m.shape[3] * 9 * c * a * (3 + 1 + 4)
        for m, c, a in zip(maps, channels, model.anchors_per_location, strict=True)
    )
    assert report.by_part["head"] == pytest.approx(head / 1e9, rel=1e-9)
    assert report.by_part["extractor"] == pytest.approx(_alone(model.extractor, x), rel=1e-9)
    assert report.by_part["neck"] == pytest.approx(_alone(model.neck, source), rel=1e-9)
    assert sum(report.by_part.values()) == pytest.approx(report.gmacs, rel=1e-9)
    keys = flop_keys(report)
    assert keys["gmacs_head"] == report.by_part["head"] and keys["gmacs_neck"] > 0


def test_parts_of_two_stage_head_holds_the_crops():
    """Faster R-CNN: the extractor is the trunk (as counted alone); RoIAlign and the last
    stage run on the crops are head work, so the head is at least RoIAlign plus that stage
    on ``num_proposals`` crops."""
    from functools import partial

    from models.extractors.timm_extractor import TimmExtractor
    from models.heads.box_head import BoxHead
    from models.meta_arch.two_stage import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(
        extractor=TimmExtractor(model_name="resnet18"),
        num_classes=3,
        box_head=partial(BoxHead, batch_size=16),
        num_proposals=6,
    ).eval()
    x = torch.rand(1, 3, 96, 96)
    report = count_predict(model, x)
    assert report.by_part["extractor"] == pytest.approx(_alone(model.extractor, x), rel=1e-9)
    assert report.by_part["neck"] == 0
    classifier = model.box_head.classifier
    side = classifier.crop_size // classifier.pool_kernel
    on_crops = _alone(classifier.stage, torch.rand(6, model.crop_info.channels, side, side))
    assert report.by_part["head"] >= on_crops + report.by_op["torchvision.roi_align"]
    assert sum(report.by_part.values()) == pytest.approx(report.gmacs, rel=1e-9)


def test_parts_of_torchvision_ssdlite():
    """torchvision's SSDlite: ``features`` is the extractor, its ``extra`` ModuleList the neck
    (its blocks are called one by one, never the list): together the backbone counted alone."""
    model = TorchvisionDetector(name="ssdlite320_mobilenet_v3_large", num_classes=3, image_size=160)
    x = model.preprocess([torch.rand(3, 160, 160)]).tensor
    report = count_predict(model, x)
    backbone = _alone(model.model.backbone, x)
    assert report.by_part["neck"] > 0 and report.by_part["extractor"] > 0
    assert report.by_part["extractor"] + report.by_part["neck"] == pytest.approx(backbone, rel=1e-9)
    assert sum(report.by_part.values()) == pytest.approx(report.gmacs, rel=1e-9)
