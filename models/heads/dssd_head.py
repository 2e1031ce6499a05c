"""DSSD's prediction modules (Fu et al. 2017, section 3 and Figure 2) in front of SSD heads.

Instead of predicting straight from each feature map (variant (a), SSD), DSSD puts a small
residual block in front of the 3x3 class / box convolutions of every layer, "to avoid
allowing the gradients of the objective function to directly flow into the backbone"
(section 4.1). Variants of Figure 2 / Table 4:

* ``"a"``: none (the original SSD head).
* ``"b"``: ``1x1 x 256 -> 1x1 x 256 -> 1x1 x C_in`` with an identity skip connection.
* ``"c"``: ``1x1 x 256 -> 1x1 x 256 -> 1x1 x 1024`` with a ``1x1 x 1024`` projection on the
  skip connection (the paper's choice).
* ``"d"``: two ``"c"`` blocks in sequence.

Deviations, and why:
    * BN after every 1x1 conv and a ReLU after the sum, as in a ResNet bottleneck; Figure 2
      draws only the convolutions.
    * Variant ``"b"``'s last conv outputs the input depth so that the identity skip is
      defined whatever the layer's depth (Figure 2 draws 1024 for ResNet-101's conv5).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.heads.ssd_head import SSDHead
from models.necks.topdown import init_msra

VARIANTS = ("a", "b", "c", "d")


def _conv1x1(cin: int, cout: int, use_bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=not use_bn)]
    if use_bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers


class PredictionBlock(nn.Module):
    """One residual block of a prediction module.

    Args:
        in_channels: input depth.
        mid_channels: depth of the first two 1x1 convs (256).
        out_channels: output depth (1024; must equal ``in_channels`` without projection).
        project: 1x1 projection on the skip connection (variant c) or identity (variant b).
        use_bn: BN after each conv.

    Shapes:
        forward: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        project: bool,
        use_bn: bool = True,
    ):
        super().__init__()
        if not project and in_channels != out_channels:
            raise ValueError("an identity skip needs out_channels == in_channels")
        self.body = nn.Sequential(
            *_conv1x1(in_channels, mid_channels, use_bn),
            nn.ReLU(inplace=True),
            *_conv1x1(mid_channels, mid_channels, use_bn),
            nn.ReLU(inplace=True),
            *_conv1x1(mid_channels, out_channels, use_bn),
        )
        self.skip = (
            nn.Sequential(*_conv1x1(in_channels, out_channels, use_bn))
            if project
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.skip(x))


def prediction_module(
    in_channels: int,
    variant: str,
    *,
    mid_channels: int = 256,
    out_channels: int = 1024,
    use_bn: bool = True,
) -> tuple[nn.Module, int]:
    """Build one prediction module of ``variant``; returns ``(module, output depth)``."""
    if variant == "a":
        return nn.Identity(), in_channels
    if variant == "b":
        return PredictionBlock(
            in_channels, mid_channels, in_channels, project=False, use_bn=use_bn
        ), in_channels
    if variant == "c":
        return PredictionBlock(
            in_channels, mid_channels, out_channels, project=True, use_bn=use_bn
        ), out_channels
    if variant == "d":
        first = PredictionBlock(
            in_channels, mid_channels, out_channels, project=True, use_bn=use_bn
        )
        second = PredictionBlock(
            out_channels, mid_channels, out_channels, project=True, use_bn=use_bn
        )
        return nn.Sequential(first, second), out_channels
    raise ValueError(f"prediction module variant must be one of {VARIANTS}, got {variant!r}")


class DSSDHead(nn.Module):
    """A prediction module per map, then SSD's 3x3 class and box convolutions.

    Args:
        in_channels: depth of each input map, shallow to deep.
        anchors_per_location: default boxes per location of each map.
        num_outputs: scores per box (``num_classes + 1``, background at 0).
        variant: ``"a"``, ``"b"``, ``"c"`` (default) or ``"d"`` (Figure 2).
        mid_channels: 256 in Figure 2.
        out_channels: 1024 in Figure 2.
        use_bn: BN in the prediction modules.
        kernel_size: of the final class / box convolutions (3).

    Shapes:
        forward: list of ``[B, C_k, H_k, W_k]`` -> ``(scores [B, A, num_outputs], deltas [B, A, 4])``
        in :class:`SSDHead`'s (level, y, x, anchor) order.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        anchors_per_location: Sequence[int],
        num_outputs: int,
        *,
        variant: str = "c",
        mid_channels: int = 256,
        out_channels: int = 1024,
        use_bn: bool = True,
        kernel_size: int = 3,
    ):
        super().__init__()
        built = [
            prediction_module(
                c, variant, mid_channels=mid_channels, out_channels=out_channels, use_bn=use_bn
            )
            for c in in_channels
        ]
        self.variant = variant
        self.blocks = nn.ModuleList(m for m, _ in built)
        init_msra(self.blocks)
        self.predictor = SSDHead(
            [c for _, c in built], anchors_per_location, num_outputs, kernel_size=kernel_size
        )

    def forward(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self.predictor([m(x) for m, x in zip(self.blocks, maps, strict=True)])
