"""RefineNet blocks (Lin et al. 2017, section 3.2) as a top-down context module for detection.

One RefineNet block takes one or two input paths (a source map, and the output of the
deeper RefineNet block) and runs:

1. per path, two *residual convolution units* (RCU): ``x + conv3x3(relu(conv3x3(relu(x))))``,
   no batch norm;
2. *multi-resolution fusion*: a 3x3 conv per path to a common depth, bilinear upsampling of
   the smaller maps to the largest resolution, sum (a single path passes through unchanged);
3. *chained residual pooling*: ``relu``, then a chain of pooling blocks (5x5 max-pool,
   stride 1, then a 3x3 conv), each fed by the previous one, all summed with their input;
4. one output RCU.

Cascaded deep to shallow over the SSD source maps ("RefineNet-m connects to block m and to
the preceding RefineNet block"), it gives one context-enriched map per source map, at the
source sizes, so any single-shot detector can predict from it.

Deviations, and why:
    * One depth for every block (``channels``, default 256) instead of 512 for RefineNet-4
      and 256 elsewhere: detection heads read every level alike, and the deepest SSD maps
      are tiny (1x1 .. 5x5), where 512 channels buy nothing.
    * The "one convolutional layer to adapt the dimensionality" of each backbone output is
      a 3x3 conv to ``channels``; the deepest block's input also gets one.
    * ``use_bn`` optionally adds BN after every conv (off in the paper, which fine-tunes a
      pretrained ResNet; useful when training from scratch).
    * The segmentation-only final RCUs before the softmax are not used.
    * The last conv of every RCU and the convs of the pooling chain start at zero, so each
      block starts as (fusion of) identities: without BN, He-initialized residual branches
      stacked over six cascaded levels multiply the activations' scale by ~10^3 at
      initialization, and a detector trained from scratch then diverges (Goyal et al.'s
      zero-init of the last residual layer; the paper fine-tunes pretrained weights and does
      not face this).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from models.extractors.base import FeatureInfo
from models.necks.topdown import init_msra


def _conv(cin: int, cout: int, use_bn: bool) -> nn.Module:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not use_bn)
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if use_bn else conv


def _zero_init(layer: nn.Module) -> None:
    """Zero the last weight of a residual branch (the BN scale if there is one, else the conv)."""
    last = layer[-1] if isinstance(layer, nn.Sequential) else layer
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


class ResidualConvUnit(nn.Module):
    """RCU (Fig. 3b): ``x + conv(relu(conv(relu(x))))``. Shapes: ``[B, C, H, W]`` -> same."""

    def __init__(self, channels: int, *, use_bn: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            _conv(channels, channels, use_bn),
            nn.ReLU(inplace=True),
            _conv(channels, channels, use_bn),
        )

    def forward(self, x: Tensor) -> Tensor:
        # Non-inplace first ReLU: x itself is the identity branch.
        return x + self.body(x)


class MultiResolutionFusion(nn.Module):
    """Multi-resolution fusion (Fig. 3c).

    Args:
        in_channels: channels of each path.
        channels: common depth after the per-path 3x3 convs ("the smallest among the inputs").
        use_bn: BN after the convs.

    Shapes:
        forward: list of ``[B, C_i, H_i, W_i]`` -> ``[B, channels, max H_i, max W_i]``;
        with a single path the input is returned as is (it must already have ``channels``).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, *, use_bn: bool = False):
        super().__init__()
        self.single = len(in_channels) == 1
        if self.single and in_channels[0] != channels:
            raise ValueError("a single-path fusion passes its input through: channels must match")
        self.adapt = (
            nn.ModuleList()
            if self.single
            else nn.ModuleList(_conv(c, channels, use_bn) for c in in_channels)
        )

    def forward(self, paths: Sequence[Tensor]) -> Tensor:
        if self.single:
            return paths[0]
        size = max((p.shape[-2:] for p in paths), key=lambda s: s[0] * s[1])
        out = None
        for conv, p in zip(self.adapt, paths, strict=True):
            y = conv(p)
            if y.shape[-2:] != size:
                # Bilinear up-sampling (the paper's choice); any size, odd ones included.
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return out


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling (Fig. 3d).

    Args:
        channels: map depth.
        num_blocks: pooling blocks in the chain (2 in the paper's experiments).
        pool_size: max-pool window (5, stride 1, so sizes are kept).
        use_bn: BN after each block's conv.

    Shapes:
        forward: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(
        self, channels: int, *, num_blocks: int = 2, pool_size: int = 5, use_bn: bool = False
    ):
        super().__init__()
        if pool_size % 2 != 1:
            raise ValueError(f"pool_size must be odd to keep the map size, got {pool_size}")
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(pool_size, stride=1, padding=pool_size // 2)
        self.convs = nn.ModuleList(_conv(channels, channels, use_bn) for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)  # the block's one ReLU, "important for the subsequent pooling"
        out, path = x, x
        for conv in self.convs:
            path = conv(self.pool(path))
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet block (Fig. 3a) over one or two paths of ``channels`` depth.

    Shapes:
        forward: list of ``[B, channels, H_i, W_i]`` (finest first) -> ``[B, channels, H_0, W_0]``.
    """

    def __init__(
        self,
        num_paths: int,
        channels: int,
        *,
        num_rcu: int = 2,
        pool_blocks: int = 2,
        pool_size: int = 5,
        use_bn: bool = False,
    ):
        super().__init__()
        self.rcus = nn.ModuleList(
            nn.Sequential(*(ResidualConvUnit(channels, use_bn=use_bn) for _ in range(num_rcu)))
            for _ in range(num_paths)
        )
        self.fusion = MultiResolutionFusion([channels] * num_paths, channels, use_bn=use_bn)
        self.crp = ChainedResidualPooling(
            channels, num_blocks=pool_blocks, pool_size=pool_size, use_bn=use_bn
        )
        self.out = ResidualConvUnit(channels, use_bn=use_bn)

    def forward(self, paths: Sequence[Tensor]) -> Tensor:
        return self.out(
            self.crp(self.fusion([rcu(p) for rcu, p in zip(self.rcus, paths, strict=True)]))
        )


class RefineNetTopDown(nn.Module):
    """Cascaded RefineNet blocks over the source maps, deep to shallow.

    Args:
        in_info: the bottom-up neck's ``feature_info`` (shallow to deep).
        channels: depth of every block.
        num_rcu: RCUs per input path (2).
        pool_blocks: pooling blocks in each chained residual pooling (2).
        pool_size: max-pool window (5).
        use_bn: BN after every conv (off in the paper).

    Shapes:
        forward: list of ``K`` maps ``[B, C_k, H_k, W_k]`` -> list of ``K`` maps
        ``[B, channels, H_k, W_k]``.
    """

    neck_name: ClassVar[str] = "refinenet"  # the option of the ``neck`` config group

    def __init__(
        self,
        in_info: Sequence[FeatureInfo],
        *,
        channels: int = 256,
        num_rcu: int = 2,
        pool_blocks: int = 2,
        pool_size: int = 5,
        use_bn: bool = False,
    ):
        super().__init__()
        last = len(in_info) - 1
        self.adapt = nn.ModuleList(_conv(f.channels, channels, use_bn) for f in in_info)
        self.blocks = nn.ModuleList(
            RefineNetBlock(
                1 if k == last else 2,
                channels,
                num_rcu=num_rcu,
                pool_blocks=pool_blocks,
                pool_size=pool_size,
                use_bn=use_bn,
            )
            for k in range(len(in_info))
        )
        self.feature_info = [FeatureInfo(f.name, channels, f.stride) for f in in_info]
        init_msra(self)
        for m in self.modules():
            residual_convs = []
            if isinstance(m, ResidualConvUnit):
                residual_convs = [m.body[-1]]
            elif isinstance(m, ChainedResidualPooling):
                residual_convs = list(m.convs)
            for conv in residual_convs:
                _zero_init(conv)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        outs: list[Tensor] = []
        deeper = None
        for k in reversed(range(len(maps))):
            x = self.adapt[k](maps[k])
            deeper = self.blocks[k]([x] if deeper is None else [x, deeper])
            outs.append(deeper)
        return outs[::-1]
