"""Feature extractors: the contract over every ``sweeps/extractor/*.yaml``, then specifics.

Map-size rule checked here: SAME-padded extractors give exactly ``ceil(H / stride)`` cells
(inputs are multiples of 32, where VGG's floor pools agree too); VALID-padded ones
(``same_padding=False``, the Inceptions) may lose a small border instead: ``ceil(H / stride)``
minus at most 3 cells. Big models only run at 128 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from models.errors import IncompatibleConfigError
from models.extractors import (
    FeatureExtractor,
    FeatureInfo,
    TimmExtractor,
    TorchvisionMobileNetV3,
    VGG16Reduced,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "sweeps" / "extractor").glob("*.yaml"))
SIZES = [(128, 128), (128, 160)]  # non-square: height and width round separately
VALID_PADDING_SLACK = 3  # border cells a VALID-padded backbone may lose at these sizes


def check_map(fmap: torch.Tensor, info: FeatureInfo, height: int, width: int, same: bool) -> None:
    """fmap ``[B, C, h, w]`` must match ``info`` for an input of ``height x width``."""
    assert fmap.shape[1] == info.channels, info
    for got, size in zip(fmap.shape[-2:], (height, width), strict=True):
        expected = math.ceil(size / info.stride)
        if same:
            assert got == expected, (info, tuple(fmap.shape), (height, width))
        else:
            assert 1 <= got <= expected and expected - got <= VALID_PADDING_SLACK, (
                info,
                tuple(fmap.shape),
            )


def check_split(extractor: FeatureExtractor) -> None:
    """split_last_stage either raises IncompatibleConfigError or gives a working trunk/stage."""
    try:
        split = extractor.split_last_stage()
    except IncompatibleConfigError as err:
        assert str(err)
        return
    trunk = split.trunk
    assert isinstance(trunk, FeatureExtractor)
    deepest = trunk.feature_info[-1]
    assert deepest.name == "c4"
    assert (trunk.mean, trunk.std) == (extractor.mean, extractor.std)
    out = trunk(torch.randn(1, 3, 128, 128))
    assert list(out) == [f.name for f in trunk.feature_info]
    check_map(out["c4"], deepest, 128, 128, trunk.same_padding)
    crops = split.stage(torch.randn(2, deepest.channels, 14, 14))  # RoI crops [R, C4, 14, 14]
    assert crops.dim() == 4 and crops.shape[:2] == (2, split.out_channels)
    assert min(crops.shape[-2:]) >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_extractor_contract(path: Path) -> None:
    torch.manual_seed(0)
    extractor = instantiate(OmegaConf.load(path)).eval()
    assert isinstance(extractor, FeatureExtractor)
    # Declared before any forward pass, names derived from (undilated) strides.
    info = extractor.feature_info
    names = [f.name for f in info]
    assert names and len(set(names)) == len(names)
    assert [f.stride for f in info] == sorted(f.stride for f in info)
    for f in info:
        assert f.channels > 0 and f.name == f"c{int(math.log2(f.stride))}"
    assert len(extractor.mean) == 3 and len(extractor.std) == 3
    assert extractor.channels == {f.name: f.channels for f in info}

    with torch.no_grad():
        for height, width in SIZES:
            out = extractor(torch.randn(1, 3, height, width))
            assert list(out) == names
            for f in info:
                check_map(out[f.name], f, height, width, extractor.same_padding)
        if extractor.min_input_size > 1:  # the documented minimum works, below it is a clear error
            size = extractor.min_input_size
            assert all(v.shape[-1] >= 1 for v in extractor(torch.randn(1, 3, size, size)).values())
            with pytest.raises(ValueError, match=str(size)):
                extractor(torch.randn(1, 3, size - 1, size - 1))
        check_split(extractor)


# -- output stride ----------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_dilates_and_split_undilates(model_name: str, output_stride: int) -> None:
    plain = TimmExtractor(model_name=model_name).eval()
    dilated = TimmExtractor(model_name=model_name, output_stride=output_stride).eval()
    dilated.body.load_state_dict(plain.body.state_dict())  # same modules, only geometry differs
    assert dilated.strides == {"c3": 8, "c4": min(16, output_stride), "c5": output_stride}

    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = dilated(x)
        assert out["c5"].shape[-2:] == (128 // output_stride, 128 // output_stride)
        split = dilated.split_last_stage()
        assert split.trunk.strides["c4"] == min(16, output_stride)
        assert split.trunk(x)["c4"].shape[-1] == 128 // min(16, output_stride)
        # The stage runs undilated with stride 2 on crops: ImageNet's layer4 exactly.
        crops = plain.split_last_stage().trunk(x)["c4"]
        torch.testing.assert_close(split.stage(crops), plain(x)["c5"])
        assert split.stage(torch.randn(2, dilated.channels["c4"], 14, 14)).shape[-2:] == (7, 7)
        # Splitting copied the stage before re-striding it: the extractor is unchanged.
        torch.testing.assert_close(dilated(x)["c5"], out["c5"])


@pytest.mark.parametrize("model_name", ["inception_v3", "inception_resnet_v2"])
def test_output_stride_unsupported_is_incompatible(model_name: str) -> None:
    with pytest.raises(IncompatibleConfigError, match="output_stride=16"):
        TimmExtractor(model_name=model_name, output_stride=16)


@pytest.mark.parametrize("model_name", ["resnet18", "mobilenetv3_small_100", "inception_v3"])
def test_split_reproduces_full_forward(model_name: str) -> None:
    """trunk + stage run exactly the extractor's own modules (FeatureListNet and EfficientNet-style)."""
    extractor = TimmExtractor(model_name=model_name).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        split = extractor.split_last_stage()
        full = extractor(x)
        trunk_out = split.trunk(x)
        torch.testing.assert_close(trunk_out["c4"], full["c4"])
        torch.testing.assert_close(split.stage(trunk_out["c4"]), full["c5"])


def test_out_levels_from_hydra_and_bad_levels() -> None:
    cfg = OmegaConf.load(next(p for p in CONFIGS if p.stem == "resnet18"))
    extractor = instantiate(cfg, out_levels=[4, 5])  # a ListConfig reaches the constructor
    assert extractor.strides == {"c4": 16, "c5": 32}
    with pytest.raises(IncompatibleConfigError, match="levels 4 and 5"):
        TimmExtractor(model_name="resnet18", out_levels=(3, 4)).split_last_stage()
    with pytest.raises(IncompatibleConfigError, match="out_levels"):
        TimmExtractor(model_name="resnet18", out_levels=(3, 6))


# -- weights ----------------------------------------------------------------------------
def test_weights_path_timm_checkpoint_and_roundtrip(tmp_path: Path) -> None:
    source = timm.create_model("resnet18")  # a classification checkpoint: fc.* is ignored
    with torch.no_grad():
        source.bn1.running_mean.fill_(0.5)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    loaded = TimmExtractor(model_name="resnet18", weights_path=str(tmp_path / "resnet18.pth"))
    reference = source.state_dict()
    for key, tensor in loaded.body.state_dict().items():
        torch.testing.assert_close(tensor, reference[key])

    # The extractor's own state dict, as safetensors, loads back too.
    save_file(
        {k: v.contiguous() for k, v in loaded.state_dict().items()},
        str(tmp_path / "own.safetensors"),
    )
    again = TimmExtractor(model_name="resnet18", weights_path=str(tmp_path / "own.safetensors"))
    for (key, a), b in zip(again.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)


def test_weights_path_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        TimmExtractor(model_name="resnet18", weights_path=str(missing))
    torch.save(timm.create_model("mobilenetv3_small_100").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth.*missing keys"):
        TimmExtractor(model_name="resnet18", weights_path=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="not both"):
        TimmExtractor(model_name="resnet18", pretrained=True, weights_path=str(missing))


def test_frozen_bn(tmp_path: Path) -> None:
    source = timm.create_model("mobilenetv2_100")  # BatchNormAct2d layers, not plain BatchNorm2d
    with torch.no_grad():
        source.bn1.running_mean.fill_(0.25)
    torch.save(source.state_dict(), tmp_path / "mnv2.pth")
    extractor = TimmExtractor(
        model_name="mobilenetv2_100", weights_path=str(tmp_path / "mnv2.pth"), frozen_bn=True
    )
    extractor.train()
    assert not [m for m in extractor.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    frozen = [m for m in extractor.modules() if "Frozen" in type(m).__name__]
    assert frozen and all(not p.requires_grad for m in frozen for p in m.parameters(recurse=False))
    torch.testing.assert_close(
        extractor.body.bn1.running_mean, torch.full((32,), 0.25)
    )  # frozen after loading
    x = torch.randn(2, 3, 64, 64)
    first = extractor(x)["c5"].detach()
    torch.testing.assert_close(extractor(x)["c5"], first)  # training mode updates no statistics
    # The split shares the frozen modules.
    split = extractor.split_last_stage()
    assert not [m for m in split.stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- VGG-16 reduced ---------------------------------------------------------------------
def test_vgg16_reduced_ssd300_shapes_and_l2norm() -> None:
    extractor = VGG16Reduced(l2norm_scale=20.0).eval()
    assert torch.equal(extractor.l2norm.weight, torch.full((512,), 20.0))
    with torch.no_grad():
        out = extractor(torch.rand(1, 3, 300, 300))
    assert out["c3"].shape == (1, 512, 38, 38)  # pool3 rounds up: 75 -> 38
    assert out["c4"].shape == (1, 1024, 19, 19)
    norms = out["c3"].norm(dim=1)
    torch.testing.assert_close(norms[norms > 0], torch.full_like(norms[norms > 0], 20.0))

    split = extractor.split_last_stage()
    assert split.trunk.feature_info[-1] == FeatureInfo("c4", 512, 16)
    with torch.no_grad():
        assert split.stage(torch.randn(3, 512, 14, 14)).shape == (3, 4096, 1, 1)


def test_vgg16_reduced_weights_and_options(tmp_path: Path) -> None:
    source = VGG16Reduced()
    # A torchvision VGG-16 checkpoint: features.* (+ classifier, ignored), no fc6/fc7/L2Norm.
    torchvision_like = {k: v for k, v in source.state_dict().items() if k.startswith("features.")}
    torchvision_like["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(torchvision_like, tmp_path / "vgg16_tv.pth")
    loaded = VGG16Reduced(weights_path=str(tmp_path / "vgg16_tv.pth"))
    torch.testing.assert_close(loaded.features[28].weight, source.features[28].weight)
    torch.save(source.state_dict(), tmp_path / "own.pth")
    again = VGG16Reduced(weights_path=str(tmp_path / "own.pth"))
    torch.testing.assert_close(again.fc7.weight, source.fc7.weight)

    with pytest.raises(IncompatibleConfigError, match="output_stride=8"):
        VGG16Reduced(output_stride=8)
    with pytest.raises(IncompatibleConfigError):
        VGG16Reduced(layout="refinedet", output_stride=16)
    assert VGG16Reduced(pretrained=False, normalization="caffe").std == (1 / 255,) * 3


# -- torchvision MobileNetV3 (SSDLite's backbone) -----------------------------------------
def test_torchvision_mobilenet_v3_is_ssdlite_backbone() -> None:
    """Same layers, parameters and maps as ssdlite320_mobilenet_v3_large's backbone."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from benchmark.compare import copy_weights

    extractor = TorchvisionMobileNetV3().eval()
    assert extractor.feature_info == [
        FeatureInfo("c3", 240, 8),
        FeatureInfo("c4", 672, 16),
        FeatureInfo("c5", 480, 32),
    ]
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    features = reference.backbone.features  # [start .. C4 expansion, C4 depthwise .. end]
    copy_weights(extractor, features)  # raises unless every tensor's shape matches, in order
    assert sum(p.numel() for p in extractor.parameters()) == sum(
        p.numel() for p in features.parameters()
    )
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = extractor(x)
        c4 = features[0](x)
        torch.testing.assert_close(out["c4"], c4)
        torch.testing.assert_close(out["c5"], features[1](c4))
        split = extractor.split_last_stage()
        torch.testing.assert_close(split.stage(split.trunk(x)["c4"]), out["c5"])


def test_torchvision_mobilenet_v3_weights_and_options(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v3_large

    source = mobilenet_v3_large(weights=None)  # a classification checkpoint: full tail
    with torch.no_grad():
        source.features[13].block[0][1].running_mean.fill_(0.5)
    torch.save(source.state_dict(), tmp_path / "mnv3.pth")
    loaded = TorchvisionMobileNetV3(reduced_tail=False, weights_path=str(tmp_path / "mnv3.pth"))
    assert loaded.channels["c5"] == 960
    expansion = loaded.steps["features_13_expand"]
    torch.testing.assert_close(expansion[1].running_mean, torch.full((672,), 0.5))
    torch.testing.assert_close(expansion[0].weight, source.features[13].block[0][0].weight)
    with pytest.raises(ValueError, match="mnv3.pth"):  # the reduced tail has other shapes
        TorchvisionMobileNetV3(weights_path=str(tmp_path / "mnv3.pth"))
    torch.save(loaded.state_dict(), tmp_path / "own.pth")  # its own state dict loads back
    again = TorchvisionMobileNetV3(reduced_tail=False, weights_path=str(tmp_path / "own.pth"))
    for (key, a), b in zip(again.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)

    frozen = TorchvisionMobileNetV3(frozen_bn=True, out_levels=[4, 5]).train()
    assert not [m for m in frozen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    dilated = TorchvisionMobileNetV3(output_stride=16).eval()
    assert dilated.strides == {"c3": 8, "c4": 16, "c5": 16}
    with torch.no_grad():
        assert dilated(torch.randn(1, 3, 64, 64))["c5"].shape[-2:] == (4, 4)
    with pytest.raises(IncompatibleConfigError, match="output_stride 32"):
        dilated.split_last_stage()
    with pytest.raises(IncompatibleConfigError, match="levels 4 and 5"):
        TorchvisionMobileNetV3(out_levels=[3, 4]).split_last_stage()
    assert list(TorchvisionMobileNetV3(out_levels=[3, 4]).steps)[-1] == "features_13_expand"
    with pytest.raises(IncompatibleConfigError):
        TorchvisionMobileNetV3(output_stride=8)
    with pytest.raises(IncompatibleConfigError):
        TorchvisionMobileNetV3(out_levels=[2, 3])
    with pytest.raises(ValueError, match="reduced_tail"):
        TorchvisionMobileNetV3(pretrained=True)
