"""Pieces shared by the top-down context modules (DSSD deconvolution, RefineDet TCB, RefineNet).

A *top-down module* runs after the bottom-up neck (extractor maps + extra layers, the SSD
"source" maps). It is built from the bottom-up ``feature_info`` and maps the list of source
maps, shallow to deep, to a list of maps of **the same spatial sizes**, so default boxes and
``num_anchors`` do not depend on which context module is chosen. Its own ``feature_info``
gives the output channels (strides are unchanged).

Learned 2x upsampling meets odd sizes whenever a layer was made by a stride-2 convolution
of an odd map (SSD321: 5 -> 3 -> 1) or by a valid convolution; :func:`fit_to` reconciles the
``2n`` rows of a deconvolution with the ``2n - 1`` or ``2n + 1`` rows of the lateral map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.extractors.base import FeatureInfo

TopDownFactory = Callable[[Sequence[FeatureInfo]], nn.Module]


def fit_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop or pad ``x`` at the bottom/right to ``size``.

    Args:
        x: ``[B, C, h, w]``.
        size: target ``(H, W)``.

    Returns:
        ``[B, C, H, W]``: extra rows/columns are cropped; missing ones replicate the last
        row/column (``replicate``, not zeros, so a product or sum with the lateral map is
        not dragged to zero on the border).

    Why bottom/right: a stride-2 convolution with padding 1 puts output cell ``i`` over input
    cells ``2i - 1 .. 2i + 1``, i.e. top-left aligned, so the deconvolution of cell ``i``
    (rows ``2i, 2i + 1``) lines up from the top-left and only the last row can overhang.
    """
    h, w = int(size[0]), int(size[1])
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph > 0 or pw > 0:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


class Upsample2x(nn.Module):
    """Learned 2x upsampling: a stride-2 transposed convolution, then :func:`fit_to` the lateral.

    Args:
        in_channels: channels of the deeper map.
        out_channels: channels produced.
        kernel_size: 2 (DSSD Figure 3, RefineDet's released model) or 4 (common in
            re-implementations); even kernels use padding ``(k - 2) / 2`` so the output is
            exactly ``2n`` before fitting.
        bias: the transposed convolution's bias (off when a BN follows directly).

    Shapes:
        forward: ``x [B, C_in, h, w]``, ``size (H, W)`` -> ``[B, C_out, H, W]``, with
        ``H`` within one of ``2h`` (and likewise ``W``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int = 2, bias: bool = True
    ):
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"deconvolution kernel must be >= 2, got {kernel_size}")
        self.deconv = nn.ConvTranspose2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=2,
            padding=(kernel_size - 2) // 2,
            bias=bias,
        )

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return fit_to(self.deconv(x), size)


def init_msra(module: nn.Module) -> None:
    """He (fan-out) initialization for the convolutions of the new top-down layers.

    They are trained from scratch behind ReLUs (and, here, often with random backbones), where
    He init keeps activations from vanishing through several stacked blocks.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
