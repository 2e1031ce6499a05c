"""SSD's extra feature layers (Liu et al. 2016, as configured by Huang et al. 2017 section 3.6).

Starting from the extractor's last map, each extra layer is a 1x1 convolution to half the
depth followed by a 3x3 convolution that (usually) halves the resolution. Unlike Liu et al.,
and like Huang et al., batch norm follows every added convolution (``use_bn=True``).

``separable=True`` gives SSDLite's extra layers (Sandler et al. 2018; torchvision's
``ssdlite320_mobilenet_v3_large``): the 3x3 convolution is depthwise (on the halved depth)
and a 1x1 convolution restores the depth, each followed by batch norm and the activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.extractors.base import FeatureInfo

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def conv_bn_act(
    cin: int,
    cout: int,
    k: int,
    *,
    stride: int = 1,
    padding: int = 0,
    use_bn: bool = True,
    activation: str = "relu",
    groups: int = 1,
) -> nn.Sequential:
    """Conv -> (BN) -> activation. The conv has a bias only when there is no BN after it."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=not use_bn)
    ]
    if use_bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(_ACTIVATIONS[activation](inplace=True))
    return nn.Sequential(*layers)


def init_truncated_normal(module: nn.Module, std: float = 0.03) -> None:
    """Huang et al. 3.6: added layers start from a truncated normal with sigma 0.03."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SSDExtraLayers(nn.Module):
    """Feature maps for SSD: selected extractor maps plus extra layers of decaying resolution.

    Args:
        in_info: the extractor's ``feature_info``.
        in_features: names of the extractor maps to predict from, or how many of the last
            maps to take (default: the last two,
            "the topmost convolutional feature map and a higher resolution feature map").
        depths: output depth of each extra layer (Huang et al.: e.g. 512, 256, 256, 128).
        strides: per extra layer stride of the 3x3 conv (default 2 everywhere).
        paddings: per extra layer padding of the 3x3 conv (default 1). Liu et al.'s SSD300
            uses stride 1, padding 0 for the last two layers (5 -> 3 -> 1).
        use_bn: batch norm after each added conv (Huang et al.) or not (Liu et al.).
        activation: ``relu`` or ``relu6`` (MobileNet/Inception v2 in Huang et al.).
        separable: SSDLite layers: 1x1 to ``d // 2``, depthwise 3x3, 1x1 to ``d``.

    Shapes:
        forward: ``{name: [B, C, H, W]}`` extractor maps -> list of ``[B, C_k, H_k, W_k]``,
        shallow to deep, matching :attr:`feature_info`.
    """

    def __init__(
        self,
        in_info: Sequence[FeatureInfo],
        *,
        in_features: Sequence[str] | int | None = None,
        depths: Sequence[int] = (512, 256, 256, 128),
        strides: Sequence[int] | None = None,
        paddings: Sequence[int] | None = None,
        use_bn: bool = True,
        activation: str = "relu",
        separable: bool = False,
    ):
        super().__init__()
        by_name = {f.name: f for f in in_info}
        if in_features is None or isinstance(in_features, int):
            # A count selects the extractor's last N maps (None: 2, Huang et al.'s choice).
            names = [f.name for f in in_info[-(in_features or 2) :]]
        else:
            names = list(in_features)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"SSD in_features {missing} not among extractor maps {list(by_name)}")
        self.in_features = names
        strides = list(strides) if strides is not None else [2] * len(depths)
        paddings = list(paddings) if paddings is not None else [1] * len(depths)
        if not len(depths) == len(strides) == len(paddings):
            raise ValueError("depths, strides and paddings must have the same length")

        info = [
            FeatureInfo(f"p{i}", by_name[n].channels, by_name[n].stride)
            for i, n in enumerate(names)
        ]
        self.extras = nn.ModuleList()
        cin, stride = info[-1].channels, info[-1].stride
        for d, s, p in zip(depths, strides, paddings, strict=True):
            kw = {"use_bn": use_bn, "activation": activation}
            if separable:
                layer = nn.Sequential(
                    conv_bn_act(cin, d // 2, 1, **kw),
                    conv_bn_act(d // 2, d // 2, 3, stride=s, padding=p, groups=d // 2, **kw),
                    conv_bn_act(d // 2, d, 1, **kw),
                )
            else:
                layer = nn.Sequential(
                    conv_bn_act(cin, d // 2, 1, **kw),
                    conv_bn_act(d // 2, d, 3, stride=s, padding=p, **kw),
                )
            self.extras.append(layer)
            # A valid 3x3 conv (padding 0) at stride 1 shrinks the map without a stride change;
            # report the stride as the image size over the map size would give, rounded.
            stride = stride * s if p > 0 or s > 1 else stride * 2
            cin = d
            info.append(FeatureInfo(f"p{len(info)}", d, stride))
        self.feature_info = info
        init_truncated_normal(self.extras)

    def forward(self, features: dict[str, Tensor]) -> list[Tensor]:
        outs = [features[n] for n in self.in_features]
        x = outs[-1]
        for layer in self.extras:
            x = layer(x)
            outs.append(x)
        return outs


def feature_sizes(maps: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``[(H_k, W_k)]`` of a list of ``[B, C, H_k, W_k]`` maps."""
    return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
