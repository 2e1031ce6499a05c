"""Any timm CNN as a :class:`FeatureExtractor`: a thin adapter over ``features_only=True``.

Adding a timm backbone to the benchmark is one YAML file in ``sweeps/extractor/``; channel
counts and strides come from timm's ``feature_info`` here, never from the YAML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from models.errors import IncompatibleConfigError
from models.extractors.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    FeatureInfo,
    LastStage,
)
from models.extractors.sequential import SequentialExtractor
from models.extractors.timm_split import as_sequential, body_steps, undilated_copy
from models.extractors.weights import load_matching, read_state_dict, timm_key_aliases

DEFAULT_LEVELS = (3, 4, 5)  # strides 8/16/32: SSD uses the last two, two-stage uses c4

# Backbones timm keeps VALID-padded (the TF-slim layout their ImageNet weights were trained
# with), keyed by timm architecture -> smallest input side for which every level, c5
# included, still has a cell (found with meta-device forwards). Below it they fail with
# an obscure "kernel size can't be greater than input size".
_VALID_PADDING_MIN_SIZE = {"inception_v3": 75, "inception_resnet_v2": 75, "inception_v4": 75}

_RESERVED_KWARGS = ("features_only", "out_indices", "num_classes")

# Faster R-CNN crop side per timm architecture (Huang et al. 2017 3.6: "cropped and resized
# to 17x17" for Inception v3 and Inception-ResNet; 14x14 for every other extractor).
_CROP_SIZE = {"inception_v3": 17, "inception_resnet_v2": 17, "inception_v4": 17}


class TimmExtractor(FeatureExtractor):
    """``timm.create_model(model_name, features_only=True, ...)`` with named maps.

    Args:
        model_name: timm model name, e.g. ``resnet50``, ``mobilenetv1_100``.
        out_levels: nominal pyramid levels to return, ``L`` naming map ``cL`` of nominal
            stride ``2**L``; default ``(3, 4, 5)``.
        output_stride: 32 (plain), 16 or 8: the later stages are dilated instead of strided,
            so ``c5`` (and ``c4`` at 8) keep a finer stride under the same name.
        pretrained: load timm's ImageNet weights (downloads: needs internet or a populated
            Hugging Face cache; use ``weights_path`` offline).
        weights_path: local ``.safetensors`` / ``.pth`` state dict of the timm
            classification model (head keys are ignored) or of this extractor.
        frozen_bn: replace every BatchNorm by a frozen one holding the (pretrained)
            statistics as buffers, as Huang et al. 2017 do for the two-stage detectors.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).

    Raises:
        IncompatibleConfigError: a level the model lacks, or an ``output_stride`` the model
            cannot reach by dilation (timm's Inception v3 / Inception-ResNet-v2).
        ValueError: ``pretrained`` together with ``weights_path``, an unreadable or
            mismatched weights file.
        FileNotFoundError: ``weights_path`` does not exist.
    """

    def __init__(
        self,
        *,
        model_name: str,
        out_levels: Sequence[int] | None = None,
        output_stride: int = 32,
        pretrained: bool = False,
        weights_path: str | None = None,
        frozen_bn: bool = False,
        **timm_kwargs: Any,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if pretrained and weights_path:
            raise ValueError("give either pretrained=True or weights_path, not both")
        reserved = [k for k in _RESERVED_KWARGS if k in timm_kwargs]
        if reserved:
            raise TypeError(f"TimmExtractor sets {reserved} itself")
        levels = tuple(
            int(level) for level in (DEFAULT_LEVELS if out_levels is None else out_levels)
        )
        self.model_name = model_name
        self.output_stride = output_stride
        self._timm_kwargs = dict(timm_kwargs)

        out_indices = self._out_indices(levels)
        self.body = self._create_body(out_indices, output_stride, pretrained)
        actual = list(self.body.feature_info.reduction())
        expected = [min(2**level, output_stride) for level in levels]
        if actual != expected:
            # Some timm models accept output_stride and silently ignore it.
            raise IncompatibleConfigError(
                f"timm model {model_name!r} gives strides {actual} for levels {list(levels)} at "
                f"output_stride={output_stride}, expected {expected}"
            )
        self._names = [f"c{level}" for level in levels]
        self.feature_info = [
            FeatureInfo(name, channels, stride)
            for name, channels, stride in zip(
                self._names, self.body.feature_info.channels(), actual, strict=True
            )
        ]

        if weights_path:
            state = read_state_dict(weights_path)
            load_matching(self.body, state, source=str(weights_path), aliases=timm_key_aliases)
        if frozen_bn:
            # After loading, so the frozen buffers hold the loaded statistics.
            self.body = freeze_batch_norm_2d(self.body)
        self.frozen_bn = frozen_bn

        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        min_size = _VALID_PADDING_MIN_SIZE.get(cfg.get("architecture", model_name))
        if min_size is not None:
            self.same_padding = False
            self.min_input_size = min_size

    # -- construction helpers ----------------------------------------------------------
    def _meta_body(self, out_indices: Sequence[int] | None = None) -> nn.Module:
        """The plain (undilated) features body on the meta device: structure, no weights."""
        kwargs = dict(self._timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            return timm.create_model(
                self.model_name, features_only=True, pretrained=False, device="meta", **kwargs
            )
        except TypeError:  # a model without the device argument: build it for real, once
            return timm.create_model(
                self.model_name, features_only=True, pretrained=False, **kwargs
            )

    def _out_indices(self, levels: tuple[int, ...]) -> list[int]:
        """timm ``out_indices`` of the requested nominal levels (read from a meta build)."""
        reductions = self._meta_body().feature_info.reduction()
        available = {int(math.log2(r)): i for i, r in enumerate(reductions) if r & (r - 1) == 0}
        missing = [level for level in levels if level not in available]
        if missing or len(set(levels)) != len(levels) or list(levels) != sorted(levels):
            raise IncompatibleConfigError(
                f"timm model {self.model_name!r} has levels {sorted(available)} (strides {reductions}); "
                f"out_levels must be increasing and among them, got {list(levels)}"
            )
        return [available[level] for level in levels]

    def _create_body(
        self, out_indices: list[int], output_stride: int, pretrained: bool
    ) -> nn.Module:
        kwargs = dict(self._timm_kwargs)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride  # not every model takes the argument at all
        try:
            return timm.create_model(
                self.model_name,
                features_only=True,
                out_indices=tuple(out_indices),
                pretrained=pretrained,
                **kwargs,
            )
        except (TypeError, AssertionError) as err:
            if output_stride == 32:
                raise
            # inception_v3 has no output_stride argument (TypeError); inception_resnet_v2
            # asserts output_stride == 32.
            raise IncompatibleConfigError(
                f"timm model {self.model_name!r} cannot dilate to output_stride={output_stride} "
                f"(only 32 is supported): {type(err).__name__} {err}"
            ) from err

    # -- FeatureExtractor --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x ``[B, 3, H, W]`` normalized. Returns ``{cL: [B, C_L, ~H/s_L, ~W/s_L]}``."""
        self._check_input(x)
        return dict(zip(self._names, self.body(x), strict=True))

    def split_last_stage(self) -> LastStage:
        """Cut the body after ``c4`` (C4-style Faster R-CNN / R-FCN, Huang et al. 2017 3.6).

        ``trunk`` reuses this extractor's modules up to ``c4`` (ResNet ``layer3`` i.e. the
        last layer of conv4; MobileNet v1 ``Conv2d_11``; Inception v3 ``Mixed_6e``;
        Inception-ResNet-v2 ``mixed_6a`` + its ``block17`` repeats), and keeps the other
        requested levels up to ``c4``. ``stage`` holds the modules from there to ``c5``
        (ResNet ``layer4``, ...) and maps crops ``[R, C4, 14, 14] -> [R, C5, 7, 7]`` (6x6 for
        the VALID-padded Inceptions; 8x8 on their 17x17 crops). ``crop_size`` is the paper's:
        17 for Inception v3 / Inception-ResNet-v2, 14 otherwise.

        With ``output_stride`` 16 the trunk is unchanged (``c4`` is stride 16 either way); with
        8 the trunk's ``c4`` is dilated to stride 8. The stage always runs undilated with its
        stride 2 (a copy of the modules is re-strided): dilation keeps resolution on the
        image, which is pointless on fixed-size crops.

        Raises:
            IncompatibleConfigError: ``c4`` or ``c5`` not among the levels, or a timm wrapper
                that cannot be cut.
        """
        if "c4" not in self._names or "c5" not in self._names:
            raise IncompatibleConfigError(
                f"split_last_stage needs levels 4 and 5 in out_levels, got {self._names}"
            )
        steps, tapped = body_steps(self.body)
        position = {name: i for i, (name, _) in enumerate(steps)}
        tap_of = dict(zip(self._names, tapped, strict=True))
        end4, end5 = position[tap_of["c4"]], position[tap_of["c5"]]
        trunk_taps = {
            tap_of[f.name]: f for f in self.feature_info if position[tap_of[f.name]] <= end4
        }
        trunk = SequentialExtractor(
            steps[: end4 + 1],
            trunk_taps,
            mean=self.mean,
            std=self.std,
            same_padding=self.same_padding,
            min_input_size=self.min_input_size,
        )
        stage = as_sequential(steps[end4 + 1 : end5 + 1])
        if self.strides["c5"] != 32:
            # Same modules built without output_stride, matched by step name.
            ref_steps = dict(body_steps(self._meta_body(self.body.feature_info.out_indices))[0])
            reference = as_sequential(
                [(name, ref_steps[name]) for name, _ in steps[end4 + 1 : end5 + 1]]
            )
            stage = undilated_copy(stage, reference)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        crop = _CROP_SIZE.get(cfg.get("architecture", self.model_name), 14)
        return LastStage(trunk=trunk, stage=stage, out_channels=self.channels["c5"], crop_size=crop)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, levels={self._names}, output_stride={self.output_stride}"
