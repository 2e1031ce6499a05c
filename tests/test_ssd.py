"""SSD: shapes, default-box bookkeeping, a finite training step, the eval output schema."""

import pytest
import torch

from models.extractors.timm_extractor import TimmExtractor
from models.meta_arch.single_shot import SSD
from models.necks.ssd_extra import SSDExtraLayers


def _targets(n_images: int = 2):
    return [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ][:n_images]


@pytest.fixture(scope="module")
def ssd():
    torch.manual_seed(0)
    return SSD(extractor=TimmExtractor(model_name="resnet18"), num_classes=3)


def test_predict_shapes_match_default_boxes(ssd):
    ssd.eval()
    x = torch.rand(2, 3, 128, 128)
    out = ssd.predict(ssd.preprocess(x).tensor)
    a = ssd.num_anchors((128, 128))
    assert out["cls_logits"].shape == (2, a, 4)  # 3 classes + background
    assert out["box_deltas"].shape == (2, a, 4)
    assert out["anchors"].shape == (a, 4)


def test_training_step_finite_loss_and_gradients(ssd):
    ssd.train()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    losses = ssd(images, _targets())
    assert set(losses) == {"loss_cls", "loss_box"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    grads = [p.grad for p in ssd.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in ssd.head.parameters())
    ssd.zero_grad()


def test_only_negative_images_give_zero_loss(ssd):
    ssd.train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    # Two images: batch norm on the 1x1 extra layers needs more than one value per channel.
    losses = ssd([torch.rand(3, 128, 128)] * 2, [empty, empty])
    total = sum(losses.values())
    assert torch.isfinite(total) and float(total) == 0.0
    total.backward()  # the zero-positive rule keeps the graph usable
    ssd.zero_grad()


def test_eval_output_schema(ssd):
    ssd.eval()
    with torch.inference_mode():
        dets = ssd([torch.rand(3, 128, 128), torch.rand(3, 128, 128)])
    assert len(dets) == 2
    for d in dets:
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].shape[1] == 4 and d["boxes"].shape[0] == d["scores"].shape[0]
        assert len(d["boxes"]) <= ssd.max_detections
        assert d["labels"].dtype == torch.int64
        if len(d["labels"]):
            assert d["labels"].min() >= 0 and d["labels"].max() < 3
            assert (d["boxes"] >= 0).all() and (d["boxes"] <= 128).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()  # sorted by score


@pytest.mark.slow  # end to end: trains a ResNet-18 SSD for 8 steps
def test_learns_a_single_image():
    """A few steps on one image must reduce the loss: the targets and the head line up."""
    torch.manual_seed(0)
    model = SSD(extractor=TimmExtractor(model_name="resnet18"), num_classes=3)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    image, target = [torch.rand(3, 96, 96)] * 2, _targets(1) * 2
    first = None
    for _ in range(8):
        loss = sum(model(image, target).values())
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first


def test_extra_layers_follow_the_given_layout():
    ext = TimmExtractor(model_name="resnet18")
    neck = SSDExtraLayers(ext.feature_info, depths=[64, 32], strides=[2, 1], paddings=[1, 0])
    neck.eval()
    feats = ext(torch.rand(1, 3, 160, 160))
    maps = neck(feats)
    assert [m.shape[1] for m in maps] == [f.channels for f in neck.feature_info]
    assert [tuple(m.shape[-2:]) for m in maps] == [(10, 10), (5, 5), (3, 3), (1, 1)]
