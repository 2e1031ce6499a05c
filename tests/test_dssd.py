"""DSSD: default-box layout, a finite training step, the zero-positive rule, stage-1 freezing
and starting from an SSD + PM(c) checkpoint."""

from functools import partial

import pytest
import torch

from models.extractors.timm_extractor import TimmExtractor
from models.heads.dssd_head import DSSDHead
from models.meta_arch.single_shot import DSSD, SSD
from models.necks.dssd import DSSDDecoder
from models.necks.residual_extra import ResidualExtraLayers

TARGETS = [
    {
        "boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 50]]),
        "labels": torch.tensor([0, 2]),
    },
    # The large box matches the coarse extra layers' default boxes: at initialization the
    # deconvolution modules pass only their lateral path, so the extras learn through their own
    # heads, which need a positive there.
    {
        "boxes": torch.tensor([[30.0, 30, 90, 100], [4, 6, 124, 120]]),
        "labels": torch.tensor([1, 0]),
    },
]
# Narrow layers keep the tests fast; the structure is the paper's.
SMALL = {
    "neck": partial(ResidualExtraLayers, depths=[128, 64]),
    "top_down": partial(DSSDDecoder, channels=64),
    "head": partial(DSSDHead, mid_channels=32, out_channels=128),
}


def _dssd(**kwargs) -> DSSD:
    torch.manual_seed(0)
    return DSSD(extractor=TimmExtractor(model_name="resnet18"), num_classes=3, **(SMALL | kwargs))


@pytest.fixture(scope="module")
def dssd():
    return _dssd()


def test_eight_boxes_per_location_on_every_layer(dssd):
    assert dssd.aspect_ratios == [[1.6, 2.0, 3.0]] * 4
    assert dssd.anchors_per_location == [8] * 4
    assert dssd.map_sizes((128, 128)) == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert dssd.num_anchors((128, 128)) == 8 * (64 + 16 + 4 + 1)


def test_predict_shapes(dssd):
    dssd.eval()
    with torch.inference_mode():
        out = dssd.predict(dssd.preprocess(torch.rand(2, 3, 128, 128)).tensor)
    a = dssd.num_anchors((128, 128))
    assert out["cls_logits"].shape == (2, a, 4) and out["box_deltas"].shape == (2, a, 4)
    assert out["anchors"].shape == (a, 4)


def test_training_step_finite_loss_and_gradients(dssd):
    dssd.train()
    losses = dssd([torch.rand(3, 128, 128) for _ in range(2)], TARGETS)
    total = sum(losses.values())
    assert torch.isfinite(total) and float(total.detach()) > 0
    total.backward()
    grads = {n: p.grad for n, p in dssd.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for part in ("top_down.", "head.blocks.", "head.predictor.", "neck.extras.", "extractor."):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
    dssd.zero_grad()


def test_only_negative_images_give_zero_loss(dssd):
    dssd.train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = dssd([torch.rand(3, 128, 128)] * 2, [empty, empty])
    total = sum(losses.values())
    assert float(total.detach()) == 0.0
    total.backward()  # the zero-positive rule keeps the graph usable
    dssd.zero_grad()


@pytest.mark.parametrize("variant", ["a", "b", "d"])
def test_prediction_module_variants_train(variant):
    model = _dssd(head=partial(DSSDHead, variant=variant, mid_channels=32, out_channels=128))
    losses = model([torch.rand(3, 96, 96)] * 2, TARGETS)
    assert torch.isfinite(sum(losses.values()))


def test_elementwise_sum_variant():
    model = _dssd(top_down=partial(DSSDDecoder, channels=64, combine="sum"))
    assert all(b.combine == "sum" for b in model.top_down.blocks)


def test_stage_one_freezes_the_ssd_part(tmp_path):
    # Stage 0: SSD + PM(c) (no deconvolution path), saved as the trainer does.
    ssd = _dssd(top_down=None)
    torch.save({"model": ssd.state_dict(), "iter": 1}, tmp_path / "checkpoint.pt")

    model = _dssd(freeze_ssd=True, init_checkpoint=str(tmp_path / "checkpoint.pt"))
    for name, value in ssd.state_dict().items():
        if name.startswith(("extractor.", "neck.")):
            assert torch.equal(model.state_dict()[name], value), name
    frozen = [p for m in (model.extractor, model.neck) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.top_down.parameters())
    assert all(p.requires_grad for p in model.head.parameters())

    model.train()
    assert not model.extractor.training and not model.neck.training  # BN statistics fixed
    assert model.top_down.training and model.head.training
    before = {n: t.clone() for n, t in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model([torch.rand(3, 96, 96)] * 2, TARGETS).values()).backward()
    opt.step()
    after = model.state_dict()
    frozen_names = [n for n in before if n.startswith(("extractor.", "neck."))]
    assert all(torch.equal(before[n], after[n]) for n in frozen_names)  # weights and BN buffers
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("top_down."))


def test_init_checkpoint_must_match_something(tmp_path):
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="matches"):
        _dssd(init_checkpoint=str(tmp_path / "other.pt"))


def test_ssd_takes_any_top_down_module():
    torch.manual_seed(0)
    model = SSD(
        extractor=TimmExtractor(model_name="resnet18"),
        num_classes=3,
        top_down=partial(DSSDDecoder, channels=64),
    )
    plain = SSD(extractor=TimmExtractor(model_name="resnet18"), num_classes=3)
    assert model.num_anchors((128, 128)) == plain.num_anchors((128, 128))
    losses = model([torch.rand(3, 128, 128) for _ in range(2)], TARGETS)
    assert torch.isfinite(sum(losses.values()))
