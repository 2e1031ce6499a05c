"""The single-shot family: SSD and DSSD (RefineDet, built on SSD, is in ``refinedet.py``).

SSD follows Liu et al. 2016 as configured by Huang et al. 2017 (sections 2-3, 3.6): the
extractor's topmost map plus one higher-resolution map, extra layers with batch norm that
halve the resolution, multi-scale default boxes, argmax matching at IoU 0.5 after each
object claims its best default box (Huang et al.'s Argmax: when two objects share a best
box, the one with the higher IoU gets it, :func:`models.matching.argmax_match`), 3:1 hard
negative mining, softmax + smooth-L1 multibox loss normalized by the number of positives.

Deviations from the papers, and why:
    * The default config (``sweeps/meta_arch/ssd.yaml``) predicts from the extractor's last
      three maps (strides 8, 16, 32) plus two extra layers, not Huang et al.'s top two maps
      plus four: the project's default images are 128 px, where the paper's layout leaves an
      8x8 top map and 1x1 extra maps, and learns far slower on a CPU budget. The class
      default (``neck=None``) and the paper presets keep the papers' layouts.
    * Inference NMS defaults to IoU 0.6 (Huang et al. 3.4, "post-process detections with
      non-max suppression using an IOU threshold of 0.6") rather than Liu et al.'s 0.45; the
      paper presets set 0.45 where they reproduce Liu et al.
    * Box coder weights are [10, 10, 5, 5] (Huang et al. 3.2), which equals Liu et al.'s
      variances (0.1, 0.2) written as multipliers.
    * Default boxes are clipped to the image (Liu et al.'s early Caffe code did, the TF OD API
      does not); ``clip_default_boxes`` turns it off, as the paper presets do (the released
      ``ssd_pascal.py`` sets ``clip = False``).

Structure shared by the family: ``extractor`` -> ``neck`` (bottom-up: the selected extractor
maps plus extra layers, the "source" maps) -> optional ``top_down`` context module (DSSD's
deconvolution path, RefineDet's TCBs, RefineNet blocks; same sizes as the source maps) ->
``head``. The top-down module is a constructor argument, so any detector of the family can be
run with any context module (the ``neck=`` config group).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.anchors import ssd_default_boxes, ssd_scales
from models.box_ops import BoxCoder, box_iou, clip_boxes, multiclass_nms
from models.errors import IncompatibleConfigError
from models.extractors.base import FeatureExtractor, FeatureInfo
from models.heads.dssd_head import DSSDHead
from models.heads.ssd_head import SSDHead
from models.losses import multibox_loss
from models.matching import argmax_match
from models.meta_arch.base import DetectionModel, Detections, ModelInfo, Target, import_object
from models.necks.dssd import DSSDDecoder
from models.necks.residual_extra import ResidualExtraLayers
from models.necks.ssd_extra import SSDExtraLayers, feature_sizes
from models.necks.topdown import TopDownFactory

log = logging.getLogger(__name__)

NeckFactory = Callable[[list[FeatureInfo]], nn.Module]
# head(in_channels, anchors_per_location, num_outputs) -> module (SSDHead's signature).
HeadFactory = Callable[..., nn.Module]


def _per_layer(aspect_ratios: Sequence | None, num_layers: int) -> list[list[float]]:
    """Expand an aspect-ratio spec to one list per layer (ratios >= 1; 1/r is implied).

    ``None`` gives Liu et al.'s layout: ``[2]`` on the first and the last two layers,
    ``[2, 3]`` elsewhere (SSD300: 4, 6, 6, 6, 4, 4 boxes per location).
    """
    if aspect_ratios is None:
        return [
            [2.0] if (k == 0 or k >= num_layers - 2) and num_layers > 3 else [2.0, 3.0]
            for k in range(num_layers)
        ]
    if all(isinstance(r, int | float) for r in aspect_ratios):
        return [[float(r) for r in aspect_ratios] for _ in range(num_layers)]
    if len(aspect_ratios) != num_layers:
        raise ValueError(
            f"aspect_ratios has {len(aspect_ratios)} layers, the model has {num_layers} maps"
        )
    return [[float(r) for r in layer] for layer in aspect_ratios]


def _check_in_features(neck: NeckFactory | None, extractor: FeatureExtractor) -> None:
    """A neck asking for maps the extractor lacks is an incompatible combination (a sweep
    records it as skipped), not a crash: e.g. RefineDet's ``[c3, c4, c5]`` on SSD's VGG-16,
    which only has ``c3``/``c4``."""
    wanted = getattr(neck, "keywords", {}).get("in_features")
    if wanted is None or isinstance(wanted, int):  # a count of the last maps: always valid
        return
    missing = [n for n in wanted if n not in extractor.channels]
    if missing:
        raise IncompatibleConfigError(
            f"the neck reads maps {missing} that {type(extractor).__name__} does not produce "
            f"(it has {list(extractor.channels)})"
        )


class SSD(DetectionModel):
    """SSD over any :class:`FeatureExtractor`.

    Args:
        extractor: the backbone.
        num_classes: object classes, background excluded.
        neck: factory ``feature_info -> module`` producing the list of source maps and a
            ``feature_info`` of its own (default :class:`SSDExtraLayers` with its defaults).
        top_down: optional factory ``neck feature_info -> module`` mapping the source maps to
            same-sized context-enriched maps the head predicts from (see
            :mod:`models.necks.topdown`); None predicts from the source maps (plain SSD).
        head: optional factory ``(in_channels, anchors_per_location, num_outputs) -> module``
            returning ``(scores [B, A, K], deltas [B, A, 4])`` (default :class:`SSDHead`).
        aspect_ratios: per layer lists of ratios >= 1 (1/r added), one flat list for every
            layer, or None for Liu et al.'s layout.
        min_scale, max_scale: default-box scales s_k spread linearly (Liu et al. eq. 4).
        min_sizes, max_sizes, steps: explicit pixel sizes and strides instead (the Caffe
            SSD300/SSD512 settings the paper presets use).
        clip_default_boxes: clip default boxes to the image.
        match_threshold: IoU for a positive default box (0.5).
        neg_pos_ratio: hard negative mining ratio (3).
        box_coder_weights: (10, 10, 5, 5).
        score_threshold, nms_threshold, pre_nms_topk, max_detections: inference settings.
        head_kernel_size: 3 (Liu et al.).
    """

    display_name = "SSD"
    resize_mode = "square"
    takes_neck = True

    def __init__(
        self,
        *,
        extractor: FeatureExtractor,
        num_classes: int,
        neck: NeckFactory | None = None,
        top_down: TopDownFactory | None = None,
        head: HeadFactory | None = None,
        aspect_ratios: Sequence | None = None,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        min_sizes: Sequence[float] | None = None,
        max_sizes: Sequence[float] | None = None,
        steps: Sequence[float] | None = None,
        clip_default_boxes: bool = True,
        match_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.01,
        nms_threshold: float = 0.6,
        pre_nms_topk: int = 1000,
        max_detections: int = 100,
        head_kernel_size: int = 3,
    ):
        super().__init__(extractor=extractor, num_classes=num_classes)
        _check_in_features(neck, extractor)
        self.neck = (neck or SSDExtraLayers)(extractor.feature_info)
        self.top_down = top_down(self.neck.feature_info) if top_down is not None else None
        info = self.prediction_info
        self.aspect_ratios = _per_layer(aspect_ratios, len(info))
        self.anchors_per_location = self.anchor_counts()
        self.scales = None if min_sizes is not None else ssd_scales(len(info), min_scale, max_scale)
        self.min_sizes, self.max_sizes = min_sizes, max_sizes
        self.steps = steps
        self.clip_default_boxes = clip_default_boxes
        self.head_kernel_size = head_kernel_size
        self.head_factory = head
        self.head = self.build_head(info)
        self.box_coder = BoxCoder(tuple(box_coder_weights))
        self.match_threshold = match_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.pre_nms_topk = pre_nms_topk
        self.max_detections = max_detections

    def neck_name(self) -> str:
        """The context module as the ``neck`` config group names it: the top-down module's
        ``neck_name`` (``dssd``, ``tcb``, ``refinenet``), else ``ssd_extra`` (extra layers
        only) or ``none`` (the extractor maps alone)."""
        if self.top_down is not None:
            return getattr(self.top_down, "neck_name", type(self.top_down).__name__)
        return "ssd_extra" if len(getattr(self.neck, "extras", ())) else "none"

    def cost_parts(self) -> dict[str, list[nn.Module]]:
        """The neck is the bottom-up extra layers plus the top-down module, when there is one
        (the prediction heads, and RefineDet's ARM, are head work)."""
        neck = [self.neck] + ([self.top_down] if self.top_down is not None else [])
        return {"extractor": [self.extractor], "neck": neck}

    @classmethod
    def config_info(cls, config: Mapping[str, Any]) -> ModelInfo:
        """As :meth:`neck_name` would say, from the config's ``top_down`` and ``neck``."""
        if "top_down" in config:
            top_down = config["top_down"]
        else:  # the constructor's default (RefineDet: TCBs)
            top_down = inspect.signature(cls.__init__).parameters["top_down"].default
        if isinstance(top_down, Mapping) and "_target_" in top_down:
            top_down = import_object(str(top_down["_target_"]))
        if top_down is not None:
            neck = getattr(top_down, "neck_name", getattr(top_down, "__name__", str(top_down)))
        else:
            bottom_up = config.get("neck")
            depths = bottom_up.get("depths") if isinstance(bottom_up, Mapping) else None
            neck = "none" if depths is not None and len(depths) == 0 else "ssd_extra"
        return dataclasses.replace(super().config_info(config), neck=neck)

    @property
    def prediction_info(self) -> list[FeatureInfo]:
        """``feature_info`` of the maps the head predicts from (top-down output if any)."""
        return (self.top_down if self.top_down is not None else self.neck).feature_info

    def anchor_counts(self) -> list[int]:
        """Default boxes per location of each prediction map (SSD: ``2 + 2 * #ratios``)."""
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def build_head(self, info: Sequence[FeatureInfo]) -> nn.Module:
        """The prediction head over maps of ``info`` (``num_classes + 1`` softmax scores)."""
        channels = [f.channels for f in info]
        if self.head_factory is not None:
            return self.head_factory(channels, self.anchors_per_location, self.num_classes + 1)
        return SSDHead(
            channels,
            self.anchors_per_location,
            self.num_classes + 1,
            kernel_size=self.head_kernel_size,
        )

    # -- anchors ---------------------------------------------------------------------------
    def default_boxes(
        self,
        sizes: list[tuple[int, int]],
        image_size: tuple[int, int],
        device: torch.device | None = None,
    ) -> Tensor:
        """Default boxes ``[A, 4]`` xyxy pixels for maps of ``sizes`` on an image of ``image_size``."""
        return ssd_default_boxes(
            sizes,
            image_size,
            aspect_ratios=self.aspect_ratios,
            scales=self.scales,
            min_sizes=self.min_sizes,
            max_sizes=self.max_sizes,
            steps=self.steps,
            clip=self.clip_default_boxes,
            device=device,
        )

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Prediction-map sizes at ``(H, W)``, from a forward pass of the feature layers only
        (exact whatever each backbone's rounding), run once per size. The bottom-up layers
        suffice: top-down modules keep the sizes of the source maps."""
        cache = self.__dict__.setdefault("_map_size_cache", {})
        if image_size not in cache:
            p = next(self.parameters())
            x = torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype)
            was_training = self.training
            self.eval()
            with torch.no_grad():
                cache[image_size] = feature_sizes(self.source_maps(x))
            self.train(was_training)
        return cache[image_size]

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        sizes = self.map_sizes(image_size)
        return sum(h * w * a for (h, w), a in zip(sizes, self.anchors_per_location, strict=True))

    # -- the four steps --------------------------------------------------------------------
    def source_maps(self, images: Tensor) -> list[Tensor]:
        """Bottom-up maps ``[B, C_k, H_k, W_k]`` (extractor + neck), shallow to deep."""
        return self.neck(self.extractor(images))

    def features(self, images: Tensor) -> list[Tensor]:
        """Prediction maps ``[B, C_k, H_k, W_k]`` (source maps, then the top-down module)."""
        maps = self.source_maps(images)
        return self.top_down(maps) if self.top_down is not None else maps

    def predict(self, images: Tensor, targets: list[Target] | None = None) -> dict[str, Tensor]:
        """Args: images ``[B, 3, H, W]`` normalized.

        Returns:
            ``cls_logits`` ``[B, A, C+1]`` (background at 0), ``box_deltas`` ``[B, A, 4]`` and
            ``anchors`` ``[A, 4]`` xyxy pixels.
        """
        maps = self.features(images)
        cls_logits, box_deltas = self.head(maps)
        anchors = self.default_boxes(feature_sizes(maps), tuple(images.shape[-2:]), images.device)
        return {"cls_logits": cls_logits, "box_deltas": box_deltas, "anchors": anchors}

    def assign_targets(self, anchors: Tensor, targets: list[Target]) -> tuple[Tensor, Tensor]:
        """Match default boxes to objects: best anchor per object, then IoU >= threshold.

        Args:
            anchors: ``[A, 4]`` xyxy shared by the batch, or ``[B, A, 4]`` per image (e.g.
                RefineDet's refined anchors).
            targets: per image ``boxes [G, 4]`` xyxy and ``labels [G]``.

        Returns:
            ``cls_targets`` ``[B, A]`` int64 (0 background, k+1 for class k) and
            ``box_targets`` ``[B, A, 4]`` encoded offsets (meaningful where positive).
        """
        per_image = (
            anchors if anchors.dim() == 3 else anchors.unsqueeze(0).expand(len(targets), -1, -1)
        )
        cls_targets, box_targets = [], []
        for a, t in zip(per_image, targets, strict=True):
            boxes = t["boxes"].to(a)
            if boxes.numel() == 0:  # a negative image: every default box is background
                cls_targets.append(torch.zeros(a.shape[0], dtype=torch.int64, device=a.device))
                box_targets.append(torch.zeros_like(a))
                continue
            m = argmax_match(
                box_iou(boxes, a),
                pos_threshold=self.match_threshold,
                neg_threshold=self.match_threshold,
                allow_low_quality=True,
            )
            idx = m.clamp(min=0)
            labels = t["labels"].to(a.device)
            cls_targets.append(torch.where(m >= 0, labels[idx] + 1, torch.zeros_like(m)))
            box_targets.append(self.box_coder.encode(boxes[idx], a))
        return torch.stack(cls_targets), torch.stack(box_targets)

    def loss(
        self, outputs: dict[str, Tensor], targets: list[Target], image_sizes: list[tuple[int, int]]
    ) -> dict[str, Tensor]:
        cls_t, box_t = self.assign_targets(outputs["anchors"], targets)
        return multibox_loss(
            outputs["cls_logits"],
            outputs["box_deltas"],
            cls_t,
            box_t,
            neg_pos_ratio=self.neg_pos_ratio,
        )

    def decode(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Boxes ``[B, A, 4]`` xyxy (unclipped) and class scores ``[B, A, C]`` (no background)."""
        scores = outputs["cls_logits"].softmax(-1)[..., 1:]
        boxes = self.box_coder.decode(outputs["box_deltas"], outputs["anchors"].unsqueeze(0))
        return boxes, scores

    def postprocess(
        self, outputs: dict[str, Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """Decode, per-class NMS and top-k per image; boxes clipped to each image."""
        boxes, scores = self.decode(outputs)
        results = []
        for b, s, size in zip(boxes, scores, image_sizes, strict=True):
            det_boxes, det_scores, det_labels = multiclass_nms(
                clip_boxes(b, size),
                s,
                score_threshold=self.score_threshold,
                iou_threshold=self.nms_threshold,
                pre_nms_topk=self.pre_nms_topk,
                max_detections=self.max_detections,
                class_agnostic_boxes=True,
            )
            results.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
        return results


class DSSD(SSD):
    """DSSD (Fu et al. 2017): SSD with a deconvolution path and prediction modules.

    Everything is SSD's except the defaults: residual extra layers
    (:class:`ResidualExtraLayers`), the deconvolution path (:class:`DSSDDecoder`, element-wise
    product), prediction module (c) before every head (:class:`DSSDHead`) and aspect ratios
    (1.6, 2.0, 3.0) at every layer (8 default boxes per location). ``top_down=None`` gives the
    paper's "SSD + PM(c)" baseline that DSSD is initialized from.

    Args:
        freeze_ssd: DSSD's first training stage: freeze "the original SSD model" (extractor
            and bottom-up extra layers; their BN stays in eval mode) and train only the
            deconvolution side, prediction modules and heads.
        init_checkpoint: path of a checkpoint to start from (e.g. a trained SSD + PM(c) for
            stage 1, or a stage-1 DSSD for the stage-2 fine-tune of everything). Either a
            state dict or the trainer's ``{"model": state_dict}``; tensors whose name and
            shape match are loaded, the rest keep their initialization.
        **kwargs: everything of :class:`SSD`.

    Deviations from the paper, and why:
        * Stage 1 freezes the extractor and the extra layers only; the heads read the new
          deconvolution maps, so they train with it (the paper does not say whether its
          SSD heads were reused).
        * The two stages are two jobs (config ``meta_arch.init_checkpoint`` /
          ``meta_arch.freeze_ssd``), not one schedule, so each stays one configuration.
    """

    display_name = "DSSD"

    def __init__(
        self,
        *,
        extractor: FeatureExtractor,
        num_classes: int,
        neck: NeckFactory | None = None,
        top_down: TopDownFactory | None = DSSDDecoder,
        head: HeadFactory | None = DSSDHead,
        aspect_ratios: Sequence | None = (1.6, 2.0, 3.0),
        freeze_ssd: bool = False,
        init_checkpoint: str | None = None,
        **kwargs,
    ):
        super().__init__(
            extractor=extractor,
            num_classes=num_classes,
            neck=neck or ResidualExtraLayers,
            top_down=top_down,
            head=head,
            aspect_ratios=aspect_ratios,
            **kwargs,
        )
        if init_checkpoint:
            load_matching_state(self, init_checkpoint)
        self.freeze_ssd = freeze_ssd
        if freeze_ssd:
            for p in self.frozen_modules().parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> nn.ModuleList:
        """The "original SSD model" frozen in stage 1: the extractor and the extra layers."""
        return nn.ModuleList([self.extractor, self.neck])

    def train(self, mode: bool = True) -> DSSD:
        super().train(mode)
        if self.freeze_ssd:
            # Frozen weights with moving BN statistics would still drift: keep them fixed.
            self.frozen_modules().eval()
        return self


def load_matching_state(model: nn.Module, path: str) -> tuple[int, int]:
    """Load the tensors of a checkpoint whose name and shape match ``model``'s.

    Args:
        model: the module to update in place.
        path: a ``torch.save``d state dict, or a dict with it under ``"model"`` (the trainer's
            checkpoints). Loaded with ``weights_only=True``: a checkpoint is data, not code.

    Returns:
        ``(loaded, total)``: matching tensors loaded, tensors in ``model``'s state dict.

    Raises:
        ValueError: nothing in the checkpoint matches (almost surely the wrong file).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"no tensor of {path} matches the model (wrong checkpoint?)")
    model.load_state_dict(matching, strict=False)
    log.info("%s: loaded %d of the model's %d tensors", path, len(matching), len(own))
    return len(matching), len(own)
