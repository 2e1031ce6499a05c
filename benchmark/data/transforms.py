"""Box-aware train/eval transforms (torchvision.transforms.v2 over tv_tensors).

Input of every pipeline: ``(PIL image, target)`` (a tensor image works too) with ``target["boxes"]`` a
``tv_tensors.BoundingBoxes`` (XYXY, ``canvas_size`` = original ``(h, w)``) and
``target["labels"]`` int64 ``[N]``; other target keys pass through untouched.
Output: ``tv_tensors.Image`` float32 ``[3, H, W]`` in [0, 1] and boxes in the resized image.

Resizing belongs here, not in the model (DESIGN.md): the single-shot family sees a
fixed ``M x M`` input, the two-stage family a shorter side of ``M`` with the longer
side capped (Huang et al. 2017, section 3.3).
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

# ImageNet mean in 0..255: RandomZoomOut pads with it so the padding is "nothing"
# after the model's normalisation (as in the original SSD "expand" augmentation).
MEAN_FILL_255 = (124, 116, 104)

RESIZE_MODES = ("square", "shorter_side")


def default_max_size(image_size: int) -> int:
    """Longer-side cap for ``shorter_side`` when none is configured.

    Keeps the ratio of the classic Faster R-CNN setting (shorter 600, longer <= 1024),
    i.e. ``round(1024 / 600 * image_size)``; 218 for 128, 1024 for 600.
    """
    return round(1024 / 600 * image_size)


def resize_transform(
    resize_mode: str, image_size: int, max_size: int | None = None
) -> v2.Transform:
    """The resize step.

    Args:
        resize_mode: ``"square"``: ``image_size x image_size`` (aspect ratio not kept).
            ``"shorter_side"``: shorter side ``image_size``, longer side at most
            ``max_size`` (the shorter side then ends up below ``image_size``).
        image_size: ``M`` in pixels.
        max_size: Cap of the longer side for ``shorter_side``; None uses
            :func:`default_max_size`. Ignored for ``square``.
    """
    if resize_mode == "square":
        return v2.Resize((image_size, image_size), antialias=True)
    if resize_mode == "shorter_side":
        max_size = max_size or default_max_size(image_size)
        if max_size < image_size:
            raise ValueError(f"max_size ({max_size}) must be >= image_size ({image_size})")
        if max_size == image_size:
            # v2.Resize(M, max_size=M) is rejected; "longer side = M" is the same thing here.
            return v2.Resize(None, max_size=max_size, antialias=True)
        return v2.Resize(image_size, max_size=max_size, antialias=True)
    raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def build_transforms(
    *,
    train: bool,
    resize_mode: str,
    image_size: int,
    max_size: int | None = None,
    augment: bool = False,
) -> v2.Compose:
    """Compose the pipeline for one split.

    Args:
        train: Training pipeline (flip, optional SSD augmentation) or eval (resize only).
        resize_mode: See :func:`resize_transform`.
        image_size: See :func:`resize_transform`.
        max_size: See :func:`resize_transform`.
        augment: With ``train``: SSD augmentation (Liu et al. 2016): photometric
            distortion, zoom out ("expand"), IoU crop, then flip.

    Returns:
        A ``v2.Compose`` mapping ``(image, target) -> (image, target)``.
    """
    # Augment and resize the PIL image, convert to a tensor last (the "pil" backend of
    # torchvision's detection references): on a busy CPU PIL's ops are several times
    # faster than the tensor kernels (hue shifts go through HSV, intra-op threads fight
    # over cores), and the data loader must keep up with small models.
    steps: list[v2.Transform] = []
    if train and augment:
        steps += [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(
                fill={Image.Image: MEAN_FILL_255, tv_tensors.Image: MEAN_FILL_255, "others": 0}
            ),
            v2.RandomIoUCrop(),
            # IoUCrop marks boxes whose centre left the crop as degenerate: remove them
            # before anything else looks at the boxes (the torchvision-documented pairing).
            v2.SanitizeBoundingBoxes(),
        ]
    if train:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        resize_transform(resize_mode, image_size, max_size),
        v2.ToImage(),  # uint8 tv_tensors.Image [3, H, W]
        v2.ToDtype(torch.float32, scale=True),
        # Drops boxes that shrank below 1 px in the resize (and keeps labels aligned).
        v2.SanitizeBoundingBoxes(),
    ]
    return v2.Compose(steps)
