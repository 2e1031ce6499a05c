"""The feature-extractor contract shared by every meta-architecture.

A :class:`FeatureExtractor` maps a normalized image batch ``[B, 3, H, W]`` to a dict of
named feature maps. Its :attr:`feature_info` is valid right after construction, before the
first forward pass, so necks and heads read channel counts from code, never from YAML.

Naming: a map is named after its *nominal* pyramid level, ``c{log2(stride)}`` of the
backbone without dilation: ``c3`` is stride 8, ``c4`` stride 16, ``c5`` stride 32. When
``output_stride`` dilates the later stages, the name stays (``c5`` is still "the last
stage") and :attr:`FeatureInfo.stride` holds the *actual* stride, e.g. 16 for ``c5`` at
output stride 16. Necks emit ``p*`` names.

Map sizes: for SAME-padded backbones (ResNets, MobileNets, EfficientNets, VGG) a map is
``ceil(H / stride)`` cells high, exactly so for inputs whose sides are multiples of the deepest
stride. VALID-padded backbones (timm's Inception v3 and Inception-ResNet-v2, which keep the
original TF-slim padding so ImageNet weights stay valid) lose a few border cells instead,
e.g. ``c4`` is 6x6 at 128 px, not 8x8; :attr:`FeatureExtractor.same_padding` says which, and
:attr:`FeatureExtractor.min_input_size` is the smallest side they accept. The stride is the
cell spacing either way, so ``1 / stride`` stays the right RoIAlign ``spatial_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.errors import IncompatibleConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureInfo:
    """One output map of an extractor.

    Attributes:
        name: ``c3``/``c4``/``c5``... (nominal level) or a neck's ``p*`` name.
        channels: channel count of the map.
        stride: actual stride in input pixels, i.e. the spacing of map cells (``H_in / H_map``
            rounded up for SAME-padded backbones; see the module docstring for VALID ones).
    """

    name: str
    channels: int
    stride: int


@dataclass
class LastStage:
    """What :meth:`FeatureExtractor.split_last_stage` hands to a two-stage detector.

    Attributes:
        trunk: the extractor without its last stage; its deepest map (last entry of
            ``trunk.feature_info``) is the one the RPN and the RoI crops use.
        stage: module applied to RoI crops ``[R, C_trunk, S, S] -> [R, out_channels, S', S']``.
        out_channels: channels produced by ``stage``.
        crop_size: side ``S`` of the RoI crops the box classifier feeds ``stage``: 14 by default,
            17 for the Inception extractors (Huang et al. 2017 section 3.6).
    """

    trunk: FeatureExtractor
    stage: nn.Module
    out_channels: int
    crop_size: int = 14


class FeatureExtractor(nn.Module):
    """Base class: subclasses set :attr:`feature_info` in ``__init__`` and implement forward.

    Attributes:
        feature_info: output maps, shallow to deep.
        mean: per-channel RGB mean for inputs in [0, 1].
        std: per-channel RGB std for inputs in [0, 1].
        same_padding: True when every map is ``ceil(H / stride)`` cells (inputs a multiple of
            the deepest stride); False for VALID-padded backbones, whose maps are a few cells
            smaller.
        min_input_size: smallest image side ``forward`` accepts (1 = no limit); smaller
            inputs raise ``ValueError`` instead of an obscure convolution error.
    """

    feature_info: list[FeatureInfo]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    same_padding: bool = True
    min_input_size: int = 1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Args: x ``[B, 3, H, W]`` normalized. Returns ``{name: [B, C, H/s, W/s]}``."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs below :attr:`min_input_size` (x: ``[B, 3, H, W]``)."""
        height, width = x.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(
                f"{getattr(self, 'model_name', type(self).__name__)} needs inputs of at least "
                f"{self.min_input_size} px per side "
                f"(VALID padding or pooling leaves no cells below that), got {height}x{width}"
            )

    @property
    def channels(self) -> dict[str, int]:
        return {f.name: f.channels for f in self.feature_info}

    @property
    def strides(self) -> dict[str, int]:
        return {f.name: f.stride for f in self.feature_info}

    def split_last_stage(self) -> LastStage:
        """Split off the last stage to run on RoI crops (C4-style two-stage detectors).

        Raises:
            IncompatibleConfigError: if this extractor cannot be split.
        """
        raise IncompatibleConfigError(
            f"{type(self).__name__} cannot split off its last stage for a two-stage box classifier"
        )
