"""Tiny models for the measurement tests: fast on 2 CPU cores, built by ``_target_`` so the
fresh memory process can rebuild them (tests put this folder on the child's PYTHONPATH), and
the ``one_thread`` fixture every measurement test module imports."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision
from torch import Tensor, nn

from models.extractors.base import FeatureExtractor, FeatureInfo
from models.meta_arch.base import DetectionModel

STRIDE = 4


class TinyExtractor(FeatureExtractor):
    """Two stride-2 3x3 convolutions: ``[B, 3, H, W] -> {"c2": [B, C, H/4, W/4]}``."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2, 1),
            nn.ReLU(),
        )
        self.feature_info = [FeatureInfo("c2", channels, STRIDE)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"c2": self.body(x)}


class TinyDetector(DetectionModel):
    """One anchor (16 px square) per stride-4 cell, 1x1 class and box convolutions, NMS."""

    def __init__(self, *, extractor: FeatureExtractor, num_classes: int):
        super().__init__(extractor=extractor, num_classes=num_classes)
        c = extractor.feature_info[-1].channels
        self.cls = nn.Conv2d(c, num_classes + 1, 1)
        self.box = nn.Conv2d(c, 4, 1)

    def _anchors(self, h: int, w: int, device) -> Tensor:
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        ctr = torch.stack([xs, ys], -1).reshape(-1, 2).float() * STRIDE + STRIDE / 2
        return torch.cat([ctr - 8, ctr + 8], 1)

    def predict(self, images: Tensor, targets=None) -> dict[str, Tensor]:
        f = self.extractor(images)["c2"]
        return {
            "cls_logits": self.cls(f).flatten(2).transpose(1, 2),
            "box_deltas": self.box(f).flatten(2).transpose(1, 2),
            "anchors": self._anchors(*f.shape[-2:], images.device),
        }

    def postprocess(self, outputs, image_sizes):
        scores = outputs["cls_logits"].float().softmax(-1)[..., 1:]
        boxes = outputs["anchors"] + outputs["box_deltas"].float() * STRIDE
        dets = []
        for b, s, (h, w) in zip(boxes, scores, image_sizes, strict=True):
            sc, lab = s.max(-1)
            b = torchvision.ops.clip_boxes_to_image(b, (h, w))
            keep = torchvision.ops.batched_nms(b, sc, lab, 0.5)[:100]
            dets.append({"boxes": b[keep], "scores": sc[keep], "labels": lab[keep]})
        return dets

    def loss(self, outputs, targets, image_sizes):
        logits = outputs["cls_logits"]
        bg = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        return {
            "loss_cls": nn.functional.cross_entropy(logits.flatten(0, 1), bg.flatten()),
            "loss_box": outputs["box_deltas"].abs().mean(),
        }

    def num_anchors(self, image_size):
        h, w = image_size
        return -(-h // STRIDE) * -(-w // STRIDE)


class KilledDetector(TinyDetector):
    """A TinyDetector whose training loss kills its own process with SIGKILL, as the
    kernel's OOM killer would (no core dump, unlike an abort)."""

    def loss(self, outputs, targets, image_sizes):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class ToyRoIModel(nn.Module):
    """A Faster-R-CNN-shaped toy: conv trunk, proposals, RoIAlign 7x7, FC box head.

    Outside :meth:`flop_count_mode` the number of proposals depends on the data (boxes with
    objectness > 0.5), as in a real RPN after NMS; inside it is exactly ``num_proposals``.
    """

    def __init__(self, num_proposals: int, channels: int = 8, hidden: int = 16):
        super().__init__()
        self.num_proposals = num_proposals
        self.trunk = nn.Conv2d(3, channels, 3, STRIDE, 1)
        self.objectness = nn.Conv2d(channels, 1, 1)
        self.head = nn.Linear(channels * 7 * 7, hidden)
        self._fixed = False

    @contextlib.contextmanager
    def flop_count_mode(self):
        self._fixed, old = True, self._fixed
        try:
            yield
        finally:
            self._fixed = old

    def predict(self, images: Tensor, targets=None) -> dict[str, Tensor]:
        f = self.trunk(images)
        obj = self.objectness(f).flatten()
        h, w = f.shape[-2:]
        idx = torch.arange(obj.numel())
        xy = torch.stack([idx % w, idx // w], 1).float() * STRIDE
        boxes = torch.cat([xy, xy + 2 * STRIDE], 1)
        if self._fixed:
            order = obj.argsort(descending=True)
            boxes = boxes[
                order.repeat(-(-self.num_proposals // order.numel()))[: self.num_proposals]
            ]
        else:
            boxes = boxes[obj.sigmoid() > 0.5]
        crops = torchvision.ops.roi_align(f, [boxes], 7, 1.0 / STRIDE, 2)
        return {"features": self.head(crops.flatten(1))}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Measure with one intra-op thread: on a shared, oversubscribed 2-core machine a 2-thread
    forward waits for descheduled threads and becomes 100x slower (docs/measurement.md,
    Stability). The tests check the protocol, not the threading; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
