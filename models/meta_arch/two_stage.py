"""The two-stage family: Faster R-CNN and R-FCN over any splittable extractor.

Faster R-CNN (Ren et al. 2015) as configured by Huang et al. 2017 (sections 2.1, 3.1-3.4,
3.6): a region proposal network on the extractor's stride-16 map (stride 8 in atrous mode)
with 4 scales x 3 aspect ratios of grid anchors, argmax matching at 0.7 / 0.3, 256 anchors
per image at 50% positives, proposal NMS at 0.7 and ``num_proposals`` (300) proposals; the
box classifier crops each proposal from the same map, runs the extractor's last stage on it
("C4" style, :meth:`FeatureExtractor.split_last_stage`) and predicts C + 1 scores and
class-specific box refinements, trained on 64 RoIs per image at 25% positives; detections
are decoded, clipped to the image and suppressed per class at IoU 0.6. One box coder,
``[10, 10, 5, 5]``, for both stages (section 3.2).

R-FCN (Dai et al. 2016) subclasses it and replaces only the second stage: the extractor's
last stage runs once on the whole image, position-sensitive score maps are built from its
output, every proposal is pooled with PS-RoIAlign and voted, and online hard example
mining keeps the 128 highest-loss RoIs of each image for the loss.

Both implement the FLOP-counting hook of ``benchmark/measure/flops.py``: inside
:meth:`FasterRCNN.flop_count_mode` (or with :attr:`FasterRCNN.fixed_proposals` set) an
eval-mode ``predict`` runs the second stage on exactly ``num_proposals`` RoIs per image.

Deviations from the papers, and why:
    * Anchor sizes scale with the input: the base size is ``256 * image_size / 600``, i.e.
      the TF OD API's 256 px at Huang et al.'s M = 600, shrunk for the small images this
      benchmark trains on (at M = 160: 17, 34, 68, 137 px instead of 64..512 px, which would
      miss most objects). ``anchor_base_size`` sets it in pixels; with neither it is 256.
    * Ground-truth boxes are appended to the proposals during training (torchvision,
      Detectron), so the box classifier has positives while the RPN is still untrained; this
      matters when training from scratch in minutes. ``add_gt_to_proposals=False`` is the
      TF OD API's behaviour.
    * ``predict`` sees only the padded batch, so proposals are clipped to the padded size;
      detections are clipped to each image's own size in ``postprocess``.
    * The RPN keeps the ``rpn_pre_nms_topk`` (1000) best anchors per image before NMS to bound
      NMS cost on large inputs; the TF OD API runs NMS over all anchors.
    * Training (the ``train`` config, not this module): batches of several padded images,
      linear warm-up and a cosine schedule instead of one image per worker, asynchronous SGD
      and 10x steps. ``train/optimizer=sgd`` is the paper's momentum SGD; the CPU recipes use
      the project default AdamW, which converges much faster from random initialization.
    * Detections: score threshold 0.01 (TF OD API: 0.0) and at most 100 per image (COCO's
      evaluation limit).
    * R-FCN takes its position-sensitive maps from the extractor's last map at the
      extractor's ``output_stride``: 16 (or 8) as in the paper needs
      ``extractor.output_stride=16``; with 32 it still works, on a coarser map (a warning is
      logged). Its RPN uses the extractor's ``c4`` map, as Dai et al.
    * R-FCN's OHEM ranks RoIs by loss without Shrivastava et al.'s NMS by default
      (``ohem_nms_threshold`` enables it); Dai et al. select the top 128 by loss.
    * The crop size comes from ``LastStage.crop_size`` (14 by default); the paper's 17x17 for
      Inception needs the extractor's split to report 17.
    * Loss weights follow the TF OD API configs (localization 2, classification 1 in both
      stages); Huang et al. do not state them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.anchors import grid_anchors
from models.box_ops import BoxCoder, clip_boxes, multiclass_nms
from models.errors import IncompatibleConfigError
from models.extractors.base import FeatureExtractor, FeatureInfo
from models.heads.box_classifier import BoxClassifier, roi_losses
from models.heads.proposals import (
    PaddedBoxes,
    Proposals,
    RoISample,
    generate_proposals,
    pad_targets,
    sample_rois,
    to_rois,
    top_proposals,
)
from models.heads.rfcn import PSRoIHead, ohem_keep, ohem_loss
from models.heads.rpn import RPNHead, rpn_loss
from models.meta_arch.base import DetectionModel, Detections, Target

log = logging.getLogger(__name__)

HeadFactory = Callable[..., nn.Module]
DEFAULT_LOSS_WEIGHTS = {"loss_rpn_cls": 1.0, "loss_rpn_box": 2.0, "loss_cls": 1.0, "loss_box": 2.0}


class FasterRCNN(DetectionModel):
    """Faster R-CNN over any extractor that implements ``split_last_stage``.

    Args:
        extractor: the backbone; it is split, and only its trunk is kept as ``extractor``.
        num_classes: object classes, background excluded.
        image_size: the shorter side M the data pipeline resizes to; sets the anchor base
            size (``256 * M / 600``) when ``anchor_base_size`` is None.
        anchor_scales: anchor sizes as multiples of the base size (0.25, 0.5, 1, 2).
        anchor_aspect_ratios: ``w / h`` (0.5, 1, 2).
        anchor_base_size: base size in pixels (overrides ``image_size``).
        rpn_channels: width of the RPN's 3x3 convolution (512).
        rpn_pos_threshold, rpn_neg_threshold: anchor IoU thresholds (0.7, 0.3).
        rpn_batch_size, rpn_positive_fraction: RPN minibatch per image (256 at 0.5).
        rpn_nms_threshold: proposal NMS IoU (0.7).
        rpn_pre_nms_topk: anchors per image kept before proposal NMS.
        num_proposals: proposals per image at test time (300; 10..300 in sweeps).
        num_proposals_train: proposals per image the training minibatch is sampled from.
        box_classifier: factory for the second stage, called with ``last_stage``,
            ``in_channels``, ``stride`` and ``num_classes`` (default :class:`BoxClassifier`,
            whose own options such as ``crop_size`` a ``_partial_`` config sets).
        box_batch_size, box_positive_fraction: RoIs per image for the box classifier loss
            (64 at 0.25).
        box_fg_threshold: IoU for a positive RoI (0.5).
        add_gt_to_proposals: append ground-truth boxes to the training proposals.
        box_coder_weights: (10, 10, 5, 5) for both stages.
        loss_weights: multipliers of ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``,
            ``loss_box`` (default :data:`DEFAULT_LOSS_WEIGHTS`).
        score_threshold, nms_threshold, pre_nms_topk, max_detections: postprocessing.

    Raises:
        IncompatibleConfigError: the extractor cannot split off its last stage.
    """

    family: ClassVar[str] = "two-stage"
    display_name: ClassVar[str] = "Faster R-CNN"
    resize_mode: ClassVar[str] = "shorter_side"
    proposals: ClassVar[bool] = True

    def __init__(
        self,
        *,
        extractor: FeatureExtractor,
        num_classes: int,
        image_size: int | None = None,
        anchor_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
        anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_base_size: float | None = None,
        rpn_channels: int = 512,
        rpn_pos_threshold: float = 0.7,
        rpn_neg_threshold: float = 0.3,
        rpn_batch_size: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_nms_threshold: float = 0.7,
        rpn_pre_nms_topk: int = 1000,
        num_proposals: int = 300,
        num_proposals_train: int = 300,
        box_classifier: HeadFactory | None = None,
        box_batch_size: int = 64,
        box_positive_fraction: float = 0.25,
        box_fg_threshold: float = 0.5,
        add_gt_to_proposals: bool = True,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        loss_weights: Mapping[str, float] | None = None,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.6,
        pre_nms_topk: int | None = 1000,
        max_detections: int = 100,
    ):
        super().__init__(extractor=extractor, num_classes=num_classes)
        self.rpn_info, self.crop_info = self._init_features(extractor)
        # Pad batches to the coarsest map actually computed, so every image tiles it exactly.
        self.size_divisible = max(f.stride for f in self.extractor.feature_info)
        if anchor_base_size is None:
            anchor_base_size = 256.0 * (image_size / 600.0 if image_size else 1.0)
        self.anchor_sizes = tuple(float(s) * float(anchor_base_size) for s in anchor_scales)
        self.anchor_aspect_ratios = tuple(float(r) for r in anchor_aspect_ratios)
        self.anchors_per_location = len(self.anchor_sizes) * len(self.anchor_aspect_ratios)
        self.rpn = RPNHead(self.rpn_info.channels, self.anchors_per_location, channels=rpn_channels)
        self.box_head = self._build_box_head(box_classifier)
        self.box_coder = BoxCoder(tuple(box_coder_weights))
        self.rpn_pos_threshold, self.rpn_neg_threshold = rpn_pos_threshold, rpn_neg_threshold
        self.rpn_batch_size, self.rpn_positive_fraction = rpn_batch_size, rpn_positive_fraction
        self.rpn_nms_threshold, self.rpn_pre_nms_topk = rpn_nms_threshold, rpn_pre_nms_topk
        self.num_proposals, self.num_proposals_train = int(num_proposals), int(num_proposals_train)
        if int(box_batch_size) < 1 or not 0.0 < float(box_positive_fraction) <= 1.0:
            raise ValueError(
                f"meta_arch.box_batch_size (train.second_stage_batch_size) must be >= 1 and "
                f"meta_arch.box_positive_fraction in (0, 1]; got {box_batch_size} and "
                f"{box_positive_fraction}"
            )
        self.box_batch_size, self.box_positive_fraction = box_batch_size, box_positive_fraction
        self.box_fg_threshold = box_fg_threshold
        self.add_gt_to_proposals = add_gt_to_proposals
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **dict(loss_weights or {})}
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.pre_nms_topk, self.max_detections = pre_nms_topk, max_detections
        #: FLOP-counting hook: eval ``predict`` runs exactly ``num_proposals`` RoIs per image.
        self.fixed_proposals = False

    # -- construction hooks (R-FCN overrides both) ------------------------------------------
    def _init_features(self, extractor: FeatureExtractor) -> tuple[FeatureInfo, FeatureInfo]:
        """Split the extractor; keep the trunk. Returns the RPN map's and the crop map's info."""
        split = extractor.split_last_stage()  # IncompatibleConfigError if it cannot
        # Only the trunk stays registered: with a dilated extractor the stage is an undilated
        # copy, and the extractor's own last stage would be dead weight in params/state_dict.
        self.extractor = split.trunk
        self._split = split  # consumed by _build_box_head
        info = split.trunk.feature_info[-1]
        return info, info

    def _build_box_head(self, factory: HeadFactory | None) -> nn.Module:
        split, self._split = self._split, None
        info = self.crop_info
        return (factory or BoxClassifier)(
            last_stage=split,
            in_channels=info.channels,
            stride=info.stride,
            num_classes=self.num_classes,
        )

    # -- anchors -------------------------------------------------------------------------
    def anchors(self, map_size: tuple[int, int], device: torch.device | None = None) -> Tensor:
        """``[H*W*K, 4]`` xyxy pixel anchors for an RPN map of ``map_size`` (cached, shared)."""
        return grid_anchors(
            map_size,
            self.rpn_info.stride,
            scales=self.anchor_sizes,
            aspect_ratios=self.anchor_aspect_ratios,
            device=device,
        )

    def rpn_map_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """RPN map ``(H, W)`` for an input of ``image_size`` (padded to ``size_divisible``)."""
        d = self.size_divisible
        h, w = (math.ceil(v / d) * d for v in image_size)
        if self.extractor.same_padding:
            s = self.rpn_info.stride
            return math.ceil(h / s), math.ceil(w / s)
        cache = self.__dict__.setdefault("_map_size_cache", {})
        if (h, w) not in cache:  # VALID-padded backbones: measure with one forward pass
            p = next(self.parameters())
            was_training = self.training
            self.eval()
            with torch.no_grad():
                rpn_map, _ = self.features(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
            self.train(was_training)
            cache[(h, w)] = tuple(rpn_map.shape[-2:])
        return cache[(h, w)]

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        h, w = self.rpn_map_size(image_size)
        return h * w * self.anchors_per_location

    # -- FLOP-counting hook -----------------------------------------------------------------
    @contextlib.contextmanager
    def flop_count_mode(self) -> Iterator[None]:
        """While active, eval ``predict`` uses exactly ``num_proposals`` RoIs per image: the
        top anchors by objectness, no NMS (``benchmark/measure/flops.py``)."""
        previous, self.fixed_proposals = self.fixed_proposals, True
        try:
            yield
        finally:
            self.fixed_proposals = previous

    # -- the four steps --------------------------------------------------------------------
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, H, W]`` -> (RPN map ``[B, C, H/s, W/s]``, map the second stage reads)."""
        maps = self.extractor(images)
        return maps[self.rpn_info.name], maps[self.crop_info.name]

    def predict(self, images: Tensor, targets: list[Target] | None = None) -> dict[str, Tensor]:
        """Args: images ``[B, 3, H, W]`` normalized; targets (training only) in input pixels.

        Returns:
            ``rpn_logits [B, A]``, ``rpn_deltas [B, A, 4]``, ``anchors [A, 4]``, ``rois [R, 5]``
            (image index, xyxy), ``cls_logits [R, C+1]`` (background at 0), ``box_deltas
            [R, C or 1, 4]``; in training also ``roi_labels [R]`` (0 background, k+1 class k)
            and ``roi_box_targets [R, 4]``.
        """
        rpn_map, crop_map = self.features(images)
        logits, deltas = self.rpn(rpn_map)
        anchors = self.anchors(tuple(rpn_map.shape[-2:]), images.device)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        out = {"rpn_logits": logits, "rpn_deltas": deltas, "anchors": anchors}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals = self._proposals(logits, deltas, anchors, size, self.num_proposals_train)
            sample = self.sample_rois(proposals, self._pad(targets, images))
            rois = sample.rois
            out.update(roi_labels=sample.labels, roi_box_targets=sample.box_targets)
        else:
            num, fixed = self.num_proposals, self.fixed_proposals
            proposals = self._proposals(logits, deltas, anchors, size, num, fixed=fixed)
            rois = to_rois(proposals.boxes, proposals.valid)
        out.update(self.second_stage(crop_map, rois, out))
        return out

    def second_stage(
        self, crop_map: Tensor, rois: Tensor, out: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Box classifier on ``rois [R, 5]``: ``rois``, ``cls_logits``, ``box_deltas`` (and in
        training whatever of ``out`` it narrows, such as the RoI targets)."""
        cls_logits, box_deltas = self.box_head(crop_map, rois)
        return {"rois": rois, "cls_logits": cls_logits, "box_deltas": box_deltas}

    def _proposals(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        size: tuple[int, int],
        num: int,
        *,
        fixed: bool = False,
    ) -> Proposals:
        coder = self.box_coder
        if fixed:  # FLOP counting: exactly ``num`` RoIs, whatever the weights propose
            return top_proposals(logits, deltas, anchors, size, coder=coder, num_proposals=num)
        return generate_proposals(
            logits,
            deltas,
            anchors,
            size,
            coder=coder,
            pre_nms_topk=self.rpn_pre_nms_topk,
            nms_threshold=self.rpn_nms_threshold,
            num_proposals=num,
        )

    @staticmethod
    def _pad(targets: list[Target], like: Tensor) -> PaddedBoxes:
        return pad_targets(
            [t["boxes"].to(device=like.device, dtype=like.dtype) for t in targets],
            [t["labels"].to(like.device) for t in targets],
        )

    def sample_rois(self, proposals: Proposals, gt: PaddedBoxes) -> RoISample:
        """The box classifier's minibatch: 64 RoIs per image at 25% positives."""
        return sample_rois(
            proposals,
            gt,
            coder=self.box_coder,
            fg_threshold=self.box_fg_threshold,
            num_samples=self.box_batch_size,
            positive_fraction=self.box_positive_fraction,
            add_gt=self.add_gt_to_proposals,
        )

    def loss(
        self, outputs: dict[str, Tensor], targets: list[Target], image_sizes: list[tuple[int, int]]
    ) -> dict[str, Tensor]:
        anchors = outputs["anchors"]
        gt = self._pad(targets, anchors)
        rpn_cls, rpn_box = rpn_loss(
            outputs["rpn_logits"],
            outputs["rpn_deltas"],
            anchors,
            [t["boxes"].to(anchors) for t in targets],
            gt,
            coder=self.box_coder,
            pos_threshold=self.rpn_pos_threshold,
            neg_threshold=self.rpn_neg_threshold,
            batch_size=self.rpn_batch_size,
            positive_fraction=self.rpn_positive_fraction,
        )
        cls, box = self.box_loss(outputs)
        losses = {
            "loss_rpn_cls": rpn_cls,
            "loss_rpn_box": rpn_box,
            "loss_cls": cls,
            "loss_box": box,
        }
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    def roi_losses(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-RoI ``(cross entropy [R], box smooth L1 [R])`` of a training ``predict``."""
        return roi_losses(
            outputs["cls_logits"],
            outputs["box_deltas"],
            outputs["roi_labels"],
            outputs["roi_box_targets"],
        )

    def box_loss(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Second-stage ``(loss_cls, loss_box)``, each summed over the sampled RoIs and divided
        by their number (the TF OD API's normalization)."""
        ce, box = self.roi_losses(outputs)
        num = max(ce.numel(), 1)
        return ce.sum() / num, box.sum() / num

    def postprocess(
        self, outputs: dict[str, Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """Softmax, decode each RoI's class-specific boxes, clip, per-class NMS, top-k."""
        rois = outputs["rois"]
        scores = outputs["cls_logits"].softmax(-1)[:, 1:]  # [R, C]
        boxes = self.box_coder.decode(outputs["box_deltas"], rois[:, None, 1:])  # [R, C or 1, 4]
        agnostic = boxes.shape[1] == 1
        counts = torch.bincount(rois[:, 0].long(), minlength=len(image_sizes)).tolist()
        results = []
        for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes, strict=True):
            b = clip_boxes(b, size)
            det_boxes, det_scores, det_labels = multiclass_nms(
                b[:, 0] if agnostic else b,
                s,
                score_threshold=self.score_threshold,
                iou_threshold=self.nms_threshold,
                pre_nms_topk=self.pre_nms_topk,
                max_detections=self.max_detections,
                class_agnostic_boxes=agnostic,
            )
            results.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
        return results


class RFCN(FasterRCNN):
    """R-FCN: Faster R-CNN with a position-sensitive second stage (Dai et al. 2016).

    Args:
        ohem_rois: RoIs per image kept by online hard example mining (128); None trains on
            every proposal (Huang et al.'s Inception-ResNet setting).
        ohem_nms_threshold: NMS IoU among RoIs ranked by loss before the top-k (None: plain
            top-k).
        box_classifier: factory called with ``in_channels``, ``stride`` and ``num_classes``
            (default :class:`PSRoIHead`: 7x7 bins, 1024-channel reduce, class-agnostic boxes).
        **kwargs: everything :class:`FasterRCNN` takes; ``box_batch_size`` and
            ``box_positive_fraction`` are unused (R-FCN scores every proposal).

    Raises:
        IncompatibleConfigError: the extractor has no ``c4`` map for the RPN.
    """

    display_name: ClassVar[str] = "R-FCN"

    def __init__(
        self,
        *,
        ohem_rois: int | None = 128,
        ohem_nms_threshold: float | None = None,
        box_classifier: HeadFactory | None = None,
        **kwargs,
    ):
        super().__init__(box_classifier=box_classifier, **kwargs)
        self.ohem_rois = ohem_rois
        self.ohem_nms_threshold = ohem_nms_threshold

    def _init_features(self, extractor: FeatureExtractor) -> tuple[FeatureInfo, FeatureInfo]:
        """Keep the whole extractor: RPN on ``c4``, score maps on the last map."""
        info = {f.name: f for f in extractor.feature_info}
        if "c4" not in info:
            raise IncompatibleConfigError(
                f"R-FCN needs a c4 (stride 16 or 8) map for its RPN; {type(extractor).__name__} "
                f"gives {list(info)}"
            )
        last = extractor.feature_info[-1]
        if last.stride > 16:
            log.warning(
                "R-FCN score maps at stride %d; Huang et al. use 16 or 8 "
                "(set extractor.output_stride=16)",
                last.stride,
            )
        return info["c4"], last

    def _build_box_head(self, factory: HeadFactory | None) -> nn.Module:
        info = self.crop_info
        return (factory or PSRoIHead)(
            in_channels=info.channels, stride=info.stride, num_classes=self.num_classes
        )

    def sample_rois(self, proposals: Proposals, gt: PaddedBoxes) -> RoISample:
        """Every proposal is scored (per-RoI cost is tiny); OHEM picks the hard ones."""
        return sample_rois(
            proposals,
            gt,
            coder=self.box_coder,
            fg_threshold=self.box_fg_threshold,
            num_samples=None,
            add_gt=self.add_gt_to_proposals,
        )

    def second_stage(
        self, crop_map: Tensor, rois: Tensor, out: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """In training with OHEM, forward every RoI, back-propagate the hardest only.

        The score maps are computed once with gradient; PS-RoIAlign runs once without it on
        all RoIs to rank their losses, then again with it on the ``ohem_rois`` kept per image,
        so the backward pass (torchvision's ``ps_roi_align`` backward, the costliest op of
        an R-FCN step on CPU) only sees the kept RoIs. Losses and gradients equal
        :func:`ohem_loss` on the full set; the outputs hold the kept RoIs only, marked by an
        ``ohem_selected`` entry so :meth:`box_loss` does not select again.
        """
        head = self.box_head
        if not (self.training and self.ohem_rois is not None and isinstance(head, PSRoIHead)):
            return super().second_stage(crop_map, rois, out)
        maps = head.score_maps(crop_map)
        labels, box_targets = out["roi_labels"], out["roi_box_targets"]
        with torch.no_grad():
            ce, box = roi_losses(*head.pool(maps, rois), labels, box_targets)
            keep = ohem_keep(
                ce + box, rois, num=self.ohem_rois, nms_threshold=self.ohem_nms_threshold
            )
        cls_logits, box_deltas = head.pool(maps, rois[keep])
        return {
            "rois": rois[keep],
            "cls_logits": cls_logits,
            "box_deltas": box_deltas,
            "roi_labels": labels[keep],
            "roi_box_targets": box_targets[keep],
            "ohem_selected": torch.ones((), dtype=torch.bool),
        }

    def box_loss(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Losses over the ``ohem_rois`` highest-loss RoIs of each image, divided by their number."""
        if self.ohem_rois is None or "ohem_selected" in outputs:
            return super().box_loss(outputs)
        ce, box = self.roi_losses(outputs)
        return ohem_loss(
            ce, box, outputs["rois"], num=self.ohem_rois, nms_threshold=self.ohem_nms_threshold
        )
