"""Slicing a timm ``features_only`` body into steps, for C4-style two-stage detectors, and
re-striding the split-off stage (:func:`undilated_copy`, :func:`stride_one_copy`).

timm wraps a backbone in one of a few feature classes. Two of them run their modules strictly
one after the other, so they can be cut anywhere without re-implementing the backbone:

* ``FeatureListNet`` / ``FeatureDictNet`` (ResNets, Inception v3, Inception-ResNet-v2, ...):
  an ``nn.ModuleDict`` whose forward runs the items in order and taps some of them.
* ``EfficientNetFeatures`` / ``MobileNetV3Features`` (MobileNets, EfficientNets): a stem,
  then ``blocks`` run in order, tapping after some of them (``_stage_out_idx``).

Anything else (hook- or getter-based wrappers, e.g. ViTs) is reported as not splittable.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from timm.models._features import FeatureDictNet
from torch import nn

from models.errors import IncompatibleConfigError

Steps = list[tuple[str, nn.Module]]

# Module types whose geometry (stride / padding / dilation) output_stride changes.
_GEOMETRY_ATTRS = {
    nn.Conv2d: ("stride", "padding", "dilation"),
    nn.MaxPool2d: ("stride", "padding", "dilation"),
    nn.AvgPool2d: ("stride", "padding"),
}


def body_steps(body: nn.Module) -> tuple[Steps, list[str]]:
    """Flatten a timm features wrapper into the modules its forward runs, in order.

    Args:
        body: a module returned by ``timm.create_model(..., features_only=True)``.

    Returns:
        ``(steps, tapped)``: ``(name, module)`` pairs in forward order, and the names of the
        steps whose outputs are the wrapper's feature maps, in output order.

    Raises:
        IncompatibleConfigError: the wrapper does not run its modules sequentially.
    """
    if isinstance(body, FeatureDictNet):  # FeatureListNet subclasses it
        steps = list(body.items())
        tapped = [name for name, _ in steps if name in body.return_layers]
        return steps, tapped
    blocks = getattr(body, "blocks", None)
    stage_out = getattr(body, "_stage_out_idx", None)
    if (
        isinstance(blocks, nn.Sequential)
        and stage_out is not None
        and getattr(body, "feature_hooks", 1) is None
    ):
        # feature_hooks is None exactly when taps sit at block outputs ("bottleneck"
        # location); the "expansion" location taps inside blocks and cannot be cut cleanly.
        stem = [(name, module) for name, module in body.named_children() if name != "blocks"]
        steps = stem + [(f"blocks.{i}", block) for i, block in enumerate(blocks)]
        # Stage s is tapped after blocks[s - 1]; stage 0 is the stem output.
        tapped = [stem[-1][0] if s == 0 else f"blocks.{s - 1}" for s in sorted(stage_out)]
        return steps, tapped
    raise IncompatibleConfigError(
        f"cannot split {type(body).__name__}: timm runs it through hooks, not as a sequence of "
        "modules, so its last stage cannot be cut off for a two-stage box classifier"
    )


def as_sequential(steps: Steps) -> nn.Sequential:
    """Wrap steps in an ``nn.Sequential`` (dots in names become underscores)."""
    return nn.Sequential(OrderedDict((name.replace(".", "_"), module) for name, module in steps))


def undilated_copy(stage: nn.Sequential, reference: nn.Sequential) -> nn.Sequential:
    """Copy ``stage`` with the strides / paddings / dilations of ``reference``.

    ``output_stride`` < 32 makes timm build the last stage with stride 1 and dilated
    convolutions; the weights are the same shapes as without dilation. On fixed-size RoI
    crops that dilation buys nothing (there is no resolution to preserve), so the box
    classifier runs the stage as ImageNet trained it: stride 2, no dilation. ``reference`` is
    the same stage built without ``output_stride`` (on the meta device, no weights needed).
    The copy leaves the extractor's own (dilated) modules untouched.
    """
    out = copy.deepcopy(stage)
    ref_modules = dict(reference.named_modules())
    for name, module in out.named_modules():
        ref = ref_modules.get(name)
        if ref is None or type(ref) is not type(module):
            raise IncompatibleConfigError(
                f"cannot undo dilation of the last stage: module {name!r} differs between "
                "the dilated and the plain build"
            )
        attrs = next((a for cls, a in _GEOMETRY_ATTRS.items() if isinstance(module, cls)), ())
        for attr in attrs:
            setattr(module, attr, getattr(ref, attr))
    return out


def stride_one_copy(stage: nn.Module) -> nn.Module:
    """Copy ``stage`` with every strided convolution and pooling at stride 1.

    Huang et al. 2017 (3.6) run ResNet's conv5_1 at stride 1, and the TF OD API's ResNet box
    classifier runs block4 with stride 1 on the 7x7 crops: the crop keeps its resolution
    through the last stage. Padding and dilation stay as they are, so a padded 3x3 / 5x5
    convolution keeps the size; a VALID one (Inception's reduction blocks) shrinks it by
    ``k - 1`` in every branch alike. A pooling whose kernel equals its stride only
    down-samples (ResNet-D's average-pool shortcut) and becomes an identity. The copy leaves
    ``stage`` untouched.
    """
    out = copy.deepcopy(stage)
    for parent in list(out.modules()):
        for name, module in list(parent.named_children()):
            attrs = next((a for cls, a in _GEOMETRY_ATTRS.items() if isinstance(module, cls)), ())
            if "stride" not in attrs or _pair(module.stride) == (1, 1):
                continue
            if isinstance(module, nn.AvgPool2d | nn.MaxPool2d) and _pair(
                module.kernel_size
            ) == _pair(module.stride):
                setattr(parent, name, nn.Identity())
            else:
                module.stride = 1 if isinstance(module.stride, int) else (1, 1)
    return out


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)
