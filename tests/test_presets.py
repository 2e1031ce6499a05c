"""The paper presets (sweeps/preset/) and the neck choice (sweeps/neck/), composed from the YAMLs.

Every preset must build, run ``predict`` at its native resolution and give the papers'
feature-map sizes and "#Boxes": SSD300 8732 and SSD512 24564 (Liu et al.), RefineDet Table 1
(6375 at 320, 16320 at 512, the same for ResNet-101), DSSD Table 7 (17080 at 321, 43688 at 513).
"""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import sweeps
from benchmark.build import build_detector
from models.meta_arch.refinedet import RefineDet
from models.meta_arch.single_shot import DSSD, SSD
from models.necks.dssd import DSSDDecoder
from models.necks.refinenet import RefineNetTopDown
from models.necks.tcb import TCBTopDown

SWEEPS = Path(sweeps.__file__).parent
VOC_CLASSES = 20


def _square(*sides):
    return [(s, s) for s in sides]


# preset -> (input side, prediction-map sizes, default boxes per image)
PAPER = {
    "ssd300": (300, _square(38, 19, 10, 5, 3, 1), 8732),
    "ssd512": (512, _square(64, 32, 16, 8, 4, 2, 1), 24564),
    "dssd321": (321, _square(40, 20, 10, 5, 3, 1), 17080),
    "dssd513": (513, _square(64, 32, 16, 8, 4, 2, 1), 43688),
    "refinedet320": (320, _square(40, 20, 10, 5), 6375),
    "refinedet512": (512, _square(64, 32, 16, 8), 16320),
    "refinedet320_resnet101": (320, _square(40, 20, 10, 5), 6375),
    "refinedet512_resnet101": (512, _square(64, 32, 16, 8), 16320),
}


@pytest.fixture(scope="module", autouse=True)
def hydra_sweeps():
    with initialize_config_module("sweeps", version_base="1.3"):
        yield


def _build(overrides):
    cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    return cfg, build_detector(cfg, num_classes=VOC_CLASSES).eval()


def test_every_preset_has_its_paper_count():
    assert sorted(p.stem for p in (SWEEPS / "preset").glob("*.yaml")) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_matches_the_paper(name):
    side, sizes, boxes = PAPER[name]
    cfg, model = _build([f"+preset={name}"])
    assert int(cfg.data.image_size) == side
    assert model.map_sizes((side, side)) == sizes
    assert model.num_anchors((side, side)) == boxes
    with torch.inference_mode():
        out = model.predict(model.preprocess(torch.rand(1, 3, side, side)).tensor)
    assert out["cls_logits"].shape == (1, boxes, VOC_CLASSES + 1)
    assert out["box_deltas"].shape == (1, boxes, 4) and out["anchors"].shape == (boxes, 4)
    assert all(torch.isfinite(v).all() for v in out.values())
    # The papers' inference settings (Liu et al.'s and RefineDet's 400 / 0.45 / 200).
    assert (model.pre_nms_topk, model.nms_threshold, model.max_detections) == (400, 0.45, 200)
    CHECKS[name.split("_")[0].rstrip("0123456789")](model, side)


def _check_ssd(model, side):
    assert type(model) is SSD and model.top_down is None
    assert model.anchors_per_location[0] == 4 and model.anchors_per_location[1] == 6
    assert float(model.extractor.l2norm.weight[0].detach()) == 20.0


def _check_dssd(model, side):
    assert type(model) is DSSD and isinstance(model.top_down, DSSDDecoder)
    assert all(n == 8 for n in model.anchors_per_location)  # ratios 1.6, 2, 3 everywhere
    assert all(b.combine == "product" for b in model.top_down.blocks)
    assert {f.channels for f in model.top_down.feature_info[:-1]} == {512}  # Figure 3
    assert model.head.variant == "c"
    assert [f.stride for f in model.extractor.feature_info] == [8, 16]  # conv5_x dilated


def _check_refinedet(model, side):
    assert type(model) is RefineDet and isinstance(model.top_down, TCBTopDown)
    assert model.filter_threshold == 0.99 and model.anchors_per_location == [3] * 4
    ext = model.extractor
    if hasattr(ext, "l2norm_conv5_3"):  # VGG-16: conv4_3 and conv5_3 L2Norm scales
        assert float(ext.l2norm.weight[0].detach()) == 10.0
        assert float(ext.l2norm_conv5_3.weight[0].detach()) == 8.0
    anchors = model.default_boxes(model.map_sizes((side, side)), (side, side))
    sizes = (anchors[:, 2:] - anchors[:, :2]).prod(-1).sqrt()
    counts = [3 * h * w for h, w in model.map_sizes((side, side))]
    first = torch.tensor([0, *counts[:-1]]).cumsum(0)  # first anchor (ratio 0.5) of each layer
    assert torch.allclose(sizes[first], torch.tensor([32.0, 64, 128, 256]))  # 4 x stride


CHECKS = {"ssd": _check_ssd, "dssd": _check_dssd, "refinedet": _check_refinedet}


NECKS = sorted(p.stem for p in (SWEEPS / "neck").glob("*.yaml"))
TOP_DOWN = {
    "dssd": DSSDDecoder,
    "dssd512": DSSDDecoder,
    "tcb": TCBTopDown,
    "refinedet": TCBTopDown,
    "refinenet": RefineNetTopDown,
}


# Every neck choice once, on each detector in turn (refinedet, ssd, dssd, ...), so every
# context module and every detector is built; the meta-architectures' own defaults are
# covered by the presets. All 18 pairs would triple the time for no new code path.
PAIRS = [(neck, ("refinedet", "ssd", "dssd")[k % 3]) for k, neck in enumerate(NECKS)]


@pytest.mark.parametrize("neck,meta_arch", PAIRS)
def test_neck_choice_swaps_the_context_module(neck, meta_arch):
    side = 96
    overrides = [f"meta_arch={meta_arch}", f"neck={neck}", "extractor=mobilenet_v3_small"]
    _, model = _build(overrides + [f"data.image_size={side}"])
    expected = TOP_DOWN.get(neck)
    assert (model.top_down is None) if expected is None else isinstance(model.top_down, expected)
    with torch.inference_mode():
        out = model.predict(model.preprocess(torch.rand(1, 3, side, side)).tensor)
    assert out["cls_logits"].shape[1] == model.num_anchors((side, side))


@pytest.mark.parametrize("neck", ["ssd_extra", "none", "tcb"])
def test_a_neck_choice_overrides_the_presets_own(neck):
    """`+preset=dssd321 neck=ssd_extra` is DSSD's first training stage (SSD321 + PM(c))."""
    cfg = compose("config", overrides=["+preset=dssd321", f"neck={neck}"])
    top_down = cfg.meta_arch.top_down
    if neck == "tcb":
        assert top_down._target_.endswith("TCBTopDown") and "combine" not in top_down
    else:
        assert top_down is None
    assert cfg.meta_arch.head.out_channels == 1024  # the rest of the preset stays
