"""An extractor made of modules run one after the other, with taps on some of them.

It is what :meth:`FeatureExtractor.split_last_stage` returns as ``trunk``: the layers of a
backbone up to its ``c4`` map, reusing (not copying) the backbone's modules and weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models.extractors.base import FeatureExtractor, FeatureInfo


class SequentialExtractor(FeatureExtractor):
    """Runs ``steps`` in order and returns the outputs of the tapped steps.

    Args:
        steps: ``(name, module)`` pairs in forward order; every module maps one tensor to one
            tensor. Names may contain dots (``blocks.3``); they are stored with underscores
            because ``nn.ModuleDict`` keys cannot contain dots.
        taps: step name -> the :class:`FeatureInfo` of that step's output. The last step must
            be tapped (nothing after the deepest map is worth running).
        mean: RGB mean for inputs in [0, 1].
        std: RGB std for inputs in [0, 1].
        same_padding: see :class:`FeatureExtractor`.
        min_input_size: see :class:`FeatureExtractor`.
    """

    def __init__(
        self,
        steps: Sequence[tuple[str, nn.Module]],
        taps: Mapping[str, FeatureInfo],
        *,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        same_padding: bool = True,
        min_input_size: int = 1,
    ):
        super().__init__()
        names = [name for name, _ in steps]
        unknown = set(taps) - set(names)
        if unknown:
            raise ValueError(f"taps {sorted(unknown)} are not among the steps {names}")
        if not steps or names[-1] not in taps:
            raise ValueError("the last step must be tapped")
        self.steps = nn.ModuleDict({name.replace(".", "_"): module for name, module in steps})
        # step key -> output name; forward order of the taps is the order of the steps.
        self._taps = {name.replace(".", "_"): info.name for name, info in taps.items()}
        self.feature_info = [taps[name] for name in names if name in taps]
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.same_padding = same_padding
        self.min_input_size = min_input_size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x ``[B, 3, H, W]`` normalized. Returns ``{name: [B, C, H/s, W/s]}``."""
        self._check_input(x)
        out: dict[str, torch.Tensor] = {}
        for key, step in self.steps.items():
            x = step(x)
            if key in self._taps:
                out[self._taps[key]] = x
        return out
