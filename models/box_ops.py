"""Box coding, IoU, clipping and NMS shared by every meta-architecture.

Box format: ``xyxy`` in absolute pixels unless a docstring says otherwise. IoU, clipping
and NMS are thin wrappers over :mod:`torchvision.ops` (fast C++/CUDA kernels); this module
only adds the coder of Huang et al. 2017 (section 3.2) and the score-threshold / top-k /
NMS pipeline every ``postprocess`` runs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import (
    batched_nms,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)

__all__ = [
    "BoxCoder",
    "batched_nms_topk",
    "box_convert",
    "box_iou",
    "clip_boxes",
    "multiclass_nms",
    "remove_small_boxes",
]


class BoxCoder:
    """Encodes boxes relative to anchors and back (Huang et al. 2017, section 3.2).

    ``phi(b; a) = [wx * (xc - xca) / wa, wy * (yc - yca) / ha, ww * log(w / wa), wh * log(h / ha)]``
    with weights ``[10, 10, 5, 5]`` by default. Huang et al. write y before x; we keep x
    before y (``[dx, dy, dw, dh]``), the order of torchvision and Detectron2, so deltas line
    up with ``xyxy`` boxes. Width is ``x2 - x1`` (no Caffe-style ``+ 1``).

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers applied when encoding, divided out when
            decoding.
        bbox_xform_clip: upper clamp of the *unweighted* ``dw, dh`` when decoding, so that
            ``exp`` cannot overflow on a bad prediction early in training. The default
            ``log(1000 / 16)`` is torchvision's / Detectron's.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 entries, got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Encode ground-truth boxes relative to anchors.

        Args:
            boxes: ``[..., 4]`` xyxy target boxes.
            anchors: ``[..., 4]`` xyxy anchors, broadcastable against ``boxes``.

        Returns:
            ``[..., 4]`` deltas ``[dx, dy, dw, dh]`` (weighted). Degenerate (zero-size)
            boxes give ``-inf`` in ``dw``/``dh``; the data pipeline is expected to drop them.
        """
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        bw = boxes[..., 2] - boxes[..., 0]
        bh = boxes[..., 3] - boxes[..., 1]
        bx = boxes[..., 0] + 0.5 * bw
        by = boxes[..., 1] + 0.5 * bh
        dx = wx * (bx - ax) / aw
        dy = wy * (by - ay) / ah
        dw = ww * torch.log(bw / aw)
        dh = wh * torch.log(bh / ah)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Apply deltas to anchors.

        Args:
            deltas: ``[..., 4]`` weighted ``[dx, dy, dw, dh]``.
            anchors: ``[..., 4]`` xyxy anchors, broadcastable against ``deltas``.

        Returns:
            ``[..., 4]`` xyxy boxes (not clipped to the image). Computed in the promoted
            dtype of ``deltas`` and ``anchors``, so fp16 deltas over fp32 anchors decode in
            fp32 (pixel coordinates need more than fp16's 11 bits of mantissa).
        """
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        # Clamp before exp: an untrained head can emit huge dw/dh and exp would give inf.
        dw = (deltas[..., 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[..., 3] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * aw + ax
        cy = dy * ah + ay
        half_w = 0.5 * torch.exp(dw) * aw
        half_h = 0.5 * torch.exp(dh) * ah
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip ``[..., 4]`` xyxy boxes to an image of ``size = (height, width)``.

    Wrapper of :func:`torchvision.ops.clip_boxes_to_image` (not in place).
    """
    return clip_boxes_to_image(boxes, size)


def batched_nms_topk(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    iou_threshold: float,
    max_detections: int,
    score_threshold: float = 0.0,
    pre_nms_topk: int | None = None,
) -> Tensor:
    """Score threshold, optional top-k, class-wise NMS, then keep the best detections.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        labels: ``[N]`` int64; NMS runs independently per label.
        iou_threshold: NMS overlap threshold.
        max_detections: keep at most this many after NMS.
        score_threshold: drop candidates with ``score <= score_threshold`` first
            (strict, as torchvision's detectors).
        pre_nms_topk: if set, keep only the ``pre_nms_topk`` highest-scoring candidates
            (over all labels) before NMS, which bounds NMS cost.

    Returns:
        ``[K]`` int64 indices into the inputs, sorted by score descending,
        ``K <= max_detections``.
    """
    idx = torch.nonzero(scores > score_threshold).squeeze(1)
    cand_scores = scores[idx]
    if pre_nms_topk is not None and cand_scores.numel() > pre_nms_topk:
        cand_scores, top = cand_scores.topk(pre_nms_topk)
        idx = idx[top]
    keep = batched_nms(boxes[idx], cand_scores, labels[idx], iou_threshold)
    return idx[keep[:max_detections]]


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    *,
    score_threshold: float,
    iou_threshold: float,
    pre_nms_topk: int | None,
    max_detections: int,
    class_agnostic_boxes: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS over a dense ``[A, C]`` score map, one image.

    Every (anchor, class) pair is a candidate: pairs above ``score_threshold`` are
    flattened, the ``pre_nms_topk`` best kept, and :func:`torchvision.ops.batched_nms`
    runs with the class as the group, so no loop over classes.

    Args:
        boxes: ``[A, 4]`` xyxy boxes shared by all classes (``class_agnostic_boxes=True``;
            ``[A, 1, 4]`` also accepted) or ``[A, C, 4]`` one box per class
            (``class_agnostic_boxes=False``, e.g. Faster R-CNN's box classifier).
        scores: ``[A, C]`` per-class scores, no background column.
        score_threshold: keep pairs with ``score > score_threshold``.
        iou_threshold: NMS overlap threshold (within a class).
        pre_nms_topk: candidates kept before NMS (over all classes); ``None`` keeps all.
        max_detections: detections kept after NMS.
        class_agnostic_boxes: states which box layout is passed; checked against the
            shape of ``boxes`` to catch a head/postprocess mismatch early.

    Returns:
        ``(boxes [D, 4] xyxy, scores [D], labels [D] int64 in 0..C-1)``, sorted by score
        descending, ``D <= max_detections``.
    """
    num_anchors, num_classes = scores.shape
    if class_agnostic_boxes:
        if boxes.dim() == 3 and boxes.shape[1] == 1:
            boxes = boxes.squeeze(1)
        if boxes.shape != (num_anchors, 4):
            raise ValueError(f"class-agnostic boxes must be [A, 4], got {tuple(boxes.shape)}")
    elif boxes.shape != (num_anchors, num_classes, 4):
        raise ValueError(
            f"class-specific boxes must be [A, C, 4] = [{num_anchors}, {num_classes}, 4], "
            f"got {tuple(boxes.shape)}"
        )
    flat_scores = scores.reshape(-1)
    flat_idx = torch.nonzero(flat_scores > score_threshold).squeeze(1)
    cand_scores = flat_scores[flat_idx]
    if pre_nms_topk is not None and cand_scores.numel() > pre_nms_topk:
        cand_scores, top = cand_scores.topk(pre_nms_topk)
        flat_idx = flat_idx[top]
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    labels = flat_idx - anchor_idx * num_classes
    cand_boxes = boxes[anchor_idx] if class_agnostic_boxes else boxes[anchor_idx, labels]
    keep = batched_nms(cand_boxes, cand_scores, labels, iou_threshold)[:max_detections]
    return cand_boxes[keep], cand_scores[keep], labels[keep]
