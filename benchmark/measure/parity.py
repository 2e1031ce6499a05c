"""Output parity of a runtime backend against eager PyTorch (``bench.backend``, issue 17).

A runtime is timed only once its outputs are shown to be the eager model's, within stated
tolerances (``bench.parity_*``); otherwise the job fails with the numbers
(:class:`ParityError`), so a fast but wrong export is never reported as a speed-up.

What is compared, on the first ``bench.parity_images`` validation images, each at batch 1
through the same ``preprocess``:

* ``boxes`` / ``scores``: every candidate detection before NMS, i.e. the detector's
  ``decode`` of ``predict``'s outputs (boxes clipped to the image as ``postprocess`` clips
  them, in pixels; class probabilities). Comparing candidates rather than the detections
  after NMS keeps ties out: on an untrained model many scores are equal up to float noise
  and NMS or the top-k may pick either of two near-equal boxes, a difference of order, not
  of value.
* ``outputs``: the largest difference over ``predict``'s raw tensors (logits, deltas, ...).
* ``parity_same_detections``: the share of images whose detections after NMS have the same
  number and labels (reported, not a criterion, for the reason above).
* ``parity_map``: COCO AP of the runtime's detections on the whole validation set, batch 1,
  when the job evaluates; it must be within ``bench.parity_map_atol`` of eager's ``map``.

Two-stage detectors decode per RoI and their proposals are data-dependent: the RoIs are
compared as sets (:func:`_pair_rois`). A detector with neither ``decode`` nor RoIs (a
torchvision reference) compares its raw outputs, held to the box and score tolerances.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from benchmark.device import Device
from benchmark.measure.latency import load_images
from benchmark.measure.settings import BenchSettings
from models.box_ops import clip_boxes

__all__ = ["ParityError", "compare_outputs", "parity_failures", "tolerance"]
# Two-stage: the share of eager's proposals the runtime must reproduce (same box). The rest
# may differ only among exactly tied scores, which a uniform image region produces.
ROIS_PAIRED = 0.9


class ParityError(RuntimeError):
    """The runtime's outputs differ from eager's beyond tolerance; ``keys`` has the numbers."""

    def __init__(self, message: str, keys: dict[str, Any]):
        super().__init__(message)
        self.keys = keys


def tolerance(s: BenchSettings) -> dict[str, float]:
    return {
        "boxes": s.parity_box_atol,
        "scores": s.parity_score_atol,
        "map": s.parity_map_atol,
        "rois_paired": ROIS_PAIRED,
    }


def _max_abs(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def _candidates(model: nn.Module, outputs: dict[str, Tensor], size) -> tuple[Tensor, Tensor]:
    """Every candidate detection of one image: ``boxes [N, 4]`` xyxy clipped to ``size``
    (postprocess's clipping) and class probabilities ``[N, C]``."""
    if "rois" in outputs:  # two-stage: each RoI's class-specific boxes, as postprocess decodes
        rois = outputs["rois"]
        boxes = model.box_head.coder.decode(outputs["box_deltas"], rois[:, None, 1:])
        scores = outputs["cls_logits"].softmax(-1)[:, 1:]
        return clip_boxes(boxes, size).flatten(1), scores
    boxes, scores = model.decode(outputs)  # [B, A, 4] xyxy, [B, A, C]
    return clip_boxes(boxes[0], size), scores[0]


def _pair_rois(ref: Tensor, out: Tensor, atol: float) -> tuple[Tensor, Tensor]:
    """Indices ``(i, j)`` pairing eager RoIs ``ref[i]`` with runtime RoIs ``out[j]`` of the same
    box (within ``atol`` px). Proposals are compared as sets: among exactly tied objectness
    scores (a uniform image region) top-k and NMS may keep either box in either order."""
    if ref.numel() == 0 or out.numel() == 0:
        return ref.new_zeros(0, dtype=torch.long), ref.new_zeros(0, dtype=torch.long)
    dist = torch.cdist(ref[:, 1:].double(), out[:, 1:].double(), p=float("inf"))
    best, j = dist.min(dim=1)
    i = (best <= atol).nonzero().squeeze(1)
    return i, j[i]


def compare_outputs(
    eager: nn.Module,
    runtime: nn.Module,
    dataset: Dataset,
    device: Device,
    settings: BenchSettings,
) -> dict[str, Any]:
    """Run both models on the first ``settings.parity_images`` validation images.

    Args:
        eager: the job's PyTorch detector (eval mode).
        runtime: the same detector whose ``predict`` runs in the runtime.
        dataset: validation set yielding ``(image [3, H, W] in [0, 1], target)``.

    Returns:
        ``parity_max_abs_diff`` (``{"boxes": px, "scores": probability, "outputs": raw}``),
        ``parity_images``, ``parity_same_detections`` and ``parity_tolerance``.
    """
    n = min(settings.parity_images, len(dataset))
    diff = {"boxes": 0.0, "scores": 0.0, "outputs": 0.0}
    same, paired, total = 0, 0, 0
    with torch.inference_mode():
        for i in range(n):
            batch = eager.preprocess(load_images(dataset, 1, device, start=i))
            ref, out = eager.predict(batch.tensor), runtime.predict(batch.tensor)
            if sorted(ref) != sorted(out):
                raise ValueError(f"runtime outputs {sorted(out)} differ from eager {sorted(ref)}")
            d0 = eager.postprocess(ref, batch.image_sizes)[0]
            d1 = eager.postprocess(out, batch.image_sizes)[0]
            same += int(torch.equal(d0["labels"], d1["labels"]))
            size = batch.image_sizes[0]
            if not ("rois" in ref or callable(getattr(eager, "decode", None))):
                # No decoding step of its own (a torchvision reference, a toy): raw outputs
                raw = max(_max_abs(out[k], ref[k]) for k in ref if ref[k].is_floating_point())
                diff = {k: max(v, raw) for k, v in diff.items()}
                continue
            (b0, s0), (b1, s1) = _candidates(eager, ref, size), _candidates(eager, out, size)
            if "rois" in ref:  # two-stage: RoIs as sets, per-RoI outputs compared in pairs
                ri, rj = _pair_rois(ref["rois"], out["rois"], settings.parity_box_atol)
                paired, total = paired + ri.numel(), total + ref["rois"].shape[0]
                b0, s0, b1, s1 = b0[ri], s0[ri], b1[rj], s1[rj]
                raw_keys = [k for k in ref if not k.startswith(("rois", "cls_", "box_"))]
            else:
                raw_keys = list(ref)
            raw = max(_max_abs(out[k], ref[k]) for k in raw_keys if ref[k].is_floating_point())
            diff["outputs"] = max(diff["outputs"], raw)
            diff["boxes"] = max(diff["boxes"], _max_abs(b1, b0))
            diff["scores"] = max(diff["scores"], _max_abs(s1, s0))
    return {
        "parity_max_abs_diff": diff,
        "parity_images": n,
        "parity_same_detections": same / n if n else None,
        "parity_rois_paired": paired / total if total else None,
        "parity_tolerance": tolerance(settings),
    }


def parity_failures(keys: dict[str, Any], eager_map: float | None) -> list[str]:
    """What exceeds its tolerance in the parity ``keys`` (empty: parity holds)."""
    tol = keys["parity_tolerance"]
    diff = keys["parity_max_abs_diff"]
    problems = [
        f"{k} differ by {diff[k]:.3g} > {tol[k]:.3g}"
        for k in ("boxes", "scores")
        if not diff[k] <= tol[k]  # inf and nan fail too
    ]
    paired = keys.get("parity_rois_paired")
    if paired is not None and not paired >= tol["rois_paired"]:
        problems.append(
            f"only {paired:.1%} of the proposals are eager's (>= {tol['rois_paired']:.0%})"
        )
    runtime_map = keys.get("parity_map")
    both = runtime_map is not None and eager_map is not None
    if both and not abs(runtime_map - eager_map) <= tol["map"]:
        problems.append(
            f"AP {runtime_map:.4f} vs eager {eager_map:.4f} (tolerance {tol['map']:.3g})"
        )
    return problems
