"""The second stage of the two-stage family as one component: RoI sampling, the box
classifier, and its loss (torchvision's ``RoIHeads``, Detectron2's ``ROIHeads``).

:class:`BoxHead` is Faster R-CNN's (Huang et al. 2017 sections 2.1 and 3.6, the TF OD API's
second-stage settings): proposals, plus the ground truth while training, are matched to
objects at IoU 0.5 and 64 RoIs per image are sampled at up to 25% positives; the box
classifier (:class:`~models.heads.box_classifier.BoxClassifier`, or any module mapping
``(features, rois)`` to ``(cls_logits, box_deltas)``) scores them; the loss is a softmax cross
entropy plus smooth L1 on the positives' deltas, each summed over the RoIs and divided by
their number, weighted 1 and 2 (TF OD API).

:class:`OHEMBoxHead` is R-FCN's (Dai et al. 2016): every proposal is scored, and online hard
example mining keeps the 128 highest-loss RoIs of each image for the loss.

Box format: xyxy pixels; RoIs are torchvision's ``[R, 5]`` ``(image index, x1, y1, x2, y2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.box_ops import BoxCoder
from models.heads.box_classifier import roi_losses
from models.heads.proposals import PaddedBoxes, Proposals, RoISample, sample_rois
from models.heads.rfcn import ohem_keep, ohem_loss

__all__ = ["BoxHead", "OHEMBoxHead"]


class BoxHead(nn.Module):
    """Sampling, classifier and loss of Faster R-CNN's second stage.

    Args:
        classifier: the per-RoI network, ``(features [B, C, H, W], rois [R, 5]) ->
            (cls_logits [R, C + 1], box_deltas [R, C or 1, 4])``, background at column 0.
        batch_size: RoIs per image in the training minibatch (64); None keeps every proposal.
        positive_fraction: target fraction of positives in it (0.25).
        fg_threshold: IoU for a positive RoI (0.5).
        add_gt_to_proposals: append the ground-truth boxes to the training proposals
            (torchvision, Detectron), so the classifier has positives while the RPN is still
            untrained; False is the TF OD API's behaviour.
        box_coder_weights: (10, 10, 5, 5), the RPN's (Huang et al. 3.2).
        loss_weights: multipliers of ``(loss_cls, loss_box)``: (1, 2) as the TF OD API.

    Raises:
        ValueError: ``batch_size`` below 1 or ``positive_fraction`` outside (0, 1].
    """

    def __init__(
        self,
        *,
        classifier: nn.Module,
        batch_size: int | None = 64,
        positive_fraction: float = 0.25,
        fg_threshold: float = 0.5,
        add_gt_to_proposals: bool = True,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        loss_weights: Sequence[float] = (1.0, 2.0),
    ):
        super().__init__()
        if (batch_size is not None and int(batch_size) < 1) or not 0.0 < positive_fraction <= 1:
            raise ValueError(
                f"meta_arch.box_head.batch_size (train.second_stage_batch_size) must be >= 1 "
                f"and meta_arch.box_head.positive_fraction in (0, 1]; got {batch_size} and "
                f"{positive_fraction}"
            )
        self.classifier = classifier
        self.batch_size = None if batch_size is None else int(batch_size)
        self.positive_fraction = float(positive_fraction)
        self.fg_threshold = float(fg_threshold)
        self.add_gt_to_proposals = bool(add_gt_to_proposals)
        self.coder = BoxCoder(tuple(box_coder_weights))
        self.loss_weights = tuple(float(w) for w in loss_weights)

    @property
    def crop_size(self) -> int | None:
        """Side of the per-RoI crop the classifier reads (14, 17; R-FCN: bins x samples)."""
        return getattr(self.classifier, "crop_size", None)

    def sample(self, proposals: Proposals, gt: PaddedBoxes) -> RoISample:
        """The training minibatch: ``batch_size`` RoIs per image at ``positive_fraction``."""
        return sample_rois(
            proposals,
            gt,
            coder=self.coder,
            fg_threshold=self.fg_threshold,
            num_samples=self.batch_size,
            positive_fraction=self.positive_fraction,
            add_gt=self.add_gt_to_proposals,
        )

    def forward(
        self, features: Tensor, rois: Tensor, sample: RoISample | None = None
    ) -> dict[str, Tensor]:
        """Score ``rois [R, 5]`` on ``features``.

        Returns:
            ``rois``, ``cls_logits [R, C+1]``, ``box_deltas [R, C or 1, 4]``; with a training
            ``sample`` (whose ``rois`` are ``rois``) also ``roi_labels [R]`` (0 background,
            k+1 class k) and ``roi_box_targets [R, 4]``.
        """
        cls_logits, box_deltas = self.classifier(features, rois)
        out = {"rois": rois, "cls_logits": cls_logits, "box_deltas": box_deltas}
        if sample is not None:
            out.update(roi_labels=sample.labels, roi_box_targets=sample.box_targets)
        return out

    def loss(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_box"}``, weighted: each summed over the RoIs of a training
        :meth:`forward` and divided by their number (the TF OD API's normalization)."""
        ce, box = self.roi_losses(outputs)
        num = max(ce.numel(), 1)
        return self._weighted(ce.sum() / num, box.sum() / num)

    @staticmethod
    def roi_losses(outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-RoI ``(cross entropy [R], box smooth L1 [R])`` of a training :meth:`forward`."""
        return roi_losses(
            outputs["cls_logits"],
            outputs["box_deltas"],
            outputs["roi_labels"],
            outputs["roi_box_targets"],
        )

    def _weighted(self, cls: Tensor, box: Tensor) -> dict[str, Tensor]:
        w_cls, w_box = self.loss_weights
        return {"loss_cls": cls * w_cls, "loss_box": box * w_box}


class OHEMBoxHead(BoxHead):
    """R-FCN's second stage: every proposal scored, online hard example mining in the loss.

    Args:
        ohem_rois: RoIs per image kept by OHEM (128, Dai et al.); None trains on every
            proposal (Huang et al.'s R-FCN with Inception-ResNet).
        ohem_nms_threshold: NMS IoU among the loss-ranked RoIs before the top-k (None: plain
            top-k, Dai et al.; Shrivastava et al.'s OHEM runs NMS at 0.7).
        **kwargs: :class:`BoxHead`'s; ``batch_size`` defaults to None (keep every proposal).
    """

    def __init__(
        self,
        *,
        ohem_rois: int | None = 128,
        ohem_nms_threshold: float | None = None,
        batch_size: int | None = None,
        **kwargs,
    ):
        super().__init__(batch_size=batch_size, **kwargs)
        self.ohem_rois = ohem_rois
        self.ohem_nms_threshold = ohem_nms_threshold

    def forward(
        self, features: Tensor, rois: Tensor, sample: RoISample | None = None
    ) -> dict[str, Tensor]:
        """In training with OHEM, forward every RoI, back-propagate the hardest only.

        With a classifier that splits into a once-per-image part and a per-RoI part
        (:class:`~models.heads.rfcn.PSRoIHead`'s ``score_maps`` / ``pool``), the score maps
        are computed once with gradient; PS-RoIAlign runs once without it on all RoIs to rank
        their losses, then again with it on the ``ohem_rois`` kept per image, so the backward
        pass (torchvision's ``ps_roi_align`` backward, the costliest op of an R-FCN step on
        CPU) only sees the kept RoIs. Losses and gradients equal :func:`ohem_loss` on the full
        set; the outputs hold the kept RoIs only, marked by ``ohem_selected``.
        """
        head = self.classifier
        split = hasattr(head, "score_maps") and hasattr(head, "pool")
        if sample is None or self.ohem_rois is None or not split:
            return super().forward(features, rois, sample)
        maps = head.score_maps(features)
        with torch.no_grad():
            ce, box = roi_losses(*head.pool(maps, rois), sample.labels, sample.box_targets)
            keep = ohem_keep(
                ce + box, rois, num=self.ohem_rois, nms_threshold=self.ohem_nms_threshold
            )
        cls_logits, box_deltas = head.pool(maps, rois[keep])
        return {
            "rois": rois[keep],
            "cls_logits": cls_logits,
            "box_deltas": box_deltas,
            "roi_labels": sample.labels[keep],
            "roi_box_targets": sample.box_targets[keep],
            "ohem_selected": torch.ones((), dtype=torch.bool),
        }

    def loss(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses over the ``ohem_rois`` highest-loss RoIs of each image, divided by their number."""
        if self.ohem_rois is None or "ohem_selected" in outputs:
            return super().loss(outputs)
        ce, box = self.roi_losses(outputs)
        cls, box = ohem_loss(
            ce, box, outputs["rois"], num=self.ohem_rois, nms_threshold=self.ohem_nms_threshold
        )
        return self._weighted(cls, box)
