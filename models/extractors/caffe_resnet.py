"""ResNet with the original (Caffe) stem pooling and DSSD's dilated conv5, over timm.

DSSD (Fu et al. 2017, section 4 and Table 2) runs SSD on the Caffe ResNet-101 of He et al.:
321 x 321 inputs give a 40 x 40 ``conv3_x`` and a 20 x 20 ``conv5_x``; 513 x 513 give 64 and
32. timm's (and torchvision's) ResNets give 41 / 21 at 321 instead, because their stem
max-pool is ``3x3 / 2`` with padding 1 and floor rounding, while the Caffe ResNet pools
``3x3 / 2`` *without* padding and with Caffe's ceil rounding: ``161 -> 80`` rather than
``161 -> 81``. At multiples of 32 (320, 512) both give the same sizes.

:class:`CaffeResNet` is a :class:`TimmExtractor` whose stem pool is swapped for the Caffe one
(``caffe_pool``) and, at ``output_stride`` 16, whose first conv5 block is dilated like the
others (``dilate_first_block``): "for all convolution layers in conv5 stage with kernel size
larger than 1, we increase their dilation from 1 to 2". timm (like torchvision and
DeepLab) keeps the first block of a dilated stage at the previous dilation.

Deviations, and why:
    * timm's ResNet is v1.5 (the stride sits in the 3x3 conv of a stage's first block, not
      in the 1x1 as in the Caffe model). Map sizes are the same (``ceil(n / 2)`` either
      way); only the sampling phase differs, which matters for pretrained weights, not for
      training from scratch.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from models.extractors.timm_extractor import TimmExtractor


class CaffeResNet(TimmExtractor):
    """A timm ResNet with the Caffe stem pool (and DSSD's fully dilated conv5).

    Args:
        model_name: a timm ResNet (``resnet101`` for DSSD; any ``resnet*`` works).
        caffe_pool: replace the stem ``MaxPool2d(3, 2, padding=1)`` by Caffe's
            ``MaxPool2d(3, 2, padding=0, ceil_mode=True)``.
        dilate_first_block: when a stage is dilated (``output_stride`` < 32), give its
            first block's 3x3 conv the stage's dilation too (DSSD), instead of timm's
            previous-stage dilation.
        **kwargs: everything else of :class:`TimmExtractor` (``out_levels``,
            ``output_stride``, ``pretrained``, ``weights_path``, ``frozen_bn``, timm kwargs).

    Shapes:
        forward: ``[B, 3, H, W]`` -> ``{cL: [B, C_L, H_L, W_L]}``; with ``caffe_pool`` the stem
        gives ``ceil((ceil(H / 2) - 3) / 2) + 1`` rows (80 at 321, 128 at 513), then each
        stride-2 stage halves rounding up (conv3_x 40 at 321, 64 at 513).
    """

    def __init__(
        self,
        *,
        model_name: str = "resnet101",
        caffe_pool: bool = True,
        dilate_first_block: bool = True,
        **kwargs: Any,
    ):
        super().__init__(model_name=model_name, **kwargs)
        self.caffe_pool = caffe_pool
        if caffe_pool:
            if not isinstance(getattr(self.body, "maxpool", None), nn.MaxPool2d):
                raise ValueError(f"{model_name!r} has no stem max-pool to replace")
            self.body.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
            # The unpadded 3x3 pool needs a 3x3 stem output, i.e. at least 5 input pixels.
            self.min_input_size = max(self.min_input_size, 5)
        if dilate_first_block:
            self._dilate_first_blocks()

    def _dilate_first_blocks(self) -> None:
        """Set each dilated stage's first-block 3x3 convs to the dilation of its other blocks."""
        for name in ("layer2", "layer3", "layer4"):
            stage = getattr(self.body, name, None)
            if stage is None or len(stage) < 2:
                continue
            dilation = max(conv.dilation for conv in _convs3x3(stage[1]))
            for conv in _convs3x3(stage[0]):
                # Only an undilated-stride stage (stride 1) is dilated; padding = dilation
                # keeps the map size of a 3x3 conv.
                if conv.stride == (1, 1) and conv.dilation != dilation:
                    conv.dilation = dilation
                    conv.padding = dilation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, caffe_pool={self.caffe_pool}"


def _convs3x3(block: nn.Module) -> list[nn.Conv2d]:
    """The 3x3 convs of a ResNet block's main path (``conv1``/``conv2``/``conv3``)."""
    convs = (getattr(block, f"conv{i}", None) for i in (1, 2, 3))
    return [c for c in convs if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
