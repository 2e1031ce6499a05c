"""RefineDet (Zhang et al. 2018): anchor refinement module + object detection module.

* **ARM**: on the bottom-up source maps (VGG-16: conv4_3, conv5_3, fc7, conv6_2; ResNet-101:
  res3b3, res4b22, res5c, res6; strides 8/16/32/64), a binary objectness score and four
  coarse offsets for each tiled anchor (one size, ``4 x stride``, ratios 0.5/1/2).
* **TCB** (:class:`models.necks.tcb.TCBTopDown`, the ``top_down`` module): turns the ARM maps
  into the ODM maps with top-down context. Any top-down module of the family fits here.
* **ODM**: on the TCB outputs, ``C + 1`` class scores and four offsets relative to the
  *refined* anchors (the ARM's offsets applied to the tiled anchors): two-step cascaded
  regression.
* **Negative anchor filtering**: an anchor whose ARM background probability exceeds
  ``theta = 0.99`` takes no ODM loss in training (positive or negative) and yields no
  detection at inference.
* **Loss** (eq. 1): ARM binary softmax + smooth L1 over its positives, normalized by
  ``N_arm``; ODM softmax + smooth L1 over the positives of the refined anchors, normalized by
  ``N_odm``; negatives by 3:1 hard negative mining in each; a module with no positives in the
  batch contributes 0 (the zero-positive rule of :func:`models.losses.multibox_loss`).
* **Matching**: each object's best anchor, then every anchor with IoU >= 0.5; the ARM matches
  the tiled anchors, the ODM the refined ones, per image.
* **Inference**: keep the top 400 (anchor, class) scores, per-class NMS at 0.45, top 200 per
  image.

Deviations from the paper, and why:
    * The refined anchors are detached: the ODM's loss does not train the ARM's offsets, as
      in the released Caffe code (``arm_loc`` is an input of the ODM's loss layer there).
    * Matching uses IoU >= 0.5 (the project's shared matcher); the paper says "higher than
      0.5". With float IoUs the difference is immaterial.
    * Anchors are not clipped to the image (the released model does not clip either).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.anchors import refinedet_anchors
from models.extractors.base import FeatureExtractor, FeatureInfo
from models.heads.ssd_head import SSDHead
from models.losses import multibox_loss
from models.meta_arch.base import Target
from models.meta_arch.single_shot import SSD, HeadFactory, NeckFactory
from models.necks.ssd_extra import feature_sizes
from models.necks.tcb import TCBTopDown
from models.necks.topdown import TopDownFactory


class RefineDet(SSD):
    """RefineDet over any :class:`FeatureExtractor`.

    Args:
        extractor: the backbone.
        num_classes: object classes, background excluded.
        neck: bottom-up factory giving the ARM maps (the presets: SSDExtraLayers with one
            extra layer, conv6_1/conv6_2, on VGG-16's conv4_3/conv5_3/fc7; ResidualExtraLayers
            with res6 on ResNet-101's c3/c4/c5).
        top_down: factory of the ARM -> ODM transfer (default :class:`TCBTopDown`); None
            predicts the ODM from the ARM maps themselves.
        head: ODM head factory (default :class:`SSDHead`); the ARM head is always an SSDHead.
        aspect_ratios: ``w / h`` ratios at every location, all layers (0.5, 1, 2).
        anchor_scale: anchor size in units of the layer's stride (4).
        anchor_offset: anchor centres at ``(x + offset) * stride`` (0.5).
        clip_anchors: clip the tiled anchors to the image (False, as the released model).
        filter_threshold: theta of negative anchor filtering (0.99; >= 1 disables it, the
            ablation of Table 3).
        match_threshold, neg_pos_ratio, box_coder_weights: as :class:`SSD` (0.5, 3, [10,10,5,5]).
        score_threshold: detections need a class score above this (0.01).
        nms_threshold: per-class NMS IoU (0.45).
        pre_nms_topk: (anchor, class) candidates kept before NMS (400).
        max_detections: detections per image (200).
        head_kernel_size: kernel of the ARM and ODM prediction convs (3).
    """

    display_name = "RefineDet"

    def __init__(
        self,
        *,
        extractor: FeatureExtractor,
        num_classes: int,
        neck: NeckFactory | None = None,
        top_down: TopDownFactory | None = TCBTopDown,
        head: HeadFactory | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_scale: float = 4.0,
        anchor_offset: float = 0.5,
        clip_anchors: bool = False,
        filter_threshold: float = 0.99,
        match_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        pre_nms_topk: int = 400,
        max_detections: int = 200,
        head_kernel_size: int = 3,
    ):
        if not aspect_ratios or not all(isinstance(r, int | float) for r in aspect_ratios):
            raise ValueError(
                f"aspect_ratios must be one flat list of w/h ratios, got {aspect_ratios}"
            )
        self.anchor_ratios = tuple(float(r) for r in aspect_ratios)
        super().__init__(
            extractor=extractor,
            num_classes=num_classes,
            neck=neck,
            top_down=top_down,
            head=head,
            aspect_ratios=self.anchor_ratios,
            match_threshold=match_threshold,
            neg_pos_ratio=neg_pos_ratio,
            box_coder_weights=box_coder_weights,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            pre_nms_topk=pre_nms_topk,
            max_detections=max_detections,
            head_kernel_size=head_kernel_size,
        )
        # SSD's scale bookkeeping does not apply: one size per layer, 4x its stride.
        self.scales = None
        self.anchor_scale = anchor_scale
        self.anchor_offset = anchor_offset
        self.clip_anchors = clip_anchors
        self.filter_threshold = filter_threshold

    # -- layout ------------------------------------------------------------------------------
    def anchor_counts(self) -> list[int]:
        """One anchor per ratio at every location (3)."""
        return [len(self.anchor_ratios)] * len(self.aspect_ratios)

    def build_head(self, info: Sequence[FeatureInfo]) -> nn.Module:
        """The ODM head over ``info``; also builds the ARM's binary head over the source maps."""
        self.arm_head = SSDHead(
            [f.channels for f in self.neck.feature_info],
            self.anchors_per_location,
            2,
            kernel_size=self.head_kernel_size,
        )
        return super().build_head(info)

    def default_boxes(
        self,
        sizes: list[tuple[int, int]],
        image_size: tuple[int, int],
        device: torch.device | None = None,
    ) -> Tensor:
        """Tiled anchors ``[A, 4]`` xyxy pixels (Zhang et al. section 4.1), at the source strides."""
        strides = [f.stride for f in self.neck.feature_info]
        return refinedet_anchors(
            sizes,
            image_size,
            strides,
            scale_factor=self.anchor_scale,
            aspect_ratios=self.anchor_ratios,
            offset=self.anchor_offset,
            clip=self.clip_anchors,
            device=device,
        )

    # -- the four steps ----------------------------------------------------------------------
    def predict(self, images: Tensor, targets: list[Target] | None = None) -> dict[str, Tensor]:
        """Args: images ``[B, 3, H, W]`` normalized.

        Returns:
            ``arm_logits`` ``[B, A, 2]`` (background at 0), ``arm_deltas`` ``[B, A, 4]`` (offsets
            of the refined anchors from the tiled ones), ``cls_logits`` ``[B, A, C+1]`` and
            ``box_deltas`` ``[B, A, 4]`` of the ODM (relative to the refined anchors), and the
            tiled ``anchors`` ``[A, 4]`` xyxy pixels.
        """
        source = self.source_maps(images)
        arm_logits, arm_deltas = self.arm_head(source)
        maps = self.top_down(source) if self.top_down is not None else source
        cls_logits, box_deltas = self.head(maps)
        anchors = self.default_boxes(feature_sizes(source), tuple(images.shape[-2:]), images.device)
        return {
            "arm_logits": arm_logits,
            "arm_deltas": arm_deltas,
            "cls_logits": cls_logits,
            "box_deltas": box_deltas,
            "anchors": anchors,
        }

    def refined_anchors(self, outputs: dict[str, Tensor]) -> Tensor:
        """First regression step: ``[B, A, 4]`` xyxy, the ARM offsets applied to the tiled anchors.

        Detached: the refined anchors are the ODM's inputs, not something its loss trains.
        """
        return self.box_coder.decode(
            outputs["arm_deltas"].detach(), outputs["anchors"].unsqueeze(0)
        )

    def filtered(self, outputs: dict[str, Tensor]) -> Tensor:
        """``[B, A]`` bool: anchors removed by negative anchor filtering (ARM background > theta)."""
        return outputs["arm_logits"].detach().softmax(-1)[..., 0] > self.filter_threshold

    def loss(
        self, outputs: dict[str, Tensor], targets: list[Target], image_sizes: list[tuple[int, int]]
    ) -> dict[str, Tensor]:
        """Equation (1): ARM and ODM multibox losses, each over its own positives.

        Returns:
            ``loss_arm_cls``, ``loss_arm_box``, ``loss_odm_cls``, ``loss_odm_box`` scalars.
        """
        cls_t, box_t = self.assign_targets(outputs["anchors"], targets)
        arm = multibox_loss(
            outputs["arm_logits"],
            outputs["arm_deltas"],
            (cls_t > 0).long(),
            box_t,
            neg_pos_ratio=self.neg_pos_ratio,
        )
        odm_cls_t, odm_box_t = self.assign_targets(self.refined_anchors(outputs), targets)
        odm = multibox_loss(
            outputs["cls_logits"],
            outputs["box_deltas"],
            odm_cls_t,
            odm_box_t,
            neg_pos_ratio=self.neg_pos_ratio,
            ignore_mask=self.filtered(outputs),
        )
        return {
            "loss_arm_cls": arm["loss_cls"],
            "loss_arm_box": arm["loss_box"],
            "loss_odm_cls": odm["loss_cls"],
            "loss_odm_box": odm["loss_box"],
        }

    def decode(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Two-step decoding: ODM offsets applied to the refined anchors.

        Returns:
            Boxes ``[B, A, 4]`` xyxy (unclipped) and class scores ``[B, A, C]``, zero at the
            anchors removed by negative anchor filtering (so no detection comes from them).
        """
        boxes = self.box_coder.decode(outputs["box_deltas"], self.refined_anchors(outputs))
        scores = outputs["cls_logits"].softmax(-1)[..., 1:]
        return boxes, scores.masked_fill(self.filtered(outputs).unsqueeze(-1), 0.0)
