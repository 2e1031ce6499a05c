"""RefineDet: negative anchor filtering, two-step decoding, refined-anchor matching, the
zero-positive rule, and a finite training step."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.anchors import refinedet_anchors
from models.box_ops import BoxCoder
from models.extractors.base import FeatureExtractor, FeatureInfo
from models.extractors.timm_extractor import TimmExtractor
from models.losses import multibox_loss
from models.meta_arch.refinedet import RefineDet
from models.necks.refinenet import RefineNetTopDown
from models.necks.ssd_extra import SSDExtraLayers


class TinyExtractor(FeatureExtractor):
    """Three pooled maps at strides 8/16/32 from one conv: enough to build a RefineDet fast."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.feature_info = [FeatureInfo(f"c{k}", 8, 2**k) for k in (3, 4, 5)]

    def forward(self, x):
        y = self.conv(x)
        return {f.name: F.avg_pool2d(y, f.stride, ceil_mode=True) for f in self.feature_info}


def _tiny(**kwargs) -> RefineDet:
    torch.manual_seed(0)
    neck = partial(SSDExtraLayers, in_features=["c3", "c4", "c5"], depths=[16])
    return RefineDet(extractor=TinyExtractor(), num_classes=3, neck=neck, **kwargs)


def _logits_bg(p_bg: list[float]) -> torch.Tensor:
    """ARM logits ``[1, A, 2]`` with the given background probabilities."""
    p = torch.tensor(p_bg)
    return torch.stack([torch.log(p), torch.log1p(-p)], dim=-1).unsqueeze(0)


# Four hand-made anchors: 0 and 1 cover the object, 2 and 3 are background.
ANCHORS = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [40, 40, 50, 50], [60, 60, 70, 70]])
TARGET = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]


def _outputs(arm_bg, odm_logits):
    return {
        "anchors": ANCHORS,
        "arm_logits": _logits_bg(arm_bg),
        "arm_deltas": torch.zeros(1, 4, 4),  # refined anchors = tiled anchors
        "cls_logits": torch.tensor(odm_logits).unsqueeze(0),
        "box_deltas": torch.zeros(1, 4, 4),
    }


# ODM logits (background, class 0, 1, 2). Anchor 2 would be by far the hardest negative.
ODM = [[0.0, 0, 2, 0], [0.0, 0, 1, 0], [0.0, 5, 0, 0], [1.0, 0, 0, 0]]


def test_negative_anchor_filtering_removes_anchors_from_the_odm_loss_only():
    model = _tiny()
    # Anchor 0 (a positive) and anchor 2 (the hardest negative) are filtered (bg > 0.99).
    out = _outputs([0.995, 0.5, 0.999, 0.3], ODM)
    losses = model.loss(out, TARGET, [(100, 100)])
    logits = out["cls_logits"][0]
    # ODM: one positive left (anchor 1, label 1 -> index 2); the 3:1 quota takes every
    # unfiltered negative, which is only anchor 3. N_odm = 1.
    expected_odm = F.cross_entropy(logits[1:2], torch.tensor([2])) + F.cross_entropy(
        logits[3:4], torch.tensor([0])
    )
    assert torch.allclose(losses["loss_odm_cls"], expected_odm)
    # ARM: unaffected by filtering: positives 0 and 1, negatives 2 and 3 (quota 6 > 2).
    arm = out["arm_logits"][0]
    expected_arm = F.cross_entropy(arm, torch.tensor([1, 1, 0, 0]), reduction="sum") / 2
    assert torch.allclose(losses["loss_arm_cls"], expected_arm)


def test_without_filtering_every_anchor_reaches_the_odm():
    model = _tiny(filter_threshold=1.0)  # Table 3's ablation: theta = 1
    out = _outputs([0.995, 0.5, 0.999, 0.3], ODM)
    losses = model.loss(out, TARGET, [(100, 100)])
    cls_t = torch.tensor([[2, 2, 0, 0]])
    expected = multibox_loss(out["cls_logits"], out["box_deltas"], cls_t, torch.zeros(1, 4, 4))
    assert torch.allclose(losses["loss_odm_cls"], expected["loss_cls"])


def test_odm_with_all_positives_filtered_gives_zero_odm_loss():
    model = _tiny()
    out = _outputs([0.999, 0.999, 0.2, 0.3], ODM)
    out["cls_logits"].requires_grad_()
    losses = model.loss(out, TARGET, [(100, 100)])
    assert losses["loss_odm_cls"].detach() == 0 and losses["loss_odm_box"].detach() == 0
    assert float(losses["loss_arm_cls"].detach()) > 0  # the ARM still has its two positives
    sum(losses.values()).backward()  # the zero-positive rule keeps the graph usable
    assert float(out["cls_logits"].grad.abs().sum()) == 0.0


def test_filtered_anchors_give_no_detections():
    model = _tiny().eval()
    # Every anchor is confidently class 1 in the ODM; the ARM filters anchors 0 and 2.
    out = _outputs([0.995, 0.5, 0.999, 0.3], [[-5.0, -5, 5, -5]] * 4)
    boxes, scores = model.decode(out)
    assert torch.equal(scores[0, :, 1] > 0.5, torch.tensor([False, True, False, True]))
    dets = model.postprocess(out, [(100, 100)])[0]
    kept = {tuple(b.tolist()) for b in dets["boxes"]}
    assert kept == {tuple(ANCHORS[1].tolist()), tuple(ANCHORS[3].tolist())}


def test_two_step_decoding():
    model = _tiny()
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    # ARM: double the width (dw = 5 ln 2 with weight 5) -> refined [-5, 0, 15, 10].
    # ODM: shift right by 0.1 of the *refined* width (dx = 1 with weight 10): 2 px, not 1.
    out = {
        "anchors": anchors,
        "arm_logits": _logits_bg([0.1]),
        "arm_deltas": torch.tensor([[[0.0, 0, 5 * math.log(2), 0]]]),
        "cls_logits": torch.zeros(1, 1, 4),
        "box_deltas": torch.tensor([[[1.0, 0, 0, 0]]]),
    }
    assert torch.allclose(
        model.refined_anchors(out), torch.tensor([[[-5.0, 0, 15, 10]]]), atol=1e-5
    )
    boxes, _ = model.decode(out)
    assert torch.allclose(boxes, torch.tensor([[[-3.0, 0, 17, 10]]]), atol=1e-5)
    # Applying both offsets to the tiled anchor (one step) would shift by 1 px only.
    one_step = BoxCoder().decode(out["arm_deltas"] + out["box_deltas"], anchors)
    assert torch.allclose(one_step, torch.tensor([[[-4.0, 0, 16, 10]]]), atol=1e-5)


def test_odm_matches_the_refined_anchors():
    model = _tiny()
    gt = [{"boxes": torch.tensor([[40.0, 40, 60, 60]]), "labels": torch.tensor([2])}]
    anchors = torch.tensor([[38.0, 38, 58, 58], [0, 0, 20, 20]])  # anchor 1 far from the object
    coder = BoxCoder()
    # The ARM moves anchor 1 exactly onto the object.
    arm_deltas = torch.stack(
        [torch.zeros(4), coder.encode(gt[0]["boxes"][0], anchors[1])]
    ).unsqueeze(0)
    out = {"anchors": anchors, "arm_deltas": arm_deltas}
    tiled_cls, _ = model.assign_targets(anchors, gt)
    refined_cls, refined_box = model.assign_targets(model.refined_anchors(out), gt)
    assert tiled_cls.tolist() == [[3, 0]]  # ARM: anchor 0 overlaps (IoU 0.68), anchor 1 does not
    assert refined_cls.tolist() == [[3, 3]]  # ODM: both refined anchors are positives
    assert torch.allclose(refined_box[0, 1], torch.zeros(4), atol=1e-5)


def test_anchor_layout_and_counts():
    model = _tiny()
    assert model.anchors_per_location == [3, 3, 3, 3]
    assert model.map_sizes((128, 128)) == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert model.num_anchors((128, 128)) == 3 * (256 + 64 + 16 + 4)
    expected = refinedet_anchors([(16, 16), (8, 8), (4, 4), (2, 2)], (128, 128), [8, 16, 32, 64])
    assert torch.equal(model.default_boxes(model.map_sizes((128, 128)), (128, 128)), expected)
    sizes = (expected[:, 2:] - expected[:, :2]).prod(-1).sqrt()
    assert torch.allclose(sizes[:3], torch.full((3,), 32.0))  # 4 x stride 8


def test_only_negative_images_give_zero_loss():
    model = _tiny().train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)] * 2, [empty, empty])
    assert set(losses) == {"loss_arm_cls", "loss_arm_box", "loss_odm_cls", "loss_odm_box"}
    total = sum(losses.values())
    assert float(total.detach()) == 0.0
    total.backward()


@pytest.mark.parametrize("top_down", ["tcb", "refinenet", None])
def test_training_step_is_finite(top_down):
    torch.manual_seed(0)
    kwargs = {
        "refinenet": {"top_down": partial(RefineNetTopDown, channels=32)},
        None: {"top_down": None},
    }
    model = RefineDet(
        extractor=TimmExtractor(model_name="resnet18"),
        num_classes=3,
        neck=partial(SSDExtraLayers, in_features=["c3", "c4", "c5"], depths=[128]),
        **kwargs.get(top_down, {}),
    ).train()
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 50]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[30.0, 30, 90, 100]]), "labels": torch.tensor([1])},
    ]
    losses = model([torch.rand(3, 128, 128) for _ in range(2)], targets)
    total = sum(losses.values())
    assert torch.isfinite(total) and all(float(v.detach()) > 0 for v in losses.values())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.inference_mode():
        dets = model([torch.rand(3, 128, 128)])
    assert len(dets[0]["boxes"]) <= model.max_detections == 200
