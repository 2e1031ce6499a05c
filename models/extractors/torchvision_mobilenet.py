"""torchvision's MobileNetV3-Large as a :class:`FeatureExtractor`, tapped as SSDLite taps it.

torchvision's ``ssdlite320_mobilenet_v3_large`` (Howard et al. 2019 section 6.3) predicts
from the *expansion* 1x1 convolution of the first stride-32 bottleneck (block 13, 672
channels at stride 16) and from the last 1x1 convolution (stride 32), not from block
outputs as :class:`~models.extractors.TimmExtractor` does. Without an ImageNet backbone it
also halves the last stage (``reduced_tail``, the paper's Table 6): blocks 13-15 give 80
channels and the last convolution 480 instead of 160 and 960. This module builds that exact
backbone (torchvision's own ``mobilenet_v3_large`` layers, so torchvision checkpoints load by
key) on a :class:`SequentialExtractor`:

* ``c3``: expansion conv of block 7 (240 ch, stride 8), the same rule one stage earlier;
* ``c4``: expansion conv of block 13 (672 ch, stride 16);
* ``c5``: the last 1x1 conv (480 ch with ``reduced_tail``, else 960; stride 32).

A tapped block is split into its expansion conv and the rest (depthwise, SE, projection).
That is exact only because both tapped blocks have stride 2 and therefore no residual
connection; the constructor checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.mobilenetv3 import MobileNet_V3_Large_Weights, mobilenet_v3_large

from models.errors import IncompatibleConfigError
from models.extractors.base import IMAGENET_MEAN, IMAGENET_STD, FeatureInfo, LastStage
from models.extractors.sequential import SequentialExtractor
from models.extractors.weights import load_matching, read_state_dict

DEFAULT_LEVELS = (3, 4, 5)
# level -> index in torchvision's ``features`` of the stride-2 block whose expansion conv is
# the tap (c5 is the last conv, the last entry of ``features``).
_EXPANSION_TAP = {3: 7, 4: 13}


class TorchvisionMobileNetV3(SequentialExtractor):
    """torchvision ``mobilenet_v3_large`` features with SSDLite's taps (see the module doc).

    Args:
        reduced_tail: halve the channels of the last stage (torchvision's SSDLite does so
            when it has no ImageNet backbone; its ImageNet weights are for the full tail).
        out_levels: nominal levels to return, among 3, 4, 5 (default all three).
        output_stride: 32 (plain) or 16 (torchvision's ``dilated=True``: the last stage is
            dilated, ``c5`` keeps its name at stride 16); 8 is incompatible.
        pretrained: load torchvision's ``MobileNet_V3_Large_Weights.IMAGENET1K_V1``
            (downloads; needs ``reduced_tail=False``). Offline, pass the file as
            ``weights_path``.
        weights_path: local state dict: a torchvision MobileNetV3-Large classification
            checkpoint (``features.*``; ``classifier.*`` is ignored) or this extractor's own.
        frozen_bn: replace every BatchNorm by a frozen one holding the (loaded) statistics.
        bn_eps: BatchNorm epsilon (torchvision's MobileNetV3 and SSDLite: 0.001).
        bn_momentum: BatchNorm momentum (SSDLite: 0.03; torchvision's classifier: 0.01).

    Raises:
        IncompatibleConfigError: a level outside 3..5, or ``output_stride`` 8.
        ValueError: ``pretrained`` with ``weights_path`` or with ``reduced_tail``, or a
            weights file that does not match.
        FileNotFoundError: ``weights_path`` does not exist.

    Shapes:
        forward: ``[B, 3, H, W]`` normalized -> ``{"c3": [B, 240, H/8, W/8],
        "c4": [B, 672, H/16, W/16], "c5": [B, 480, H/32, W/32]}`` (sizes rounded up;
        ``c5`` 960 channels without ``reduced_tail``).
    """

    def __init__(
        self,
        *,
        reduced_tail: bool = True,
        out_levels: Sequence[int] | None = None,
        output_stride: int = 32,
        pretrained: bool = False,
        weights_path: str | None = None,
        frozen_bn: bool = False,
        bn_eps: float = 0.001,
        bn_momentum: float = 0.03,
    ):
        levels = tuple(
            int(level) for level in (DEFAULT_LEVELS if out_levels is None else out_levels)
        )
        if not levels or list(levels) != sorted(set(levels)) or not set(levels) <= {3, 4, 5}:
            raise IncompatibleConfigError(
                f"TorchvisionMobileNetV3 has levels [3, 4, 5]; out_levels must be increasing "
                f"and among them, got {list(levels)}"
            )
        if output_stride not in (16, 32):
            raise IncompatibleConfigError(
                f"TorchvisionMobileNetV3 reaches output_stride 32 or 16 (dilated last stage), "
                f"not {output_stride}"
            )
        if pretrained and weights_path:
            raise ValueError("give either pretrained=True or weights_path, not both")
        if pretrained and reduced_tail:
            raise ValueError(
                "torchvision's ImageNet weights have the full tail: reduced_tail=false"
            )

        net = mobilenet_v3_large(
            weights=None,
            reduced_tail=reduced_tail,
            dilated=output_stride == 16,
            norm_layer=partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum),
        )
        own_state = None
        if pretrained:
            weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1
            net.load_state_dict(weights.get_state_dict(progress=False, check_hash=True))
        elif weights_path:
            state = read_state_dict(weights_path)
            if any(key.startswith("steps.") for key in state):
                own_state = state  # a saved TorchvisionMobileNetV3: load after the split
            else:
                load_matching(net.features, _strip(state, "features."), source=str(weights_path))
        features = net.features
        if frozen_bn:
            # After loading, so the frozen buffers hold the loaded statistics.
            features = freeze_batch_norm_2d(features)

        steps: list[tuple[str, nn.Module]] = []
        taps: dict[str, FeatureInfo] = {}
        start = 0
        for level, index in sorted(_EXPANSION_TAP.items()):
            block = features[index]
            # Splitting a block with a residual would drop its skip connection.
            if block.use_res_connect or not block._is_cn:
                raise AssertionError(f"block {index} must be strided without a residual")
            steps += [(f"features.{i}", features[i]) for i in range(start, index)]
            expansion, rest = block.block[0], block.block[1:]
            steps += [(f"features.{index}.expand", expansion), (f"features.{index}.rest", rest)]
            taps[f"features.{index}.expand"] = FeatureInfo(
                f"c{level}", expansion.out_channels, min(2**level, output_stride)
            )
            start = index + 1
        steps += [(f"features.{i}", features[i]) for i in range(start, len(features))]
        last = f"features.{len(features) - 1}"
        taps[last] = FeatureInfo("c5", features[-1].out_channels, output_stride)
        taps = {k: v for k, v in taps.items() if int(v.name[1:]) in levels}
        # Nothing after the deepest requested map is worth running.
        names = [name for name, _ in steps]
        deepest = max(names.index(k) for k in taps)
        super().__init__(steps[: deepest + 1], taps, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if own_state is not None:
            load_matching(self, own_state, source=str(weights_path))
        self.reduced_tail = reduced_tail
        self.output_stride = output_stride
        self.frozen_bn = frozen_bn

    def split_last_stage(self) -> LastStage:
        """Cut after ``c4`` (block 13's expansion): ``stage`` is the rest of block 13, blocks
        14-15 and the last conv, mapping crops ``[R, 672, 14, 14] -> [R, 480, 7, 7]``.

        Raises:
            IncompatibleConfigError: ``c4`` or ``c5`` not among the levels, or output stride
                16 (the stage would run dilated at stride 1 on the crops; not supported).
        """
        names = [f.name for f in self.feature_info]
        if "c4" not in names or "c5" not in names:
            raise IncompatibleConfigError(
                f"split_last_stage needs levels 4 and 5 in out_levels, got {names}"
            )
        if self.output_stride != 32:
            raise IncompatibleConfigError(
                "TorchvisionMobileNetV3 splits its last stage only at output_stride 32"
            )
        keys = list(self.steps)
        head = keys[: keys.index("features_13_expand") + 1]
        info = {f.name: f for f in self.feature_info}
        trunk = SequentialExtractor(
            [(k, self.steps[k]) for k in head],
            {k: info[self._taps[k]] for k in head if k in self._taps},
            mean=self.mean,
            std=self.std,
        )
        # Reuses (does not copy) the modules, as the timm extractors' split does.
        stage = nn.Sequential(*(self.steps[k] for k in keys[len(head) :]))
        return LastStage(trunk=trunk, stage=stage, out_channels=self.channels["c5"])

    def extra_repr(self) -> str:
        levels = [f.name for f in self.feature_info]
        return (
            f"reduced_tail={self.reduced_tail}, levels={levels}, output_stride={self.output_stride}"
        )


def _strip(state: dict, prefix: str) -> dict:
    """Keys of ``state`` under ``prefix`` without it (a classification checkpoint's
    ``features.*``); other keys (``classifier.*``) are dropped."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
