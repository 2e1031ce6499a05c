"""Residual extra layers: SSD's extra feature layers built from ResNet bottleneck blocks.

DSSD (Fu et al. 2017, section 4 "Base network") adds ``conv6_x`` .. ``conv9_x`` (``conv10_x``
at 513) after ResNet-101's ``conv5_x`` "using Residual blocks ... with decreasing feature map
size"; RefineDet (Zhang et al. 2018, section 4) adds "one extra residual block (res6)" to
ResNet-101. Each extra layer here is one bottleneck block: 1x1 reduce, 3x3 with the layer's
stride and padding, 1x1 expand, BN after each conv, and a projection shortcut.

It takes the same keyword arguments as :class:`models.necks.ssd_extra.SSDExtraLayers`
(plus ``bottleneck_ratio``), so Hydra can swap one for the other, and a neck choice such as
``neck=none`` (``depths: []``) applies to both.

Deviations, and why:
    * Neither paper gives the extra blocks' widths; defaults follow ResNet's 4x bottleneck
      (``bottleneck_ratio=0.25``) and the presets set the depths.
    * A padding-0 (valid) 3x3, needed for SSD321's ``3 -> 1`` layer, has no ResNet
      counterpart. Its shortcut crops the border the 3x3 removes before the 1x1 projection,
      so both paths stay aligned and the sum is defined (with padding 1 the shortcut is
      ResNet's plain strided 1x1).
    * Initialization is He (fan-out) like the ResNet trunk, not RefineDet's N(0, 0.01) for
      res6: with BN after every conv the scale is irrelevant, and He init is what the rest of
      the from-scratch network uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.extractors.base import FeatureInfo
from models.necks.ssd_extra import _ACTIVATIONS
from models.necks.topdown import init_msra


def _conv_norm(
    cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0, use_bn: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=not use_bn)
    ]
    if use_bn:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class ExtraBottleneck(nn.Module):
    """One bottleneck residual block whose 3x3 has an arbitrary stride and padding (0 or 1).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mid_channels: channels of the 1x1-reduced path.
        stride: stride of the 3x3 conv (and of the shortcut).
        padding: padding of the 3x3 conv, 1 (SAME-like) or 0 (valid, shrinks by 2).
        use_bn: BN after every conv (convs then have no bias).
        activation: ``relu`` or ``relu6``.

    Shapes:
        forward: ``[B, C_in, H, W]`` -> ``[B, C_out, (H + 2p - 3) // s + 1, (W + 2p - 3) // s + 1]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        *,
        stride: int = 2,
        padding: int = 1,
        use_bn: bool = True,
        activation: str = "relu",
    ):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"padding must be 0 or 1 for a 3x3 conv, got {padding}")
        act = _ACTIVATIONS[activation]
        self.body = nn.Sequential(
            _conv_norm(in_channels, mid_channels, 1, use_bn=use_bn),
            act(inplace=True),
            _conv_norm(
                mid_channels, mid_channels, 3, stride=stride, padding=padding, use_bn=use_bn
            ),
            act(inplace=True),
            _conv_norm(mid_channels, out_channels, 1, use_bn=use_bn),
        )
        # A valid 3x3 drops one border row/column on each side; crop the same before the 1x1.
        self.crop = 1 - padding
        needs_projection = in_channels != out_channels or stride != 1 or self.crop
        self.shortcut = (
            _conv_norm(in_channels, out_channels, 1, stride=stride, use_bn=use_bn)
            if needs_projection
            else None
        )
        self.act = act(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        skip = x
        if self.crop:
            c = self.crop
            skip = skip[..., c:-c, c:-c]
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        return self.act(self.body(x) + skip)


class ResidualExtraLayers(nn.Module):
    """Selected extractor maps plus residual extra layers of decreasing resolution.

    Args:
        in_info: the extractor's ``feature_info``.
        in_features: names of extractor maps to predict from, or how many of the last maps
            to take (default: the last two, as :class:`SSDExtraLayers`). DSSD: ``[c3, c5]``
            (conv3_x, conv5_x); RefineDet with ResNet-101: ``[c3, c4, c5]`` (res3b3, res4b22,
            res5c).
        depths: output channels of each extra block.
        strides: per block stride of the 3x3 (default 2 everywhere).
        paddings: per block padding of the 3x3 (default 1); 0 for a valid conv.
        use_bn: BN after every conv.
        activation: ``relu`` or ``relu6``.
        bottleneck_ratio: width of each block's 1x1-reduced path as a fraction of its depth.

    Shapes:
        forward: ``{name: [B, C, H, W]}`` -> list of ``[B, C_k, H_k, W_k]``, shallow to deep,
        matching :attr:`feature_info`.
    """

    def __init__(
        self,
        in_info: Sequence[FeatureInfo],
        *,
        in_features: Sequence[str] | int | None = None,
        depths: Sequence[int] = (512, 512, 256, 256),
        strides: Sequence[int] | None = None,
        paddings: Sequence[int] | None = None,
        use_bn: bool = True,
        activation: str = "relu",
        bottleneck_ratio: float = 0.25,
    ):
        super().__init__()
        by_name = {f.name: f for f in in_info}
        if in_features is None or isinstance(in_features, int):
            # A count selects the extractor's last N maps (None: 2), as SSDExtraLayers.
            names = [f.name for f in in_info[-(in_features or 2) :]]
        else:
            names = list(in_features)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"in_features {missing} not among extractor maps {list(by_name)}")
        strides = list(strides) if strides is not None else [2] * len(depths)
        paddings = list(paddings) if paddings is not None else [1] * len(depths)
        if not len(depths) == len(strides) == len(paddings):
            raise ValueError("depths, strides and paddings must have the same length")
        self.in_features = names

        info = [
            FeatureInfo(f"p{i}", by_name[n].channels, by_name[n].stride)
            for i, n in enumerate(names)
        ]
        self.extras = nn.ModuleList()
        cin, stride = info[-1].channels, info[-1].stride
        for d, s, p in zip(depths, strides, paddings, strict=True):
            mid = max(1, round(d * bottleneck_ratio))
            self.extras.append(
                ExtraBottleneck(
                    cin, d, mid, stride=s, padding=p, use_bn=use_bn, activation=activation
                )
            )
            # Same bookkeeping as SSDExtraLayers: a valid stride-1 layer still coarsens the grid.
            stride = stride * s if p > 0 or s > 1 else stride * 2
            cin = d
            info.append(FeatureInfo(f"p{len(info)}", d, stride))
        self.feature_info = info
        init_msra(self.extras)

    def forward(self, features: dict[str, Tensor]) -> list[Tensor]:
        outs = [features[n] for n in self.in_features]
        x = outs[-1]
        for block in self.extras:
            x = block(x)
            outs.append(x)
        return outs
