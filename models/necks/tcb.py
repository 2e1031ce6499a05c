"""RefineDet's transfer connection blocks (Zhang et al. 2018, section 3 and Figure 2).

A TCB converts one ARM feature map into an ODM feature map:
``Conv 3x3 x 256 -> ReLU -> Conv 3x3 x 256``, plus (except at the deepest level) the
deconvolved output of the next deeper TCB, element-wise sum, ``ReLU -> Conv 3x3 x 256 -> ReLU``.
Run deep to shallow, the TCBs form a top-down path that adds high-level context to the
finer maps; the ODM predicts from their outputs, which keep the ARM maps' sizes.

Deviations, and why:
    * The deconvolution is 2x2 / stride 2, as in RefineDet's released Caffe model; the
      kernel is configurable (``deconv_kernel=4`` with padding 1 gives the same sizes).
    * Odd sizes (not met by RefineDet's own 320 / 512 layouts, but by other extractors or
      resolutions) are handled by cropping / edge-padding the deconvolution output
      (:func:`models.necks.topdown.fit_to`).
    * ``use_bn`` optionally adds BN after each conv (off in the paper); the generic config turns
      it on for from-scratch training, as Huang et al. do for every added layer. The presets
      turn it off.
    * He initialization instead of Caffe's xavier: the same scale reasoning as the other
      new layers trained from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from models.extractors.base import FeatureInfo
from models.necks.topdown import Upsample2x, init_msra


def _conv(cin: int, cout: int, use_bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not use_bn)]
    if use_bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers


class TransferConnectionBlock(nn.Module):
    """One TCB (Figure 2).

    Args:
        in_channels: channels of the ARM map.
        channels: channels of every conv (256).
        has_deeper: whether a deeper TCB output is summed in (False at the deepest level).
        deconv_kernel: kernel of the stride-2 deconvolution of the deeper TCB output.
        use_bn: BN after each conv.

    Shapes:
        forward: ``x [B, C_in, H, W]``, ``deeper [B, channels, h, w]`` (``H`` within one of
        ``2h``) or None -> ``[B, channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        *,
        has_deeper: bool = True,
        deconv_kernel: int = 2,
        use_bn: bool = False,
    ):
        super().__init__()
        self.lateral = nn.Sequential(
            *_conv(in_channels, channels, use_bn),
            nn.ReLU(inplace=True),
            *_conv(channels, channels, use_bn),
        )
        self.up = Upsample2x(channels, channels, kernel_size=deconv_kernel) if has_deeper else None
        self.out = nn.Sequential(
            nn.ReLU(inplace=True), *_conv(channels, channels, use_bn), nn.ReLU(inplace=True)
        )

    def forward(self, x: Tensor, deeper: Tensor | None = None) -> Tensor:
        y = self.lateral(x)
        if self.up is not None:
            if deeper is None:
                raise ValueError("this TCB expects the deeper TCB's output")
            y = y + self.up(deeper, y.shape[-2:])
        return self.out(y)


class TCBTopDown(nn.Module):
    """The TCB path over all ARM maps: the ODM's features.

    Args:
        in_info: the bottom-up neck's ``feature_info`` (the ARM maps, shallow to deep).
        channels: channels of every TCB (256).
        deconv_kernel: 2 (released model).
        use_bn: BN after each conv of the TCBs.

    Shapes:
        forward: list of ``K`` maps ``[B, C_k, H_k, W_k]`` -> list of ``K`` maps
        ``[B, channels, H_k, W_k]``.
    """

    neck_name: ClassVar[str] = "tcb"  # the option of the ``neck`` config group

    def __init__(
        self,
        in_info: Sequence[FeatureInfo],
        *,
        channels: int = 256,
        deconv_kernel: int = 2,
        use_bn: bool = False,
    ):
        super().__init__()
        last = len(in_info) - 1
        self.blocks = nn.ModuleList(
            TransferConnectionBlock(
                f.channels,
                channels,
                has_deeper=k < last,
                deconv_kernel=deconv_kernel,
                use_bn=use_bn,
            )
            for k, f in enumerate(in_info)
        )
        self.feature_info = [FeatureInfo(f.name, channels, f.stride) for f in in_info]
        init_msra(self.blocks)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        outs: list[Tensor] = []
        deeper = None
        for block, x in zip(reversed(self.blocks), reversed(maps), strict=True):
            deeper = block(x, deeper)
            outs.append(deeper)
        return outs[::-1]
