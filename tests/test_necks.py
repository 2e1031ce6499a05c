"""Top-down context modules and their parts: shapes at odd sizes, gradients, initial scale."""

import pytest
import torch

from models.extractors.base import FeatureInfo
from models.extractors.caffe_resnet import CaffeResNet
from models.heads.dssd_head import DSSDHead, prediction_module
from models.necks.dssd import DeconvolutionModule, DSSDDecoder
from models.necks.refinenet import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNetTopDown,
    ResidualConvUnit,
)
from models.necks.residual_extra import ExtraBottleneck, ResidualExtraLayers
from models.necks.tcb import TCBTopDown, TransferConnectionBlock
from models.necks.topdown import fit_to

# Source-map layouts with every odd/even transition the decoders meet:
# SSD321 (1 -> 3 is 2n + 1, 3 -> 5 is 2n - 1), SSD300 (19 -> 38), and a non-square one.
LAYOUTS = {
    "ssd321": [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3), (1, 1)],
    "ssd300": [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
    "odd_rect": [(15, 21), (8, 11), (4, 6), (2, 3), (1, 1)],
}
CHANNELS = [24, 32, 16, 16, 8, 8]


def _maps(sizes, channels=CHANNELS, batch=2):
    torch.manual_seed(0)
    info = [FeatureInfo(f"p{k}", c, 8 * 2**k) for k, c in enumerate(channels[: len(sizes)])]
    maps = [torch.randn(batch, f.channels, h, w) for f, (h, w) in zip(info, sizes, strict=True)]
    return info, maps


def test_fit_to_crops_and_replicates():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(fit_to(x, (3, 3)), x[..., :3, :3])
    padded = fit_to(x, (5, 6))
    assert padded.shape[-2:] == (5, 6)
    assert torch.equal(padded[..., :4, :4], x)
    assert torch.equal(padded[..., 4, :4], x[..., 3, :])  # last row replicated
    assert torch.equal(padded[..., :4, 5], x[..., :, 3])  # last column replicated


@pytest.mark.parametrize("deep,lateral", [(1, 3), (3, 5), (5, 10), (19, 38), (2, 3)])
@pytest.mark.parametrize("combine", ["product", "sum"])
def test_deconvolution_module_reaches_odd_lateral_sizes(deep, lateral, combine):
    m = DeconvolutionModule(16, 8, 32, combine=combine)
    out = m(torch.randn(2, 16, deep, deep), torch.randn(2, 8, lateral, lateral))
    assert out.shape == (2, 32, lateral, lateral)
    assert (out >= 0).all()  # ReLU after the combination


def test_deconvolution_module_product_and_sum_differ():
    torch.manual_seed(0)
    prod = DeconvolutionModule(8, 8, 8, combine="product").eval()
    summ = DeconvolutionModule(8, 8, 8, combine="sum").eval()
    summ.load_state_dict(prod.state_dict())
    deep, lat = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 5, 5)
    assert not torch.allclose(prod(deep, lat), summ(deep, lat))
    with pytest.raises(ValueError, match="combine"):
        DeconvolutionModule(8, 8, 8, combine="concat")


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_deconvolution_modules_start_as_their_lateral_path(combine):
    """Untrained top-down context must not scramble the fine maps: at initialization each
    module outputs ReLU(lateral path), whatever the deeper map holds."""
    info, maps = _maps(LAYOUTS["ssd321"])
    dec = DSSDDecoder(info, channels=16, combine=combine)
    outs = dec(maps)
    for block, lateral, out in zip(dec.blocks, maps[:-1], outs[:-1], strict=True):
        assert torch.allclose(out, block.lateral(lateral).relu(), atol=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dssd_decoder_keeps_sizes_and_passes_the_top_map(layout):
    info, maps = _maps(LAYOUTS[layout])
    dec = DSSDDecoder(info, channels=64)
    outs = dec(maps)
    assert [tuple(o.shape[-2:]) for o in outs] == LAYOUTS[layout]
    assert [o.shape[1] for o in outs] == [f.channels for f in dec.feature_info]
    assert [f.channels for f in dec.feature_info] == [64] * (len(info) - 1) + [info[-1].channels]
    assert outs[-1] is maps[-1]  # the deconvolution path starts from the deepest SSD layer


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_tcb_top_down_keeps_sizes(layout):
    info, maps = _maps(LAYOUTS[layout])
    tcb = TCBTopDown(info, channels=32)
    outs = tcb(maps)
    assert [tuple(o.shape) for o in outs] == [(2, 32, h, w) for h, w in LAYOUTS[layout]]
    assert all((o >= 0).all() for o in outs)  # each TCB ends with a ReLU


def test_tcb_uses_the_deeper_block_and_the_deepest_has_none():
    info, maps = _maps(LAYOUTS["ssd300"][-3:])
    tcb = TCBTopDown(info, channels=16).eval()
    assert tcb.blocks[-1].up is None and all(b.up is not None for b in tcb.blocks[:-1])
    base = tcb(maps)[0]
    changed = [maps[0], maps[1], maps[2] + 1.0]  # only the deepest map changes
    assert not torch.allclose(tcb(changed)[0], base)  # ... and reaches the finest output
    with pytest.raises(ValueError, match="deeper"):
        TransferConnectionBlock(8, 16)(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_refinenet_top_down_keeps_sizes(layout):
    info, maps = _maps(LAYOUTS[layout])
    net = RefineNetTopDown(info, channels=16)
    outs = net(maps)
    assert [tuple(o.shape) for o in outs] == [(2, 16, h, w) for h, w in LAYOUTS[layout]]


def test_refinenet_parts_shapes_at_odd_sizes():
    x = torch.randn(2, 8, 7, 9)
    assert ResidualConvUnit(8)(x).shape == x.shape
    assert ChainedResidualPooling(8, num_blocks=3)(x).shape == x.shape
    fused = MultiResolutionFusion([8, 12], 8)([x, torch.randn(2, 12, 4, 5)])
    assert fused.shape == (2, 8, 7, 9)  # bilinear up-sampling to the largest input
    single = MultiResolutionFusion([8], 8)
    assert single([x]) is x  # one path goes through unchanged


def test_refinenet_starts_near_identity_so_scale_does_not_explode():
    info, maps = _maps(LAYOUTS["ssd321"], channels=[64] * 6)
    net = RefineNetTopDown(info, channels=64)
    with torch.no_grad():
        outs = net(maps)
    # Zero-initialized residual branches: six cascaded levels stay within a small factor.
    assert max(float(o.std()) for o in outs) < 20 * max(float(m.std()) for m in maps)


@pytest.mark.parametrize("factory", [DSSDDecoder, TCBTopDown, RefineNetTopDown])
def test_top_down_modules_pass_gradients_to_every_source_map(factory):
    info, maps = _maps(LAYOUTS["odd_rect"])
    maps = [m.requires_grad_() for m in maps]
    outs = factory(info)(maps)
    sum(o.square().mean() for o in outs).backward()
    assert all(m.grad is not None and torch.isfinite(m.grad).all() for m in maps)
    assert all(m.grad.abs().sum() > 0 for m in maps)


@pytest.mark.parametrize(
    "size,padding,stride", [(20, 1, 2), (5, 1, 2), (3, 0, 1), (5, 0, 2), (2, 1, 2)]
)
def test_extra_bottleneck_sizes_and_aligned_shortcut(size, padding, stride):
    block = ExtraBottleneck(16, 32, 8, stride=stride, padding=padding)
    out = block(torch.randn(2, 16, size, size))
    expected = (size + 2 * padding - 3) // stride + 1
    assert out.shape == (2, 32, expected, expected)


def test_residual_extra_layers_dssd321_layout():
    info = [FeatureInfo("c3", 16, 8), FeatureInfo("c5", 32, 16)]
    neck = ResidualExtraLayers(
        info, in_features=["c3", "c5"], depths=[64] * 4, strides=[2, 2, 2, 1], paddings=[1, 1, 1, 0]
    )
    outs = neck({"c3": torch.randn(2, 16, 40, 40), "c5": torch.randn(2, 32, 20, 20)})
    assert [tuple(o.shape[-2:]) for o in outs] == LAYOUTS["ssd321"]
    assert [o.shape[1] for o in outs] == [f.channels for f in neck.feature_info]
    assert [f.stride for f in neck.feature_info] == [8, 16, 32, 64, 128, 256]
    empty = ResidualExtraLayers(info, depths=[])  # the `neck=none` choice
    assert len(empty.feature_info) == 2


@pytest.mark.parametrize("variant,out", [("a", 24), ("b", 24), ("c", 64), ("d", 64)])
def test_prediction_module_variants(variant, out):
    module, channels = prediction_module(24, variant, mid_channels=16, out_channels=64)
    assert channels == out
    assert module(torch.randn(2, 24, 5, 5)).shape == (2, out, 5, 5)


def test_dssd_head_flattens_like_ssd_head():
    sizes = [(5, 5), (3, 3), (1, 1)]
    maps = [torch.randn(2, c, h, w) for c, (h, w) in zip([24, 16, 8], sizes, strict=True)]
    head = DSSDHead([24, 16, 8], [8, 8, 8], 4, mid_channels=16, out_channels=32)
    scores, deltas = head(maps)
    a = sum(h * w * 8 for h, w in sizes)
    assert scores.shape == (2, a, 4) and deltas.shape == (2, a, 4)
    with pytest.raises(ValueError, match="variant"):
        DSSDHead([8], [8], 4, variant="e")


@pytest.mark.parametrize("size,c3,c5", [(321, 40, 20), (513, 64, 32), (320, 40, 20)])
def test_caffe_resnet_pooling_gives_dssd_map_sizes(size, c3, c5):
    # resnet18 has ResNet-101's stem and strides; the map sizes are the same.
    ext = CaffeResNet(model_name="resnet18", out_levels=[3, 5], output_stride=16).eval()
    with torch.inference_mode():
        out = ext(torch.zeros(1, 3, size, size))
    assert tuple(out["c3"].shape[-2:]) == (c3, c3) and tuple(out["c5"].shape[-2:]) == (c5, c5)
    assert [f.stride for f in ext.feature_info] == [8, 16]
    # Every 3x3 conv of the dilated conv5 stage is dilated, its first block included.
    assert all(
        m.dilation == (2, 2)
        for m in ext.body.layer4.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    )
