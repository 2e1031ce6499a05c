"""torchvision's own detectors as references, behind the :class:`DetectionModel` steps.

``meta_arch=torchvision meta_arch.name=<builder>`` runs e.g. ``fasterrcnn_resnet50_fpn``,
``fasterrcnn_mobilenet_v3_large_320_fpn``, ``retinanet_resnet50_fpn(_v2)``,
``fcos_resnet50_fpn``, ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large`` through the same
job (train, evaluate, measure) as our detectors, so a sweep puts them on the same plots.

How they are made comparable:
    * Built with ``weights=None, weights_backbone=None`` (no downloads) and
      ``num_classes = C + 1``: torchvision counts background (R-CNN, SSD) or reserves label 0
      (RetinaNet, FCOS), so our labels ``0..C-1`` enter as ``1..C`` and leave shifted back;
      a detection of the reserved label 0 (possible before training) is dropped.
    * Same pixels as ours: torchvision detectors resize inside their transform. Here the data
      pipeline resizes to the job's M x M square (``resize_mode = "square"``), the transform's
      ``min_size = max_size = M`` (``fixed_size = (M, M)`` for SSD) are set to match, and
      :meth:`preprocess` only normalizes and pads (with the transform's mean/std and
      ``size_divisible``) - the transform's resize, a no-op at scale 1, is never run.
    * The configured ``extractor`` is accepted and ignored (the builder fixes the backbone);
      :attr:`backbone_name` is recorded as the result's ``extractor``.
    * Two-stage FLOPs hook (``benchmark.measure.flops``): ``num_proposals`` is the RPN's
      test-time ``post_nms_top_n``; :meth:`flop_count_mode` disables the RPN's NMS, score and
      size filters so exactly that many RoIs (when the image has that many anchors) reach
      the box head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torchvision.models.detection as tvd
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from models.errors import IncompatibleConfigError
from models.meta_arch.base import DetectionModel, Detections, ModelInfo, Target

# torchvision detector class -> (how this wrapper drives it, display name). R-CNN is the
# two-stage family (an RPN, then RoI heads on its proposals); the others are single-shot.
_KINDS = {
    tvd.FasterRCNN: ("rcnn", "Faster R-CNN"),
    RetinaNet: ("retinanet", "RetinaNet"),
    FCOS: ("fcos", "FCOS"),
    SSD: ("ssd", "SSD"),
}


def backbone_name(builder: str) -> str:
    """``fasterrcnn_resnet50_fpn`` -> ``resnet50_fpn``, ``ssdlite320_mobilenet_v3_large`` ->
    ``mobilenet_v3_large``: the builder without its detector prefix."""
    return re.sub(r"^(fasterrcnn|retinanet|fcos|ssdlite\d*|ssd\d*)_", "", builder)


def _kind(model_class: type) -> tuple[str, str]:
    """``(kind, display name)`` of a torchvision detector class (``("rcnn", "Faster R-CNN")``)."""
    if issubclass(model_class, tvd.MaskRCNN | tvd.KeypointRCNN):
        raise IncompatibleConfigError(
            f"{model_class.__name__} needs mask/keypoint targets; "
            "use a box-only torchvision detector"
        )
    for cls, kind in _KINDS.items():
        if issubclass(model_class, cls):
            return kind
    raise IncompatibleConfigError(f"unsupported torchvision detector {model_class.__name__}")


def builder_info(name: str, model_class: type | None = None) -> ModelInfo:
    """The metadata of the detector a builder makes, from the builder's return annotation
    (torchvision annotates every detection builder), without building it.

    Args:
        name: builder in ``torchvision.models.detection`` (or the label of ``model_class``).
        model_class: the class of an already built detector (wins over the annotation).
    """
    if model_class is None:
        builder = getattr(tvd, name, None)
        model_class = inspect.signature(builder).return_annotation if callable(builder) else None
        if not isinstance(model_class, type):
            raise IncompatibleConfigError(f"torchvision.models.detection has no builder {name!r}")
    kind, display = _kind(model_class)
    if kind == "ssd" and name.startswith("ssdlite"):
        display = "SSDlite"
    return ModelInfo(
        family="two-stage" if kind == "rcnn" else "single-shot",
        display_name=f"{display} (torchvision)",
        resize_mode=TorchvisionDetector.resize_mode,
        proposals=kind == "rcnn",
        takes_neck=False,
    )


class TorchvisionDetector(DetectionModel):
    """A torchvision detection builder wrapped as a :class:`DetectionModel`.

    Args:
        name: builder in ``torchvision.models.detection`` (``ssdlite320_mobilenet_v3_large``...).
        num_classes: object classes, background excluded (the builder gets ``C + 1``).
        image_size: the job's square input size M.
        extractor: ignored (the builder defines the backbone); accepted so ``build_detector``
            works unchanged.
        builder_kwargs: extra keyword arguments for the builder (e.g. ``box_detections_per_img``).
        model: an already built torchvision detector (e.g. a ``FasterRCNN`` over a custom
            backbone, ``benchmark.compare``) with ``num_classes + 1`` outputs, used instead of
            calling the builder; ``name`` is then only its label.
    """

    display_name: ClassVar[str] = "torchvision detector"
    resize_mode: ClassVar[str] = "square"

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        image_size: int,
        extractor: Any = None,
        builder_kwargs: dict | None = None,
        model: nn.Module | None = None,
    ):
        # DetectionModel.__init__ would register ``extractor`` as a submodule; set its fields here.
        nn.Module.__init__(self)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (background excluded), got {num_classes}")
        if model is None:
            builder = getattr(tvd, name, None)
            if not callable(builder):
                raise IncompatibleConfigError(
                    f"torchvision.models.detection has no builder {name!r}"
                )
            model = builder(
                weights=None,
                weights_backbone=None,
                num_classes=num_classes + 1,
                **dict(builder_kwargs or {}),
            )
        self.model = model
        self.kind, _ = _kind(type(self.model))
        self.num_classes = num_classes
        self.reference_name = name
        self.backbone_name = backbone_name(name)
        t = self.model.transform
        t.min_size, t.max_size = (int(image_size),), int(image_size)
        if t.fixed_size is not None:
            t.fixed_size = (int(image_size), int(image_size))
        self.size_divisible = int(t.size_divisible)
        self.register_buffer(
            "pixel_mean", torch.tensor(t.image_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(t.image_std).view(1, 3, 1, 1), persistent=False
        )

    def info(self) -> ModelInfo:
        """The wrapped detector's family (R-CNN: two-stage), name and proposals."""
        info = builder_info(self.reference_name, type(self.model))
        return dataclasses.replace(info, num_proposals=self.num_proposals)

    def cost_parts(self) -> dict[str, list[nn.Module]]:
        """torchvision's backbone split as its classes build it: ``body`` (the classifier
        trunk) and ``fpn`` of a ``BackboneWithFPN``; ``features`` and ``extra`` (the extra
        layers) of the SSD / SSDlite feature extractors; a backbone of another kind counts
        whole as the extractor."""
        backbone = self.model.backbone
        for trunk, neck in (("body", "fpn"), ("features", "extra")):
            if isinstance(getattr(backbone, trunk, None), nn.Module):
                extra = getattr(backbone, neck, None)
                return {
                    "extractor": [getattr(backbone, trunk)],
                    "neck": [extra] if isinstance(extra, nn.Module) else [],
                }
        return {"extractor": [backbone], "neck": []}

    @classmethod
    def config_info(cls, config: Mapping[str, Any]) -> ModelInfo:
        """From the builder ``name`` of the config (see :func:`builder_info`)."""
        return builder_info(str(config.get("name", "")))

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _shift_targets(targets: list[Target] | None) -> list[Target] | None:
        """Our labels 0..C-1 -> torchvision's 1..C (0 is background / reserved)."""
        if targets is None:
            return None
        return [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1} for t in targets]

    def _features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.model.backbone(images)
        return OrderedDict([("0", feats)]) if isinstance(feats, Tensor) else feats

    def _anchor_generator(self):
        return (
            self.model.rpn.anchor_generator if self.kind == "rcnn" else self.model.anchor_generator
        )

    @property
    def num_proposals(self) -> int | None:
        """RoIs per image at test time (two-stage only)."""
        return int(self.model.rpn._post_nms_top_n["testing"]) if self.kind == "rcnn" else None

    # -- the four steps ----------------------------------------------------------------------
    def forward(self, images: list[Tensor] | Tensor, targets: list[Target] | None = None):
        batch = self.preprocess(images)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            outputs = self.predict(batch.tensor, targets, image_sizes=batch.image_sizes)
            return self.loss(outputs, targets, batch.image_sizes)
        outputs = self.predict(batch.tensor, image_sizes=batch.image_sizes)
        return self.postprocess(outputs, batch.image_sizes)

    def predict(
        self,
        images: Tensor,
        targets: list[Target] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Network part. Args: images ``[B, 3, H, W]`` normalized; ``targets`` in training.

        Returns:
            Training: torchvision's loss terms. Eval, R-CNN: ``class_logits [R, C+2]``,
            ``box_regression [R, 4(C+2)]``, ``proposals [R, 4]`` and ``proposal_counts [B]``
            (R = RoIs of all images). Eval, dense: the head outputs ``[B, A, ...]``,
            ``anchors [B, A, 4]`` and ``anchors_per_level [L]``.
        """
        sizes = image_sizes or [tuple(images.shape[-2:])] * images.shape[0]
        il = ImageList(images, [(int(h), int(w)) for h, w in sizes])
        tv_targets = self._shift_targets(targets) if self.training else None
        feats = self._features(images)
        m = self.model
        if self.kind == "rcnn":
            proposals, rpn_losses = m.rpn(il, feats, tv_targets)
            if self.training:
                _, det_losses = m.roi_heads(feats, proposals, il.image_sizes, tv_targets)
                return {**rpn_losses, **det_losses}
            rh = m.roi_heads
            box = rh.box_head(rh.box_roi_pool(feats, proposals, il.image_sizes))
            class_logits, box_regression = rh.box_predictor(box)
            return {
                "class_logits": class_logits,
                "box_regression": box_regression,
                "proposals": torch.cat(proposals),
                "proposal_counts": torch.tensor([len(p) for p in proposals]),
            }
        maps = list(feats.values())
        head = m.head(maps)
        anchors = self._anchor_generator()(il, maps)
        if self.training:
            return self._dense_losses(tv_targets, head, anchors, maps)
        per_level = [x.shape[-2] * x.shape[-1] for x in maps]
        a = head["cls_logits"].shape[1] // sum(per_level)  # anchors per location
        return {
            **head,
            "anchors": torch.stack(anchors),
            "anchors_per_level": torch.tensor([n * a for n in per_level]),
        }

    def _dense_losses(self, targets, head, anchors, maps) -> dict[str, Tensor]:
        m = self.model
        if self.kind == "retinanet":
            return m.compute_loss(targets, head, anchors)
        if self.kind == "fcos":
            return m.compute_loss(targets, head, anchors, [x.shape[-2] * x.shape[-1] for x in maps])
        matched = []  # SSD matches inside forward; the same two lines as torchvision's
        for anc, t in zip(anchors, targets, strict=True):
            if t["boxes"].numel() == 0:
                matched.append(
                    torch.full((anc.shape[0],), -1, dtype=torch.int64, device=anc.device)
                )
            else:
                matched.append(m.proposal_matcher(box_ops.box_iou(t["boxes"], anc)))
        return m.compute_loss(targets, head, anchors, matched)

    def loss(
        self, outputs: dict[str, Tensor], targets: list[Target], image_sizes: list[tuple[int, int]]
    ) -> dict[str, Tensor]:
        """torchvision computes its losses inside the network (RPN/RoI sampling need the
        targets there), so :meth:`predict` in training already returns them."""
        return {k: v for k, v in outputs.items() if v.dim() == 0}

    def postprocess(
        self, outputs: dict[str, Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """torchvision's own decode + score threshold + NMS + top-k; labels shifted back."""
        m = self.model
        if self.kind == "rcnn":
            counts = outputs["proposal_counts"].tolist()
            boxes, scores, labels = m.roi_heads.postprocess_detections(
                outputs["class_logits"],
                outputs["box_regression"],
                list(outputs["proposals"].split(counts)),
                image_sizes,
            )
            dets = [
                {"boxes": b, "scores": s, "labels": lab}
                for b, s, lab in zip(boxes, scores, labels, strict=True)
            ]
        else:
            anchors = list(outputs["anchors"].unbind(0))
            head = {k: v for k, v in outputs.items() if k not in ("anchors", "anchors_per_level")}
            if self.kind == "ssd":
                dets = m.postprocess_detections(head, anchors, image_sizes)
            else:
                split = outputs["anchors_per_level"].tolist()
                dets = m.postprocess_detections(
                    {k: list(v.split(split, dim=1)) for k, v in head.items()},
                    [list(a.split(split)) for a in anchors],
                    image_sizes,
                )
        out = []
        for d in dets:
            keep = d["labels"] > 0  # label 0 is background / reserved
            out.append(
                {
                    "boxes": d["boxes"][keep],
                    "scores": d["scores"][keep],
                    "labels": d["labels"][keep] - 1,
                }
            )
        return out

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        """Anchors per image (RPN anchors for R-CNN, locations for FCOS) at ``(H, W)``."""
        p = next(self.parameters())
        x = torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                maps = list(self._features(x).values())
                return int(
                    self._anchor_generator()(ImageList(x, [tuple(image_size)]), maps)[0].shape[0]
                )
        finally:
            self.train(was_training)

    @contextlib.contextmanager
    def flop_count_mode(self):
        """Exactly ``num_proposals`` RoIs per image: no RPN NMS, score or size filtering."""
        if self.kind != "rcnn":
            yield
            return
        rpn = self.model.rpn
        saved = rpn.nms_thresh, rpn.score_thresh, rpn.min_size
        rpn.nms_thresh, rpn.score_thresh, rpn.min_size = 1.0, 0.0, 0.0
        try:
            yield
        finally:
            rpn.nms_thresh, rpn.score_thresh, rpn.min_size = saved
