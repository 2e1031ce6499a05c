"""DSSD's deconvolution path (Fu et al. 2017, section 3 and Figures 1 and 3).

Starting from the deepest SSD layer, each deconvolution module upsamples the previous
(deeper) decoder map and combines it with the SSD source map of the next finer scale:

* deconvolution path: ``Deconv 2x2 x C`` (stride 2) -> ``Conv 3x3 x C`` -> BN;
* lateral (SSD feature) path: ``Conv 3x3 x C`` -> BN -> ReLU -> ``Conv 3x3 x C`` -> BN;
* element-wise product (best in Table 4) or sum (the ablation), then ReLU.

The decoder has as many outputs as there are source maps, with the same sizes: the deepest
is the deepest source map itself (where "the deconvolution layers" start), every finer one a
module output with ``C = 512`` channels. So DSSD321 / DSSD513 keep SSD321 / SSD513's default
boxes (17080 and 43688, Table 7).

Deviations, and why:
    * At odd sizes (SSD321's 1 -> 3 and 3 -> 5) a 2x2 / stride-2 deconvolution cannot
      reach the lateral size; its ``2n`` output is cropped or edge-padded to it
      (:func:`models.necks.topdown.fit_to`). The paper does not say how its Caffe model
      handled these layers.
    * New layers use He initialization (the paper trains them from random init but does not
      give the scheme), except the deconvolution path's last BN, which starts at scale 0 and
      shift 1 (product) or 0 (sum): each module then starts as its lateral path alone and
      learns how much top-down context to mix in. The paper instead inserts the modules
      into an already trained SSD (section 4.1); with random weights both ways, an untrained
      deep path multiplying the lateral features by noise erases the fine maps' information,
      and DSSD trained from scratch reached map_50 0.11 against SSD's 0.40 in 300 iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from models.extractors.base import FeatureInfo
from models.necks.topdown import Upsample2x, init_msra

COMBINE = ("product", "sum")


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]


class DeconvolutionModule(nn.Module):
    """One DSSD deconvolution module (Figure 3).

    Args:
        deep_channels: channels of the deeper decoder map.
        lateral_channels: channels of the SSD source map at the target scale.
        channels: output channels ``C`` (512 in the paper).
        combine: ``"product"`` (the paper's choice) or ``"sum"`` (Table 4 ablation).
        deconv_kernel: kernel of the stride-2 deconvolution (2 in Figure 3).

    Shapes:
        forward: ``deep [B, C_d, h, w]``, ``lateral [B, C_l, H, W]`` (``H`` within one of
        ``2h``) -> ``[B, C, H, W]``.
    """

    def __init__(
        self,
        deep_channels: int,
        lateral_channels: int,
        channels: int = 512,
        *,
        combine: str = "product",
        deconv_kernel: int = 2,
    ):
        super().__init__()
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        self.combine = combine
        self.up = Upsample2x(deep_channels, channels, kernel_size=deconv_kernel)
        self.deep = nn.Sequential(*_conv_bn(channels, channels))
        self.lateral = nn.Sequential(
            *_conv_bn(lateral_channels, channels),
            nn.ReLU(inplace=True),
            *_conv_bn(channels, channels),
        )
        self.act = nn.ReLU(inplace=True)

    def start_as_lateral(self) -> None:
        """Make the deconvolution path output the combination's identity (1 for the product,
        0 for the sum), so the module initially passes its lateral path through."""
        bn = self.deep[-1]
        nn.init.zeros_(bn.weight)
        nn.init.constant_(bn.bias, 1.0 if self.combine == "product" else 0.0)

    def forward(self, deep: Tensor, lateral: Tensor) -> Tensor:
        d = self.deep(self.up(deep, lateral.shape[-2:]))
        lat = self.lateral(lateral)
        return self.act(d * lat if self.combine == "product" else d + lat)


class DSSDDecoder(nn.Module):
    """The deconvolution path over all source maps (DSSD Figure 1 bottom).

    Args:
        in_info: the bottom-up neck's ``feature_info`` (shallow to deep).
        channels: output channels of each deconvolution module (512).
        combine: ``"product"`` or ``"sum"``.
        deconv_kernel: 2 (Figure 3).

    Shapes:
        forward: list of ``K`` maps ``[B, C_k, H_k, W_k]`` -> list of ``K`` maps
        ``[B, C'_k, H_k, W_k]`` with ``C'_k = channels`` for ``k < K`` and
        ``C'_K = C_K`` (the deepest source map passes through).
    """

    neck_name: ClassVar[str] = "dssd"  # the option of the ``neck`` config group

    def __init__(
        self,
        in_info: Sequence[FeatureInfo],
        *,
        channels: int = 512,
        combine: str = "product",
        deconv_kernel: int = 2,
    ):
        super().__init__()
        if not in_info:
            raise ValueError("DSSDDecoder needs at least one source map")
        deep = in_info[-1].channels
        modules = []
        # Built deep to shallow (the order they run in), stored shallow to deep.
        for f in reversed(in_info[:-1]):
            modules.append(
                DeconvolutionModule(
                    deep, f.channels, channels, combine=combine, deconv_kernel=deconv_kernel
                )
            )
            deep = channels
        self.blocks = nn.ModuleList(reversed(modules))
        self.feature_info = [FeatureInfo(f.name, channels, f.stride) for f in in_info[:-1]] + [
            in_info[-1]
        ]
        init_msra(self.blocks)
        for block in self.blocks:
            block.start_as_lateral()

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        x = maps[-1]
        outs = [x]
        for block, lateral in zip(reversed(self.blocks), reversed(maps[:-1]), strict=True):
            x = block(x, lateral)
            outs.append(x)
        return outs[::-1]
