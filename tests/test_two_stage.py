"""Faster R-CNN and R-FCN: training steps over two extractor families, eval schema, the
FLOP hook (Figure 6 of Huang et al.), output stride, the last stage at stride 1 on the crops,
heads, OHEM, configs, skipped builds."""

from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

from benchmark.measure.flops import count_predict
from models.errors import IncompatibleConfigError
from models.extractors.base import FeatureExtractor, FeatureInfo, LastStage
from models.extractors.sequential import SequentialExtractor
from models.extractors.timm_extractor import TimmExtractor
from models.heads.box_classifier import BoxClassifier
from models.heads.box_head import BoxHead, OHEMBoxHead
from models.heads.rfcn import PSRoIHead
from models.heads.rpn import RPN
from models.meta_arch.two_stage import RFCN, FasterRCNN

RPN96 = partial(RPN, image_size=96, pre_nms_topk=200)
SMALL = {"rpn": RPN96, "num_proposals": 20, "num_proposals_train": 30}


class ToyExtractor(FeatureExtractor):
    """A 16x16 patchify conv as ``c4`` and a strided conv stage: builds in milliseconds."""

    def __init__(self, with_c4: bool = True, splittable: bool = True):
        super().__init__()
        self.c4 = nn.Conv2d(3, 8, 16, 16)
        self.c5 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.splittable = splittable
        self.feature_info = [
            FeatureInfo("c4" if with_c4 else "c3", 8, 16),
            FeatureInfo("c5", 16, 32),
        ]

    def forward(self, x):
        c4 = self.c4(x)
        return {self.feature_info[0].name: c4, "c5": self.c5(c4)}

    def split_last_stage(self):
        if not self.splittable:
            return super().split_last_stage()
        trunk = SequentialExtractor(
            [("c4", self.c4)], {"c4": self.feature_info[0]}, mean=self.mean, std=self.std
        )
        return LastStage(trunk=trunk, stage=self.c5, out_channels=16, crop_size=17)


def _targets():
    return [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 90.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


def _build(arch, model_name, **kw):
    torch.manual_seed(0)
    if arch is RFCN:
        extractor = TimmExtractor(model_name=model_name, output_stride=16)
        return RFCN(extractor=extractor, num_classes=3, **SMALL, **kw)
    return FasterRCNN(
        extractor=TimmExtractor(model_name=model_name),
        num_classes=3,
        box_head=partial(BoxHead, batch_size=16),
        **SMALL,
        **kw,
    )


@pytest.fixture(scope="module", params=[FasterRCNN, RFCN], ids=["faster_rcnn", "rfcn"])
def resnet_model(request):
    return _build(request.param, "resnet18")


@pytest.mark.parametrize("arch", [FasterRCNN, RFCN], ids=["faster_rcnn", "rfcn"])
def test_training_step_mobilenet(arch):
    _check_training_step(_build(arch, "mobilenetv3_small_100"))


def test_training_step_resnet(resnet_model):
    _check_training_step(resnet_model)


def _check_training_step(model):
    model.train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]  # padded batch
    losses = model(images, _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    total = sum(losses.values())
    assert torch.isfinite(total) and all(float(v.detach()) > 0 for v in losses.values())
    total.backward()
    for module in (model.rpn, model.box_head):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.extractor.parameters())
    model.zero_grad()


def test_eval_output_schema(resnet_model):
    model = resnet_model.eval()
    sizes = [(96, 96), (64, 80)]
    with torch.inference_mode():
        outputs = model.predict(model.preprocess([torch.rand(3, *s) for s in sizes]).tensor)
        dets = model.postprocess(outputs, sizes)
    assert outputs["rois"].shape[1] == 5 and len(outputs["rois"]) <= 2 * model.num_proposals
    assert outputs["cls_logits"].shape == (len(outputs["rois"]), 4)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, sizes, strict=True):
        assert set(d) == {"boxes", "scores", "labels"}
        assert (
            d["boxes"].shape == (len(d["scores"]), 4) and len(d["scores"]) <= model.max_detections
        )
        assert d["labels"].dtype == torch.int64
        if len(d["labels"]):
            assert d["labels"].min() >= 0 and d["labels"].max() < 3
            assert (d["boxes"][:, 0::2] <= w).all() and (d["boxes"][:, 1::2] <= h).all()
            assert (d["boxes"] >= 0).all() and (d["scores"][:-1] >= d["scores"][1:]).all()


def test_anchor_count_and_sizes(resnet_model):
    model = resnet_model
    assert model.rpn.anchors_per_location == 12
    assert model.num_anchors((96, 96)) == 6 * 6 * 12
    out = model.eval().predict(model.preprocess(torch.rand(1, 3, 96, 96)).tensor)
    assert out["anchors"].shape == (model.num_anchors((96, 96)), 4)
    # Base size 256 * 96 / 600: the smallest anchor suits a 96 px image.
    assert model.rpn.anchor_sizes[0] == pytest.approx(0.25 * 256 * 96 / 600)


def test_fixed_proposal_mode_runs_exactly_num_proposals(resnet_model):
    model = resnet_model.eval()
    x = model.preprocess(torch.rand(2, 3, 96, 96)).tensor
    with torch.inference_mode(), model.flop_count_mode():
        assert model.fixed_proposals
        out = model.predict(x)
    assert not model.fixed_proposals
    assert out["rois"].shape == (2 * model.num_proposals, 5)


def _gmacs(model, num_proposals, size=96):
    model.num_proposals = num_proposals
    report = count_predict(model, model.preprocess(torch.rand(1, 3, size, size)).tensor)
    assert report.num_proposals == num_proposals and report.uncounted_ops == []
    return report.gmacs


def test_flops_grow_linearly_with_proposals_for_faster_rcnn_only():
    """Huang et al. Figure 6: Faster R-CNN's cost is per RoI, R-FCN's is per image."""
    frcnn = _build(FasterRCNN, "resnet18")
    g10, g150, g300 = (_gmacs(frcnn, n) for n in (10, 150, 300))
    assert g300 > 5 * g10
    assert (g300 - g150) / (g150 - g10) == pytest.approx(150 / 140, rel=0.02)  # linear in N
    rfcn = _build(RFCN, "resnet18")
    r10, r300 = _gmacs(rfcn, 10), _gmacs(rfcn, 300)
    assert r10 <= r300 < 1.01 * r10


@pytest.mark.parametrize("arch", [FasterRCNN, RFCN], ids=["faster_rcnn", "rfcn"])
def test_output_stride_8_map_and_cost(arch):
    models = {}
    for stride in (16, 8):
        torch.manual_seed(0)
        models[stride] = arch(
            extractor=TimmExtractor(model_name="resnet18", output_stride=stride),
            num_classes=3,
            **{**SMALL, "num_proposals": 10},
        )
    m8 = models[8]
    assert m8.rpn_info.stride == 8 and m8.crop_info.stride == 8 and m8.size_divisible == 8
    assert m8.output_stride == 8 and models[16].output_stride == 16
    out = m8.eval().predict(m8.preprocess(torch.rand(1, 3, 96, 96)).tensor)
    assert out["rpn_logits"].shape[1] == 12 * 12 * 12  # 96 / 8 = 12 cells per side
    # Dilating conv4 quadruples the trunk's last stage and the RPN; the per-RoI part is equal.
    assert _gmacs(m8, 10) > 1.15 * _gmacs(models[16], 10)


def test_box_classifier_crop_size_from_extractor_and_shapes():
    split = ToyExtractor().split_last_stage()
    head = BoxClassifier(last_stage=split, in_channels=8, stride=16, num_classes=4)
    assert head.crop_size == 17 and head.pool_kernel == 1  # Inception-style: no max-pool
    head14 = BoxClassifier(last_stage=split, in_channels=8, stride=16, num_classes=4, crop_size=14)
    assert head14.pool_kernel == 2
    rois = torch.tensor([[0.0, 0, 0, 40, 40], [1.0, 8, 8, 60, 30], [1.0, 0, 0, 5, 5]])
    cls, box = head14(torch.rand(2, 8, 6, 6), rois)
    assert cls.shape == (3, 5) and box.shape == (3, 4, 4)


@pytest.mark.parametrize("agnostic", [True, False])
def test_ps_roi_head_shapes_and_voting(agnostic):
    head = PSRoIHead(
        in_channels=8,
        stride=16,
        num_classes=3,
        bins=3,
        reduce_channels=None,
        class_agnostic_boxes=agnostic,
    )
    k2, outs = 9, 4 + 4 * (1 if agnostic else 3)
    assert head.ps.out_channels == k2 * outs
    rois = torch.tensor([[0.0, 0, 0, 40, 40], [1.0, 8, 8, 60, 30]])
    cls, box = head(torch.rand(2, 8, 6, 6), rois)
    assert cls.shape == (2, 4) and box.shape == (2, 1 if agnostic else 3, 4)
    # Position sensitivity: bin (i, j) of output c reads channel c*k*k + i*k + j only, and
    # the bins are averaged. With map channel value = its bin index, every vote is mean(0..8).
    with torch.no_grad():
        head.ps.weight.zero_()
        head.ps.bias.copy_(torch.arange(k2 * outs) % k2)
    cls, _ = head(torch.rand(2, 8, 6, 6), rois)
    assert torch.allclose(cls, torch.full_like(cls, 4.0))


def test_ohem_keeps_the_hardest_rois_per_image():
    model = RFCN(
        extractor=ToyExtractor(), num_classes=2, box_head=partial(OHEMBoxHead, ohem_rois=2)
    )
    # Five RoIs of image 0, three of image 1, all background; CE grows with the logit of class 1.
    hard = torch.tensor([0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 0.0, 1.0])
    logits = torch.stack([torch.zeros(8), hard, torch.zeros(8)], dim=1)
    outputs = {
        "rois": torch.cat([torch.tensor([0.0] * 5 + [1.0] * 3)[:, None], torch.rand(8, 4)], 1),
        "cls_logits": logits,
        "box_deltas": torch.zeros(8, 1, 4),
        "roi_labels": torch.zeros(8, dtype=torch.int64),
        "roi_box_targets": torch.zeros(8, 4),
    }
    ce = torch.nn.functional.cross_entropy(
        logits, torch.zeros(8, dtype=torch.int64), reduction="none"
    )
    losses = model.box_head.loss(outputs)
    expected = (ce[3] + ce[1] + ce[5] + ce[7]) / 4  # top 2 of each image
    assert float(losses["loss_cls"]) == pytest.approx(float(expected))
    assert float(losses["loss_box"]) == 0.0
    model.box_head.ohem_rois = None
    assert float(model.box_head.loss(outputs)["loss_cls"]) == pytest.approx(float(ce.mean()))


def test_ohem_training_step_backprops_the_kept_rois_with_the_full_set_gradients(monkeypatch):
    """R-FCN's training predict scores every RoI without gradient and re-pools only the kept
    ones: loss and gradients must equal OHEM over the full, differentiable set."""
    torch.manual_seed(0)
    model = RFCN(
        extractor=ToyExtractor(),
        num_classes=3,
        rpn=RPN96,
        box_head=partial(OHEMBoxHead, ohem_rois=4),
    ).train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]

    def step():
        torch.manual_seed(1)  # the RPN's anchor sampling
        model.zero_grad()
        outputs = model.predict(torch.stack(images), _targets())
        losses = model.loss(outputs, _targets(), [(96, 96)] * 2)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return outputs, losses, grads

    fast_out, fast, fast_grads = step()
    assert "ohem_selected" in fast_out and len(fast_out["rois"]) <= 2 * 4
    monkeypatch.setattr(OHEMBoxHead, "forward", BoxHead.forward)  # all RoIs with grad
    full_out, full, full_grads = step()
    assert len(full_out["rois"]) > len(fast_out["rois"])
    for k in full:
        assert torch.allclose(fast[k], full[k], atol=1e-6), k
    assert fast_grads.keys() == full_grads.keys()
    for n, g in full_grads.items():
        assert torch.allclose(fast_grads[n], g, atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"positive_fraction": 0.0}])
def test_bad_second_stage_minibatch_is_a_clear_error(kw):
    with pytest.raises(ValueError, match="second_stage_batch_size"):
        FasterRCNN(extractor=ToyExtractor(), num_classes=2, box_head=partial(BoxHead, **kw))


def test_toy_extractor_two_stage_end_to_end():
    """Any splittable extractor works; crop size comes from the split (17 here)."""
    for arch in (FasterRCNN, RFCN):
        model = arch(extractor=ToyExtractor(), num_classes=3, rpn=RPN96, num_proposals=5)
        model.train()
        losses = model([torch.rand(3, 96, 96)], _targets()[:1])
        assert torch.isfinite(sum(losses.values()))
        model.eval()
        with torch.inference_mode():
            assert len(model([torch.rand(3, 64, 96)])) == 1


def test_incompatible_extractors_raise_at_build():
    with pytest.raises(IncompatibleConfigError):
        FasterRCNN(extractor=ToyExtractor(splittable=False), num_classes=2)
    with pytest.raises(IncompatibleConfigError):
        RFCN(extractor=ToyExtractor(with_c4=False), num_classes=2)


@pytest.mark.parametrize("name", ["faster_rcnn", "rfcn"])
def test_sweep_config_builds(name):
    """The YAML's keys match the constructor; anchors follow ``data.image_size``."""
    with initialize_config_module("sweeps", version_base="1.3"):
        cfg = compose("config", overrides=[f"meta_arch={name}", "data.image_size=96"])
    model = instantiate(cfg.meta_arch, extractor=ToyExtractor(), num_classes=2)
    assert type(model) is (FasterRCNN if name == "faster_rcnn" else RFCN)
    assert model.resize_mode == "shorter_side" and model.num_proposals == 300
    head = model.box_head
    assert type(head) is (BoxHead if name == "faster_rcnn" else OHEMBoxHead)
    assert isinstance(head.classifier, BoxClassifier if name == "faster_rcnn" else PSRoIHead)
    assert model.rpn.anchor_sizes[2] == pytest.approx(256 * 96 / 600)
    # The YAML states only what differs from the classes: the paper's settings come from them.
    assert (model.rpn.batch_size, model.rpn.nms_threshold, model.rpn.pre_nms_topk) == (
        256,
        0.7,
        1000,
    )
    if name == "faster_rcnn":
        assert (head.batch_size, head.positive_fraction) == (64, 0.25)  # train.second_stage_...
        assert head.classifier.crop_size == 17  # the toy extractor's split says 17
    else:
        assert (head.classifier.bins, head.crop_size, head.ohem_rois) == (7, 21, 128)


def test_partial_head_factory_options():
    model = FasterRCNN(
        extractor=ToyExtractor(),
        num_classes=2,
        box_classifier=partial(BoxClassifier, crop_size=7, crop_pool_kernel=1),
    )
    head = model.box_head.classifier
    assert model.crop_size == head.crop_size == 7 and head.pool_kernel == 1


def test_last_stage_at_stride_1_on_the_crops_costs_what_the_hand_count_says():
    """Huang et al.'s conv5_1 at stride 1: ResNet-18's layer4 on the 7x7 (pooled) crop keeps
    7x7 instead of 4x4. Per RoI that adds (49 - 16) output positions of every layer4
    convolution: 3x3 256->512, three 3x3 512->512 and the 1x1 256->512 shortcut."""
    cheap = _build(FasterRCNN, "resnet18")
    paper = _build(FasterRCNN, "resnet18", box_classifier=partial(BoxClassifier, stage_stride=1))
    paper.load_state_dict(cheap.state_dict())  # same weights: the re-strided copy has no new ones
    assert paper.box_head.classifier.stage_stride == 1
    split = cheap.box_head.classifier
    crops = torch.rand(2, 256, 7, 7)
    assert split.stage(crops).shape[-2:] == (4, 4)
    assert paper.box_head.classifier.stage(crops).shape[-2:] == (7, 7)
    per_position = 256 * 512 * 9 + 3 * 512 * 512 * 9 + 256 * 512
    n = 12
    extra = _gmacs(paper, n) - _gmacs(cheap, n)
    assert extra * 1e9 == pytest.approx(n * (49 - 16) * per_position, rel=1e-9)


def test_stride_1_is_refused_where_the_stage_cannot_run_at_stride_1():
    """timm's Inception v3 pools functionally in Mixed_7a: its branches would disagree."""
    with pytest.raises(IncompatibleConfigError, match="stride 1"):
        FasterRCNN(
            extractor=TimmExtractor(model_name="inception_v3"),
            num_classes=2,
            box_classifier=partial(BoxClassifier, stage_stride=1),
        )
