"""The two-stage family: Faster R-CNN and R-FCN over any splittable extractor.

A detector here is three components, as torchvision's ``GeneralizedRCNN`` and Detectron2's
``GeneralizedRCNN(backbone, proposal_generator, roi_heads)``: the extractor (its trunk),
:class:`~models.heads.rpn.RPN` (anchors, head, proposals, matching, sampling, loss) and a box
head (:class:`~models.heads.box_head.BoxHead`: RoI sampling, the box classifier, its loss).

Faster R-CNN (Ren et al. 2015) as configured by Huang et al. 2017 (sections 2.1, 3.1-3.4,
3.6): the RPN reads the extractor's stride-16 map (stride 8 in atrous mode) and proposes
``num_proposals`` (300) boxes; the box classifier crops each proposal from the same map, runs
the extractor's last stage on it ("C4" style, :meth:`FeatureExtractor.split_last_stage`) and
predicts C + 1 scores and class-specific box refinements, trained on 64 RoIs per image at
25% positives; detections are decoded, clipped to the image and suppressed per class at IoU
0.6. One box coder, ``[10, 10, 5, 5]``, for both stages (section 3.2).

R-FCN (Dai et al. 2016) subclasses it and replaces only the second stage: the extractor's
last stage runs once on the whole image, position-sensitive score maps are built from its
output (:class:`~models.heads.rfcn.PSRoIHead`), every proposal is pooled with PS-RoIAlign and
voted, and online hard example mining keeps the 128 highest-loss RoIs of each image for the
loss (:class:`~models.heads.box_head.OHEMBoxHead`).

Both implement the FLOP-counting hook of ``benchmark/measure/flops.py``: inside
:meth:`FasterRCNN.flop_count_mode` (or with :attr:`FasterRCNN.fixed_proposals` set) an
eval-mode ``predict`` runs the second stage on exactly ``num_proposals`` RoIs per image.

Deviations from the papers, and why (the components' own are in their modules):
    * ``predict`` sees only the padded batch, so proposals are clipped to the padded size;
      detections are clipped to each image's own size in ``postprocess``.
    * Training (the ``train`` config): the CPU-sized defaults use AdamW on batches of padded
      images; ``recipe_set=huang2017`` (docs/sweeps.md) uses Huang et al.'s momentum SGD, batch 1.
    * Detections: score threshold 0.01 (TF OD API: 0.0) and at most 100 per image (COCO's
      evaluation limit).
    * R-FCN takes its position-sensitive maps from the extractor's last map at the
      extractor's ``output_stride``: 16 (or 8) as in the paper needs
      ``extractor.output_stride=16`` (the paper presets set it); with 32 it still works, on
      a coarser map (a warning is logged). Its RPN uses the extractor's ``c4`` map, as Dai
      et al.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from models.box_ops import clip_boxes, multiclass_nms
from models.errors import IncompatibleConfigError
from models.extractors.base import FeatureExtractor, FeatureInfo, LastStage
from models.heads.box_classifier import BoxClassifier
from models.heads.box_head import BoxHead, OHEMBoxHead
from models.heads.proposals import PaddedBoxes, pad_targets, to_rois
from models.heads.rfcn import PSRoIHead
from models.heads.rpn import RPN
from models.meta_arch.base import DetectionModel, Detections, Target

log = logging.getLogger(__name__)

Factory = Callable[..., nn.Module]


class TwoStageMaps(NamedTuple):
    """Which extractor maps the two stages read.

    Attributes:
        trunk: the extractor the detector keeps and runs on the image.
        rpn: the map the RPN reads.
        crop: the map the box classifier crops RoIs from.
        last_stage: the split-off last stage run per RoI (Faster R-CNN), else None.
    """

    trunk: FeatureExtractor
    rpn: FeatureInfo
    crop: FeatureInfo
    last_stage: LastStage | None


class FasterRCNN(DetectionModel):
    """Faster R-CNN = extractor trunk + :class:`RPN` + box head.

    Args:
        extractor: the backbone; it must implement ``split_last_stage``, and only its trunk
            is kept as ``extractor``.
        num_classes: object classes, background excluded.
        rpn: factory of the first stage, called with ``in_channels`` and ``stride`` of the
            RPN map (default :class:`RPN`; a ``_partial_`` config sets its own options).
        box_classifier: factory of the per-RoI network, called with ``last_stage``,
            ``in_channels``, ``stride`` and ``num_classes`` (default :class:`BoxClassifier`).
        box_head: factory of the second stage, called with ``classifier`` (default
            :class:`BoxHead`: 64 RoIs at 25%).
        num_proposals: proposals per image at test time (300; 10..300 in Figure 6).
        num_proposals_train: proposals per image the training minibatch is sampled from.
        score_threshold, nms_threshold, pre_nms_topk, max_detections: postprocessing.

    Raises:
        IncompatibleConfigError: the extractor cannot split off its last stage.
    """

    family: ClassVar[str] = "two-stage"
    display_name: ClassVar[str] = "Faster R-CNN"
    resize_mode: ClassVar[str] = "shorter_side"
    proposals: ClassVar[bool] = True
    default_classifier: ClassVar[Factory] = BoxClassifier
    default_box_head: ClassVar[Factory] = BoxHead

    def __init__(
        self,
        *,
        extractor: FeatureExtractor,
        num_classes: int,
        rpn: Factory | None = None,
        box_classifier: Factory | None = None,
        box_head: Factory | None = None,
        num_proposals: int = 300,
        num_proposals_train: int = 300,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.6,
        pre_nms_topk: int | None = 1000,
        max_detections: int = 100,
    ):
        maps = self.select_maps(extractor)
        super().__init__(extractor=maps.trunk, num_classes=num_classes)
        self.rpn_info, self.crop_info = maps.rpn, maps.crop
        # Pad batches to the coarsest map actually computed, so every image tiles it exactly.
        self.size_divisible = max(f.stride for f in self.extractor.feature_info)
        self.rpn = (rpn or RPN)(in_channels=maps.rpn.channels, stride=maps.rpn.stride)
        classifier = self.build_classifier(box_classifier or self.default_classifier, maps)
        self.box_head = (box_head or self.default_box_head)(classifier=classifier)
        self.num_proposals, self.num_proposals_train = int(num_proposals), int(num_proposals_train)
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.pre_nms_topk, self.max_detections = pre_nms_topk, max_detections
        #: FLOP-counting hook: eval ``predict`` runs exactly ``num_proposals`` RoIs per image.
        self.fixed_proposals = False

    # -- construction (R-FCN overrides both) ----------------------------------------------
    @staticmethod
    def select_maps(extractor: FeatureExtractor) -> TwoStageMaps:
        """Split the extractor: RPN and crops on the trunk's deepest map (C4)."""
        split = extractor.split_last_stage()  # IncompatibleConfigError if it cannot
        # Only the trunk stays registered: with a dilated extractor the stage is an undilated
        # copy, and the extractor's own last stage would be dead weight in params/state_dict.
        info = split.trunk.feature_info[-1]
        return TwoStageMaps(split.trunk, info, info, split)

    def build_classifier(self, factory: Factory, maps: TwoStageMaps) -> nn.Module:
        return factory(
            last_stage=maps.last_stage,
            in_channels=maps.crop.channels,
            stride=maps.crop.stride,
            num_classes=self.num_classes,
        )

    # -- what the result records and the anchor count ---------------------------------------
    @property
    def crop_size(self) -> int | None:
        """Side of the per-RoI crop (14, 17 for Inception; R-FCN: bins x samples, 21 or 12)."""
        return self.box_head.crop_size

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
        return h * w * self.rpn.anchors_per_location

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
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, out = self.rpn(rpn_map, size, self.num_proposals_train)
            sample = self.box_head.sample(proposals, self._pad(targets, images))
            out.update(self.box_head(crop_map, sample.rois, sample))
        else:
            fixed = self.fixed_proposals
            proposals, out = self.rpn(rpn_map, size, self.num_proposals, fixed=fixed)
            out.update(self.box_head(crop_map, to_rois(proposals.boxes, proposals.valid)))
        return out

    @staticmethod
    def _pad(targets: list[Target], like: Tensor) -> PaddedBoxes:
        return pad_targets(
            [t["boxes"].to(device=like.device, dtype=like.dtype) for t in targets],
            [t["labels"].to(like.device) for t in targets],
        )

    def loss(
        self, outputs: dict[str, Tensor], targets: list[Target], image_sizes: list[tuple[int, int]]
    ) -> dict[str, Tensor]:
        """``loss_rpn_cls``, ``loss_rpn_box`` (:meth:`RPN.loss`), ``loss_cls``, ``loss_box``."""
        anchors = outputs["anchors"]
        boxes = [t["boxes"].to(anchors) for t in targets]
        rpn = self.rpn.loss(outputs, boxes, self._pad(targets, anchors))
        return {**rpn, **self.box_head.loss(outputs)}

    def postprocess(
        self, outputs: dict[str, Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """Softmax, decode each RoI's class-specific boxes, clip, per-class NMS, top-k."""
        rois = outputs["rois"]
        scores = outputs["cls_logits"].softmax(-1)[:, 1:]  # [R, C]
        deltas = outputs["box_deltas"]
        boxes = self.box_head.coder.decode(deltas, rois[:, None, 1:])  # [R, C or 1, 4]
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

    Same arguments as :class:`FasterRCNN`; the defaults differ: ``box_classifier`` is called
    with ``in_channels``, ``stride`` and ``num_classes`` (default :class:`PSRoIHead`: 7x7
    bins sampled to 21x21, 1024-channel reduce, class-agnostic boxes) and ``box_head``
    defaults to :class:`OHEMBoxHead` (every proposal scored, OHEM keeps 128 per image).

    Raises:
        IncompatibleConfigError: the extractor has no ``c4`` map for the RPN.
    """

    display_name: ClassVar[str] = "R-FCN"
    default_classifier: ClassVar[Factory] = PSRoIHead
    default_box_head: ClassVar[Factory] = OHEMBoxHead

    @staticmethod
    def select_maps(extractor: FeatureExtractor) -> TwoStageMaps:
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
        return TwoStageMaps(extractor, info["c4"], last, None)

    def build_classifier(self, factory: Factory, maps: TwoStageMaps) -> nn.Module:
        return factory(
            in_channels=maps.crop.channels, stride=maps.crop.stride, num_classes=self.num_classes
        )
