"""SSD prediction heads: a 3x3 convolution per feature map for class scores and box offsets.

``separable=True`` gives SSDLite's predictor (Sandler et al. 2018, MobileNetV2 section 6.2;
torchvision's ``SSDLiteHead``): each 3x3 convolution becomes a depthwise 3x3 convolution with
batch norm and ReLU6 followed by a 1x1 convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SSDHead(nn.Module):
    """Per-level convolutional predictors, flattened into one anchor axis.

    Args:
        in_channels: channels of each input map, shallow to deep.
        anchors_per_location: default boxes per location for each map.
        num_outputs: scores per anchor (``num_classes + 1`` with background at index 0 for
            softmax SSD; 2 for RefineDet's binary ARM).
        kernel_size: 3 as in Liu et al.; 1 gives the "box predictor" of some TF configs.
        separable: SSDLite: depthwise ``kernel_size`` conv + BN + ReLU6, then a 1x1 conv.

    Shapes:
        forward: list of ``[B, C_k, H_k, W_k]`` -> ``(scores [B, A, num_outputs], deltas [B, A, 4])``
        with ``A = sum_k H_k * W_k * anchors_per_location[k]`` in (level, y, x, anchor) order,
        the order of :func:`models.anchors.ssd_default_boxes`.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        anchors_per_location: Sequence[int],
        num_outputs: int,
        *,
        kernel_size: int = 3,
        separable: bool = False,
    ):
        super().__init__()
        if len(in_channels) != len(anchors_per_location):
            raise ValueError(
                f"{len(in_channels)} feature maps but {len(anchors_per_location)} anchor layouts"
            )
        self.num_outputs = num_outputs
        self.separable = separable

        def predictor(c: int, out: int) -> nn.Module:
            if not separable:
                return nn.Conv2d(c, out, kernel_size, padding=kernel_size // 2)
            return nn.Sequential(
                nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU6(inplace=True),
                nn.Conv2d(c, out, 1),
            )

        pairs = list(zip(in_channels, anchors_per_location, strict=True))
        self.cls = nn.ModuleList(predictor(c, a * num_outputs) for c, a in pairs)
        self.box = nn.ModuleList(predictor(c, a * 4) for c, a in pairs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        scores, deltas = [], []
        for x, cls, box in zip(maps, self.cls, self.box, strict=True):
            scores.append(_flatten(cls(x), self.num_outputs))
            deltas.append(_flatten(box(x), 4))
        return torch.cat(scores, dim=1), torch.cat(deltas, dim=1)


def _flatten(x: Tensor, k: int) -> Tensor:
    """``[B, A_loc * k, H, W]`` -> ``[B, H * W * A_loc, k]`` in (y, x, anchor) order."""
    b = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(b, -1, k)
