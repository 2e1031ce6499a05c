"""Anchors (default boxes) for every meta-architecture.

All functions return ``[A, 4]`` ``xyxy`` boxes in absolute pixels, ``float32``, on the
requested device. Results are cached per argument set and device, so calling them in
every forward is free after the first call; **the returned tensor is shared, never modify
it in place** (``.clone()`` first if you must).

Conventions shared by all generators:

* Aspect ratio ``r = width / height`` (TF Object Detection API and Liu et al.), and a box
  of size ``s`` and ratio ``r`` is ``w = s * sqrt(r)``, ``h = s / sqrt(r)`` (area kept).
* Order: layer, then row ``y``, then column ``x``, then box type. This is what a conv head
  gives with ``out.permute(0, 2, 3, 1).reshape(B, -1, K)`` when its ``K * num_anchors``
  output channels are laid out anchor-major (channel ``a * K + k``), as torchvision's heads.
* Geometry is computed in float64 on the CPU once, then cast and moved, so anchors do not
  depend on the device's float arithmetic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["grid_anchors", "refinedet_anchors", "ssd_default_boxes", "ssd_scales"]

_Pair = tuple[float, float]
_WH = tuple[_Pair, ...]
# One pyramid level: ((feat_h, feat_w), (step_y, step_x), ((w, h), ...) per location).
_Level = tuple[tuple[int, int], _Pair, _WH]


def _pair(value: float | Sequence[float]) -> tuple:
    """``v -> (v, v)``; a 2-sequence is returned as a tuple."""
    if isinstance(value, (int, float)):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected a number or a (y, x) pair, got {value!r}")
    return tuple(value)


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _tile(level: _Level, offset: float) -> Tensor:
    """Tile the per-location boxes of one level over its grid.

    Returns:
        ``[fh * fw * K, 4]`` float64 xyxy, ordered y, x, box type; centres at
        ``((x + offset) * step_x, (y + offset) * step_y)``.
    """
    (fh, fw), (step_y, step_x), wh = level
    ys = (torch.arange(fh, dtype=torch.float64) + offset) * step_y
    xs = (torch.arange(fw, dtype=torch.float64) + offset) * step_x
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # [fh, fw], y-major
    centers = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # [HW, 1, 2]
    half = torch.tensor(wh, dtype=torch.float64).reshape(1, -1, 2) / 2  # [1, K, 2]
    return torch.cat((centers - half, centers + half), dim=-1).reshape(-1, 4)


@functools.lru_cache(maxsize=128)
def _build(
    levels: tuple[_Level, ...],
    offset: float,
    clip_size: tuple[int, int] | None,
    device: torch.device,
) -> Tensor:
    """Concatenate tiled levels, clip if asked, cast to float32 on ``device`` (cached)."""
    boxes = torch.cat([_tile(level, offset) for level in levels])
    if clip_size is not None:
        height, width = clip_size
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
    return boxes.to(device=device, dtype=torch.float32)


def _ratio_pair(size_w: float, size_h: float, ratio: float) -> _Pair:
    root = math.sqrt(ratio)
    return (size_w * root, size_h / root)


def ssd_scales(
    num_layers: int,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    *,
    extra_scale: float | None = 1.0,
) -> list[float]:
    """Liu et al.'s linear scales ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)``.

    Args:
        num_layers: number of prediction layers ``m``.
        min_scale: ``s_1`` as a fraction of the image size.
        max_scale: ``s_m``.
        extra_scale: ``s_{m+1}``, only used for the ``sqrt(s_m s_{m+1})`` box of the last
            layer. ``1.0`` follows the TF Object Detection API (Huang et al.) and
            torchvision; ``None`` continues the linear progression as the Caffe SSD does.

    Returns:
        ``num_layers + 1`` floats ``[s_1, ..., s_m, s_{m+1}]``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if num_layers == 1:
        scales = [min_scale]
        step = max_scale - min_scale
    else:
        step = (max_scale - min_scale) / (num_layers - 1)
        scales = [min_scale + step * k for k in range(num_layers)]
    scales.append(scales[-1] + step if extra_scale is None else extra_scale)
    return scales


def ssd_default_boxes(
    feature_sizes: Sequence[tuple[int, int] | int],
    image_size: tuple[int, int],
    *,
    aspect_ratios: Sequence[Sequence[float]],
    scales: Sequence[float] | None = None,
    min_sizes: Sequence[float] | None = None,
    max_sizes: Sequence[float] | None = None,
    steps: Sequence[float | tuple[float, float]] | None = None,
    offset: float = 0.5,
    clip: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """SSD default boxes (Liu et al. 2016, section 2.2).

    Per location of layer ``k``, in this order: the box of size ``s_k`` ratio 1, the box
    of size ``sqrt(s_k s_{k+1})`` ratio 1, then for each ``r`` in ``aspect_ratios[k]``
    the boxes of ratio ``r`` (wide) and ``1 / r`` (tall): ``2 + 2 * len(aspect_ratios[k])``
    boxes, the order of the Caffe SSD and of torchvision's ``DefaultBoxGenerator``.

    Sizes come either from ``scales`` (fractions of the image: ``w = s * W``,
    ``h = s * H``, so boxes are square only on square images) or from explicit pixel
    ``min_sizes`` / ``max_sizes`` (the Caffe configs, e.g. SSD300: ``min_sizes=[30, 60,
    111, 162, 213, 264]``, ``max_sizes=[60, 111, 162, 213, 264, 315]``, ``steps=[8, 16,
    32, 64, 100, 300]``). With neither, ``scales = ssd_scales(num_layers)``.

    Args:
        feature_sizes: per layer ``(height, width)`` of the feature map (or one int).
        image_size: ``(height, width)`` of the network input in pixels.
        aspect_ratios: per layer the ratios ``r >= 1`` (``1 / r`` is added automatically).
        scales: ``num_layers + 1`` fractions of the image size (as :func:`ssd_scales`).
        min_sizes: per layer ``s_k`` in pixels; requires ``max_sizes``.
        max_sizes: per layer ``s_{k+1}`` in pixels.
        steps: per layer the pixel distance between centres, a number or ``(y, x)``;
            default ``image_size / feature_size`` per axis.
        offset: centre of cell ``(y, x)`` is ``((x + offset) * step_x, (y + offset) * step_y)``.
        clip: clip the xyxy boxes to the image. (torchvision clamps the *cxcywh* form
            instead, which shifts centres; clipping corners keeps the visible part.)
        device: where the result lives (default CPU).

    Returns:
        ``[A, 4]`` float32 xyxy pixels; SSD300 gives 8732 boxes, SSD512 24564.
    """
    fsizes = tuple(tuple(int(v) for v in _pair(f)) for f in feature_sizes)
    num_layers = len(fsizes)
    height, width = image_size
    if len(aspect_ratios) != num_layers:
        raise ValueError(f"{len(aspect_ratios)} aspect-ratio lists for {num_layers} layers")
    for ratios in aspect_ratios:
        if any(r < 1 for r in ratios):
            raise ValueError(f"aspect_ratios lists only r >= 1 (1/r is added), got {ratios}")

    if min_sizes is not None or max_sizes is not None:
        if scales is not None:
            raise ValueError("give either scales or min_sizes/max_sizes, not both")
        if min_sizes is None or max_sizes is None:
            raise ValueError("min_sizes and max_sizes go together")
        if len(min_sizes) != num_layers or len(max_sizes) != num_layers:
            raise ValueError(f"min_sizes/max_sizes need {num_layers} entries")
        base = [
            ((s, s), (math.sqrt(s * t),) * 2) for s, t in zip(min_sizes, max_sizes, strict=True)
        ]
    else:
        scales = ssd_scales(num_layers) if scales is None else list(scales)
        if len(scales) != num_layers + 1:
            raise ValueError(f"scales needs num_layers + 1 = {num_layers + 1} entries")
        base = []
        for s, t in zip(scales[:-1], scales[1:], strict=True):
            s_prime = math.sqrt(s * t)
            base.append(((s * width, s * height), (s_prime * width, s_prime * height)))

    if steps is None:
        step_pairs = [(height / fh, width / fw) for fh, fw in fsizes]
    else:
        if len(steps) != num_layers:
            raise ValueError(f"steps needs {num_layers} entries")
        step_pairs = [tuple(float(v) for v in _pair(s)) for s in steps]

    levels = []
    for fsize, step, (size_k, size_prime), ratios in zip(
        fsizes, step_pairs, base, aspect_ratios, strict=True
    ):
        wh = [size_k, size_prime]
        for r in ratios:
            wh.append(_ratio_pair(*size_k, r))
            wh.append(_ratio_pair(*size_k, 1.0 / r))
        levels.append((fsize, step, tuple((float(w), float(h)) for w, h in wh)))
    clip_size = (int(height), int(width)) if clip else None
    return _build(tuple(levels), float(offset), clip_size, _device(device))


def grid_anchors(
    feature_size: tuple[int, int],
    stride: int | tuple[int, int],
    *,
    scales: Sequence[float],
    aspect_ratios: Sequence[float],
    base_size: float | None = None,
    offset: float = 0.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Faster R-CNN / RPN grid anchors on one feature map.

    Huang et al. use 4 scales x 3 ratios (TF OD API: ``scales=(0.25, 0.5, 1, 2)`` with
    ``base_size=256``, ``aspect_ratios=(0.5, 1, 2)``, stride 16).

    Per location the ``len(scales) * len(aspect_ratios)`` anchors are ordered
    **ratio-major, scale fastest** (anchor ``i * len(scales) + j`` has ratio ``i``, scale
    ``j``), the order of the TF OD API's ``GridAnchorGenerator`` and torchvision's
    ``AnchorGenerator``. Centres sit at ``(x + offset) * stride`` with ``offset = 0``
    by default (TF OD API, torchvision and Detectron2 all put the first centre at the
    image corner); pass ``0.5`` to centre anchors on their cells. Anchors are not
    rounded (torchvision rounds its base anchors to integers) nor clipped.

    Args:
        feature_size: ``(height, width)`` of the feature map.
        stride: pixels between neighbouring centres, a number or ``(y, x)``.
        scales: anchor sizes ``sqrt(w * h)``: pixels if ``base_size`` is None, else
            multiples of ``base_size``.
        aspect_ratios: ``w / h`` ratios.
        base_size: reference size in pixels for relative ``scales``.
        offset: centre offset in units of ``stride``.
        device: where the result lives (default CPU).

    Returns:
        ``[H * W * len(aspect_ratios) * len(scales), 4]`` float32 xyxy pixels.
    """
    sizes = [float(s) * (1.0 if base_size is None else float(base_size)) for s in scales]
    wh = tuple(_ratio_pair(s, s, float(r)) for r in aspect_ratios for s in sizes)
    fsize = tuple(int(v) for v in _pair(feature_size))
    step = tuple(float(v) for v in _pair(stride))
    return _build(((fsize, step, wh),), float(offset), None, _device(device))


def refinedet_anchors(
    feature_sizes: Sequence[tuple[int, int] | int],
    image_size: tuple[int, int],
    strides: Sequence[int],
    *,
    scale_factor: float = 4.0,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    offset: float = 0.5,
    clip: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """RefineDet anchors (Zhang et al. 2018, section 4.1).

    One anchor size per layer, ``scale_factor * stride`` (32, 64, 128, 256 for strides
    8..64), and the given ``w / h`` ratios in the order given, per location. Centres at
    ``(x + offset) * stride`` with the Caffe ``PriorBox`` offset 0.5.

    Args:
        feature_sizes: per layer ``(height, width)`` (or one int).
        image_size: ``(height, width)`` of the input; only used when ``clip``.
        strides: per layer stride in pixels.
        scale_factor: anchor size in units of the stride.
        aspect_ratios: ``w / h`` ratios, all used on every layer.
        offset: centre offset in units of the stride.
        clip: clip to the image (the reference Caffe config does not).
        device: where the result lives (default CPU).

    Returns:
        ``[sum_k H_k * W_k * len(aspect_ratios), 4]`` float32 xyxy pixels.
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(f"{len(feature_sizes)} feature sizes for {len(strides)} strides")
    levels = []
    for fsize, stride in zip(feature_sizes, strides, strict=True):
        size = scale_factor * float(stride)
        wh = tuple(_ratio_pair(size, size, float(r)) for r in aspect_ratios)
        step = (float(stride), float(stride))
        levels.append((tuple(int(v) for v in _pair(fsize)), step, wh))
    clip_size = (int(image_size[0]), int(image_size[1])) if clip else None
    return _build(tuple(levels), float(offset), clip_size, _device(device))
