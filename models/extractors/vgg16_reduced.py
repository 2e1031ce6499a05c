"""SSD's "reduced" VGG-16 (Liu et al. 2016), also in RefineDet's layout (Zhang et al. 2018).

VGG-16 ``conv1_1 .. conv5_3`` is torchvision's own layer list (``make_layers(cfgs["D"])``,
the ``features`` of ``torchvision.models.vgg16`` without building its 120M-parameter
classifier), so torchvision checkpoints load by key. On top of it:

* ``pool3`` uses ``ceil_mode=True`` so 300 px gives a 38x38 ``conv4_3`` (SSD300).
* ``fc6`` / ``fc7`` become convolutions: ``fc6`` a 3x3 conv with 1024 channels, dilated,
  ``fc7`` a 1x1 conv with 1024 channels (the "reduced" fc layers, like DeepLab-LargeFOV).
* ``conv4_3`` is L2-normalized with a learned per-channel scale (ParseNet), initialized to
  20 (Huang et al. 2017 section 3.6), because its activations are much larger than the
  deeper maps'.

Layouts:

* ``"ssd"``: ``pool5`` 3x3 stride 1, ``fc6`` dilation 6. Maps ``c3`` = L2Norm(conv4_3)
  (512 ch, stride 8) and ``c4`` = fc7 (1024 ch, stride 16).
* ``"refinedet"``: ``pool5`` 2x2 stride 2, ``fc6`` dilation 3 (RefineDet's released model).
  Maps ``c3`` = L2Norm(conv4_3), ``c4`` = L2Norm(conv5_3) (512 ch, stride 16, scale
  initialized to 8; RefineDet uses 10 for conv4_3) and ``c5`` = fc7 (1024 ch, stride 32).
  Each map keeps its stride-derived name, so conv5_3 and fc7 never collide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import VGG16_Weights, cfgs, make_layers

from models.errors import IncompatibleConfigError
from models.extractors.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    FeatureInfo,
    LastStage,
)
from models.extractors.sequential import SequentialExtractor
from models.extractors.weights import load_matching, read_state_dict

# Indices into torchvision's VGG-16 ``features``: conv4_3's ReLU is 22, pool4 23, conv5_3's
# ReLU 29, pool3 16, pool5 30.
_POOL3, _CONV4_3_END, _CONV5_3_END, _POOL5 = 16, 23, 30, 30

# Caffe VGG (the torchvision IMAGENET1K_FEATURES weights, ported from ssd.pytorch) subtracts
# the RGB mean in 0..255 and does not scale: for [0, 1] inputs that is std = 1/255.
CAFFE_MEAN = (0.48235, 0.45882, 0.40784)
CAFFE_STD = (1.0 / 255.0,) * 3

# layout -> (pool5 factory, fc6 dilation)
_LAYOUTS = {
    "ssd": (lambda: nn.MaxPool2d(3, stride=1, padding=1), 6),
    "refinedet": (lambda: nn.MaxPool2d(2, stride=2), 3),
}
# Smallest input side that leaves pool4 (ssd) or pool5 (refinedet) a 2x2 input; derived
# from the pool chain (pool3 rounds up) and checked by running the model.
_MIN_INPUT_SIZE = {"ssd": 12, "refinedet": 28}


class L2Norm(nn.Module):
    """Per-position L2 normalization over channels times a learned per-channel scale.

    Args:
        channels: number of channels C.
        scale: initial value of every channel's scale.
        eps: floor for the norm, so all-zero positions stay zero instead of NaN.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``. Returns ``[B, C, H, W]`` with per-position norm = scale."""
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, dim=1, eps=self.eps)


class VGGBoxHead(nn.Module):
    """VGG's fc6/fc7 as the second stage of Faster R-CNN (Huang et al. 2017 section 3.6).

    Crops are max-pooled to 7x7 (14x14 crops -> 2x2 pooling, as in the paper), flattened and
    passed through ``Linear(512*7*7, 4096)``-ReLU-``Linear(4096, 4096)``-ReLU. The vector
    is returned as a ``[R, 4096, 1, 1]`` map so box classifiers treat every extractor's stage
    output as ``[R, C, h, w]``.
    """

    def __init__(self, in_channels: int = 512, hidden: int = 4096):
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(7)
        self.fc6 = nn.Linear(in_channels * 7 * 7, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        for fc in (self.fc6, self.fc7):  # torchvision's VGG classifier init
            nn.init.normal_(fc.weight, 0, 0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Args: crops ``[R, 512, S, S]`` (S >= 7, 14 in the paper). Returns ``[R, 4096, 1, 1]``."""
        x = self.pool(crops).flatten(1)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        return x[:, :, None, None]


class VGG16Reduced(FeatureExtractor):
    """SSD / RefineDet VGG-16 with dilated conv fc6/fc7 and L2-normalized conv4_3.

    Args:
        layout: ``"ssd"`` (c3, c4) or ``"refinedet"`` (c3, c4, c5); see the module docstring.
        l2norm_scale: initial L2Norm scale of conv4_3 (20 in SSD and Huang et al., 10 in
            RefineDet).
        conv5_3_l2norm_scale: initial L2Norm scale of conv5_3 (``"refinedet"`` layout only).
        pretrained: load torchvision's ``VGG16_Weights.IMAGENET1K_FEATURES`` into conv1_1 ..
            conv5_3 (downloads; offline, pass the same file as ``weights_path``). Its
            classifier holds NaNs, so fc6/fc7 (and the split stage's fc layers) start random.
        weights_path: local state dict: either this module's own, or a torchvision VGG-16
            checkpoint (``features.*`` keys; fc6/fc7/L2Norm then keep their initialization).
        normalization: ``"caffe"`` (mean subtraction in 0..255, what IMAGENET1K_FEATURES was
            trained with) or ``"imagenet"`` (ImageNet mean/std for [0, 1] inputs). Default:
            caffe when ``pretrained``, otherwise imagenet.
        output_stride: accepted so sweeps can set it on every extractor: VGG is never dilated
            here, so it must be at least the layout's deepest stride (16 for ssd, 32 for
            refinedet), else IncompatibleConfigError.
        frozen_bn: accepted for the same reason; VGG-16 has no BatchNorm, so it is a no-op.
    """

    def __init__(
        self,
        *,
        layout: str = "ssd",
        l2norm_scale: float = 20.0,
        conv5_3_l2norm_scale: float = 8.0,
        pretrained: bool = False,
        weights_path: str | None = None,
        normalization: str | None = None,
        output_stride: int = 32,
        frozen_bn: bool = False,
    ):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(_LAYOUTS)}, got {layout!r}")
        if pretrained and weights_path:
            raise ValueError("give either pretrained=True or weights_path, not both")
        deepest = 16 if layout == "ssd" else 32
        if output_stride < deepest:
            raise IncompatibleConfigError(
                f"VGG16Reduced ({layout} layout) has no dilation option: its deepest map is at "
                f"stride {deepest}, output_stride={output_stride} cannot be reached"
            )
        if normalization is None:
            normalization = "caffe" if pretrained else "imagenet"
        if normalization not in ("caffe", "imagenet"):
            raise ValueError(f"normalization must be 'caffe' or 'imagenet', got {normalization!r}")
        self.layout = layout
        self.frozen_bn = frozen_bn  # nothing to freeze; kept for a uniform interface
        self.mean, self.std = (
            (CAFFE_MEAN, CAFFE_STD) if normalization == "caffe" else (IMAGENET_MEAN, IMAGENET_STD)
        )
        self.min_input_size = _MIN_INPUT_SIZE[layout]

        self.features = make_layers(cfgs["D"])  # conv1_1 .. pool5, torchvision's key layout
        self.features[_POOL3].ceil_mode = True
        make_pool5, dilation = _LAYOUTS[layout]
        self.features[_POOL5] = make_pool5()
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.l2norm = L2Norm(512, l2norm_scale)
        self.l2norm_conv5_3 = L2Norm(512, conv5_3_l2norm_scale) if layout == "refinedet" else None
        self._init_weights()

        self.feature_info = [FeatureInfo("c3", 512, 8)]
        if layout == "refinedet":
            self.feature_info += [FeatureInfo("c4", 512, 16), FeatureInfo("c5", 1024, 32)]
        else:
            self.feature_info += [FeatureInfo("c4", 1024, 16)]

        if pretrained:
            state = VGG16_Weights.IMAGENET1K_FEATURES.get_state_dict(progress=False)
            self._load(state, source=VGG16_Weights.IMAGENET1K_FEATURES.url)
        elif weights_path:
            self._load(read_state_dict(weights_path), source=str(weights_path))

    def _init_weights(self) -> None:
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):  # as torchvision's VGG(init_weights=True)
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for conv in (self.fc6, self.fc7):  # new layers: xavier, as SSD's Caffe model
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _load(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        # A torchvision checkpoint only has features.* (plus a classifier, ignored):
        # then the layers VGG-16 lacks keep their initialization.
        torchvision_layout = not any(key.startswith("fc6.") for key in state)
        load_matching(
            self,
            state,
            source=source,
            optional=lambda key: torchvision_layout and not key.startswith("features."),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x ``[B, 3, H, W]`` normalized.

        Returns:
            ``{"c3": [B, 512, H/8, W/8], "c4": [B, 1024, H/16, W/16]}`` (ssd), or
            ``{"c3": ..., "c4": [B, 512, H/16, W/16], "c5": [B, 1024, H/32, W/32]}``
            (refinedet); sizes round up for pool3 and down for the other pools.
        """
        self._check_input(x)
        for layer in self.features[:_CONV4_3_END]:
            x = layer(x)
        out = {"c3": self.l2norm(x)}
        for layer in self.features[_CONV4_3_END:_CONV5_3_END]:
            x = layer(x)
        if self.l2norm_conv5_3 is not None:
            out["c4"] = self.l2norm_conv5_3(x)
        x = self.features[_POOL5](x)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        out[self.feature_info[-1].name] = x
        return out

    def split_last_stage(self) -> LastStage:
        """Faster R-CNN over VGG-16 (Huang et al. 2017 section 3.6): conv5 features + fc6/fc7.

        ``trunk`` reuses conv1_1 .. conv5_3 (no pool5, no L2Norm): ``c3`` = conv4_3 and
        ``c4`` = conv5_3, 512 channels at stride 16. ``stage`` is a new :class:`VGGBoxHead`
        (fully connected fc6/fc7, randomly initialized) mapping crops
        ``[R, 512, 14, 14] -> [R, 4096, 1, 1]``. The SSD conv fc6/fc7 are not used.
        """
        steps = [(str(i), self.features[i]) for i in range(_CONV5_3_END)]
        taps = {
            str(_CONV4_3_END - 1): FeatureInfo("c3", 512, 8),
            str(_CONV5_3_END - 1): FeatureInfo("c4", 512, 16),
        }
        trunk = SequentialExtractor(
            steps, taps, mean=self.mean, std=self.std, min_input_size=_MIN_INPUT_SIZE["ssd"]
        )
        return LastStage(trunk=trunk, stage=VGGBoxHead(512, 4096), out_channels=4096)

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}"
