"""Side by side: our detectors against torchvision's on identical architectures.

    python -m benchmark.compare [--pairs NAME ...] [--repeats N] [--threads T] [--json PATH]

Every pair is timed on the same machine, the same input images, thread count and precision,
in *alternating paired runs*: repeat ``r`` times ours then torchvision's (the order flips
every repeat) on the same input, so a load change on a shared machine hits both members of a
pair alike; the reported ratio is the median of the per-repeat ratios ours / torchvision.

Tasks:
    * ``inference``: batch 1, eval mode, end to end (preprocess + predict + postprocess with
      decode and NMS), through :func:`benchmark.measure.latency.timed_call`, the call a job
      times, with the inference fast paths of the ``bench`` defaults
      (:func:`benchmark.measure.fastpath.prepare_inference`) applied to *both* models.
    * ``train_step``: forward with targets, loss, backward and one SGD step at a fixed batch.

torchvision's detectors run through :class:`models.meta_arch.torchvision_ref.TorchvisionDetector`,
the same wrapper jobs use: its ``preprocess`` normalizes and pads but skips the transform's
resize (a no-op at these sizes that would still cost an interpolation), which favours
torchvision slightly.

Pairs (``num_classes`` 20 + background on both sides; random weights, no downloads):
    * ``ssd300_vgg16``: our ``+preset=ssd300`` against ``ssd300_vgg16`` at 300 px. Same
      layers (reduced VGG-16, L2Norm, four extra layers without BN, 3x3 heads, 8732 boxes).
    * ``ssdlite320_mobilenet_v3_large``: SSD over torchvision's MobileNetV3-Large
      (:class:`models.extractors.TorchvisionMobileNetV3`: reduced tail, SSDLite's taps) with
      SSDLite extra layers and separable heads, against ``ssdlite320_mobilenet_v3_large`` at
      320 px. Same layers (parameters and GMACs equal); see :data:`DIFFERENCES`.
    * ``faster_rcnn_resnet50_c4``: our Faster R-CNN over ResNet-50 (frozen BN, C4: RPN on
      ``c4``, 14x14 RoIAlign, 2x2 max-pool, ``layer4`` as box head) against torchvision's
      ``FasterRCNN`` built with the same trunk (``conv1`` .. ``layer3``), RPN (12 anchors of the
      same sizes, 1024-wide 3x3 conv, 1000 pre-NMS / 300 post-NMS, IoU 0.7), RoI settings
      (64 RoIs at 25 %, IoU 0.5) and box head (max-pool 2 + ``layer4`` + average pool), 320 px.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.device import Device
from benchmark.measure.fastpath import prepare_inference
from benchmark.measure.latency import timed_call
from benchmark.measure.settings import BenchSettings

NUM_CLASSES = 20  # VOC: the papers' SSD setting; both sides get 20 + background

DIFFERENCES = {
    "ssd300_vgg16": "none in the layers; torchvision loops over classes in postprocess",
    "ssdlite320_mobilenet_v3_large": (
        "none in the layers (torchvision's MobileNetV3-Large with the reduced tail, c4 = the "
        "672-channel expansion of block 13, c5 = the 480-channel last conv; SSDLite extra "
        "layers [512, 256, 256, 128]; separable heads; 3234 boxes; same parameter count and "
        "GMACs); our extra layers and heads use BatchNorm eps 1e-5 (torchvision 1e-3); "
        "postprocess: ours keeps the 300 best (box, class) pairs over all classes, torchvision "
        "300 per class"
    ),
    "faster_rcnn_resnet50_c4": (
        "RoIAlign aligned=True (ours) vs False; torchvision's box predictor has C + 1 box "
        "classes, ours C; torchvision's RPN gets our coder weights (10, 10, 5, 5) and both "
        "sides share the trunk, RPN and layer4 weights (so they keep the same proposals)"
    ),
}


@dataclass(frozen=True)
class PairSpec:
    """One comparison: how to build both sides, at which size and training batch."""

    image_size: int
    train_batch: int
    overrides: tuple[str, ...]
    build_torchvision: Callable[[nn.Module, int, int], nn.Module]


def _tv_ssd300(ours: nn.Module, num_classes: int, size: int) -> nn.Module:
    from models.meta_arch.torchvision_ref import TorchvisionDetector

    return TorchvisionDetector(name="ssd300_vgg16", num_classes=num_classes, image_size=size)


def _tv_ssdlite(ours: nn.Module, num_classes: int, size: int) -> nn.Module:
    from models.meta_arch.torchvision_ref import TorchvisionDetector

    return TorchvisionDetector(
        name="ssdlite320_mobilenet_v3_large", num_classes=num_classes, image_size=size
    )


def _tv_faster_rcnn_c4(ours: nn.Module, num_classes: int, size: int) -> nn.Module:
    """torchvision's ``FasterRCNN`` with ResNet-50 C4 and ``ours``' RPN / RoI settings."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    from models.meta_arch.torchvision_ref import TorchvisionDetector

    r = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    trunk = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
    trunk.out_channels = 1024
    rpn, roi = ours.rpn, ours.box_head
    head = roi.classifier
    box_head = nn.Sequential(
        nn.MaxPool2d(head.pool_kernel), r.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model = FasterRCNN(
        trunk,
        num_classes=None,
        min_size=size,
        max_size=size,
        # torchvision's aspect ratio is h / w, ours w / h: the same anchors in the same order
        # (up to torchvision's rounding to whole pixels) need the reciprocals.
        rpn_anchor_generator=AnchorGenerator(
            sizes=(tuple(rpn.anchor_sizes),),
            aspect_ratios=(tuple(1.0 / r for r in rpn.aspect_ratios),),
        ),
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk,
        rpn_pre_nms_top_n_test=rpn.pre_nms_topk,
        rpn_post_nms_top_n_train=ours.num_proposals_train,
        rpn_post_nms_top_n_test=ours.num_proposals,
        rpn_nms_thresh=rpn.nms_threshold,
        rpn_fg_iou_thresh=rpn.pos_threshold,
        rpn_bg_iou_thresh=rpn.neg_threshold,
        rpn_batch_size_per_image=rpn.batch_size,
        rpn_positive_fraction=rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=head.crop_size, sampling_ratio=1),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(2048, num_classes + 1),
        box_score_thresh=ours.score_threshold,
        box_nms_thresh=ours.nms_threshold,
        box_detections_per_img=ours.max_detections,
        box_fg_iou_thresh=roi.fg_threshold,
        box_bg_iou_thresh=roi.fg_threshold,
        box_batch_size_per_image=roi.batch_size,
        box_positive_fraction=roi.positive_fraction,
        bbox_reg_weights=tuple(roi.coder.weights),
    )
    # Same RPN coder as ours, and our weights: with random weights the number of proposals
    # that survive NMS depends on the weights, so identical weights give both sides the same
    # second-stage work (same RoIs up to RoIAlign's half-pixel alignment).
    model.rpn.box_coder = BoxCoder(tuple(rpn.coder.weights))
    copy_weights(ours.extractor, trunk)
    copy_weights(head.stage, r.layer4)
    copy_weights(rpn.head, model.rpn.head)
    return TorchvisionDetector(
        name="FasterRCNN(resnet50 C4)", num_classes=num_classes, image_size=size, model=model
    )


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s state into ``dst`` tensor by tensor, in registration order.

    For the same architecture under different module names (timm vs torchvision ResNet);
    raises if the count or any shape differs.
    """
    a, b = list(src.state_dict().values()), dst.state_dict()
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b.values(), strict=True)):
        raise ValueError(f"{type(src).__name__} and {type(dst).__name__} do not match")
    dst.load_state_dict(dict(zip(b, a, strict=True)))


_SSDLITE_HEAD = [
    "+meta_arch.head._target_=models.heads.ssd_head.SSDHead",
    "+meta_arch.head._partial_=true",
    "+meta_arch.head.separable=true",
]

PAIRS: dict[str, PairSpec] = {
    "ssd300_vgg16": PairSpec(300, 2, ("+preset=ssd300",), _tv_ssd300),
    "ssdlite320_mobilenet_v3_large": PairSpec(
        320,
        4,
        (
            "extractor=mobilenet_v3_large_tv",  # torchvision's layers, taps and reduced tail
            "meta_arch.neck.in_features=[c4,c5]",
            "meta_arch.neck.depths=[512,256,256,128]",
            "+meta_arch.neck.separable=true",
            "meta_arch.neck.activation=relu6",
            "meta_arch.aspect_ratios=[2,3]",
            "meta_arch.min_scale=0.2",  # torchvision's SSDLite settings
            "meta_arch.score_threshold=0.001",
            "meta_arch.nms_threshold=0.55",
            "meta_arch.pre_nms_topk=300",
            "meta_arch.max_detections=300",
            *_SSDLITE_HEAD,
        ),
        _tv_ssdlite,
    ),
    "faster_rcnn_resnet50_c4": PairSpec(
        320,
        2,
        (
            "meta_arch=faster_rcnn",
            "extractor=resnet50",
            "extractor.frozen_bn=true",
            "+meta_arch.rpn.channels=1024",  # torchvision's RPNHead keeps the input width
        ),
        _tv_faster_rcnn_c4,
    ),
}


def build_pair(
    name: str, *, image_size: int | None = None, seed: int = 0
) -> tuple[nn.Module, nn.Module, int]:
    """Build ``(ours, torchvision's, image_size)`` for a pair of :data:`PAIRS` (random weights)."""
    from hydra import compose, initialize_config_module

    from benchmark.build import build_detector

    spec = PAIRS[name]
    size = int(image_size or spec.image_size)
    with initialize_config_module(config_module="sweeps", version_base="1.3"):
        cfg = compose("config", overrides=[*spec.overrides, f"data.image_size={size}"])
    torch.manual_seed(seed)
    ours = build_detector(cfg, num_classes=NUM_CLASSES)
    torch.manual_seed(seed)
    tv = spec.build_torchvision(ours, NUM_CLASSES, size)
    return ours, tv, size


def make_inputs(
    n: int, size: int, *, seed: int = 0, boxes_per_image: int = 3
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``n`` images ``[3, size, size]`` in [0, 1] and targets (``boxes [G, 4]`` xyxy pixels,
    ``labels [G]`` in ``0 .. NUM_CLASSES - 1``), the same for both sides of every pair."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(boxes_per_image, 2, generator=g) * size * 0.6
        wh = (0.1 + 0.3 * torch.rand(boxes_per_image, 2, generator=g)) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (boxes_per_image,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def check_detections(dets: Any, size: int) -> None:
    """Raise unless ``dets`` is one ``{boxes [N, 4] xyxy, scores [N], labels [N] int64}``
    per image, with boxes inside the image and labels in ``0 .. NUM_CLASSES - 1``."""
    if not isinstance(dets, list) or not dets:
        raise TypeError(f"expected a list of detections, got {type(dets).__name__}")
    for d in dets:
        b, s, lab = d["boxes"], d["scores"], d["labels"]
        n = b.shape[0]
        if b.shape != (n, 4) or s.shape != (n,) or lab.shape != (n,):
            raise ValueError(f"shapes {tuple(b.shape)}, {tuple(s.shape)}, {tuple(lab.shape)}")
        if lab.dtype != torch.int64 or not b.is_floating_point():
            raise ValueError(f"dtypes boxes {b.dtype}, labels {lab.dtype}")
        if n and not (
            (b[:, 2] >= b[:, 0]).all()
            and (b[:, 3] >= b[:, 1]).all()
            and b.min() >= 0
            and b.max() <= size
            and lab.min() >= 0
            and lab.max() < NUM_CLASSES
        ):
            raise ValueError("boxes are not xyxy inside the image, or labels out of range")


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, images, targets) -> None:
    losses = model(images, targets)
    sum(losses.values()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _paired(
    run: Callable[[str, int], float], repeats: int, warmup: int, bar
) -> dict[str, list[float]]:
    """Alternate ``run("ours", r)`` and ``run("torchvision", r)``; returns the timed samples."""
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for r in range(warmup + repeats):
        order = ("ours", "torchvision") if r % 2 == 0 else ("torchvision", "ours")
        t = {side: run(side, r) for side in order}
        if r >= warmup:
            for side in order:
                times[side].append(t[side])
        bar.update(1)
    return times


def _entry(pair: str, task: str, times: dict[str, list[float]]) -> dict[str, Any]:
    ratios = [o / t for o, t in zip(times["ours"], times["torchvision"], strict=True)]
    return {
        "pair": pair,
        "task": task,
        "ours_ms": statistics.median(times["ours"]),
        "torchvision_ms": statistics.median(times["torchvision"]),
        "ratio": statistics.median(ratios),
    }


def compare_pair(
    name: str,
    *,
    repeats: int,
    train_repeats: int,
    warmup: int = 2,
    image_size: int | None = None,
    train_batch: int | None = None,
    settings: BenchSettings | None = None,
    tasks: Sequence[str] = ("inference", "train_step"),
    bar=None,
) -> list[dict[str, Any]]:
    """Time one pair; returns one :func:`_entry` per task (plus ``notes`` of the fast paths)."""
    from tqdm.auto import tqdm

    device = Device.from_spec("cpu")
    settings = settings or BenchSettings()
    ours, tv, size = build_pair(name, image_size=image_size)
    spec = PAIRS[name]
    batch = int(train_batch or spec.train_batch)
    images, targets = make_inputs(max(repeats + warmup, batch), size)
    bar = bar or tqdm(total=0, disable=True)
    out = []
    if "inference" in tasks:
        models, notes = {}, {}
        for side, m in (("ours", ours), ("torchvision", tv)):
            models[side], notes[side] = prepare_inference(m.eval(), settings, device, images[:1])
        for m in models.values():  # same kind of output, or the comparison is void
            with torch.inference_mode():
                _, dets = timed_call(m, images[:1], device, settings)
            check_detections(dets, size)

        def infer(side: str, r: int) -> float:
            ctx = torch.inference_mode() if settings.inference_mode else torch.no_grad()
            with ctx:
                return timed_call(models[side], [images[r % len(images)]], device, settings)[0][
                    "end_to_end"
                ]

        entry = _entry(name, "inference", _paired(infer, repeats, warmup, bar))
        out.append({**entry, "notes": notes})
        del models
    if "train_step" in tasks:
        sides = {"ours": ours.train(), "torchvision": tv.train()}
        opts = {
            s: torch.optim.SGD(
                [p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9
            )
            for s, m in sides.items()
        }
        batch_images, batch_targets = images[:batch], targets[:batch]

        def step(side: str, r: int) -> float:
            with device.timer() as t:
                _train_step(sides[side], opts[side], batch_images, batch_targets)
            return t[0]

        out.append(_entry(name, "train_step", _paired(step, train_repeats, 1, bar)))
    return out


def format_table(entries: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the entries (times in ms, ratio = ours / torchvision)."""
    lines = [
        "| pair | task | ours (ms) | torchvision (ms) | ours / torchvision |",
        "|---|---|---:|---:|---:|",
    ]
    for e in entries:
        lines.append(
            f"| {e['pair']} | {e['task']} | {e['ours_ms']:.1f} | {e['torchvision_ms']:.1f} | "
            f"{e['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(
        prog="python -m benchmark.compare", description=__doc__.split("\n")[0]
    )
    p.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    p.add_argument("--repeats", type=int, default=9, help="paired inference runs (default 9)")
    p.add_argument("--train-repeats", type=int, default=5, help="paired training steps (5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed paired inference runs (2)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--image-size", type=int, default=None, help="override every pair's size")
    p.add_argument("--train-batch", type=int, default=None, help="override the training batch")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=["inference", "train_step"],
        default=["inference", "train_step"],
    )
    p.add_argument("--plain", action="store_true", help="no inference fast paths on either side")
    p.add_argument("--json", type=Path, default=None, help="write the entries to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchSettings()
    if args.plain:
        settings = dataclasses.replace(settings, fold_bn=False, channels_last=False)
    per_pair = (args.warmup + args.repeats) * ("inference" in args.tasks) + (
        1 + args.train_repeats
    ) * ("train_step" in args.tasks)
    entries: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tqdm(total=per_pair * len(args.pairs), desc="paired runs", unit="run") as bar:
        for name in args.pairs:
            bar.set_postfix_str(name)
            entries += compare_pair(
                name,
                repeats=args.repeats,
                train_repeats=args.train_repeats,
                warmup=args.warmup,
                image_size=args.image_size,
                train_batch=args.train_batch,
                settings=settings,
                tasks=args.tasks,
                bar=bar,
            )
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {Device.from_spec('cpu').name}, "
        f"{torch.get_num_threads()} thread(s), fp32, torch {torch.__version__}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(format_table(entries))
    for name in args.pairs:
        print(f"  {name}: differences: {DIFFERENCES[name]}")
    if args.json is not None:
        keys = ("pair", "task", "ours_ms", "torchvision_ms", "ratio")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{k: e[k] for k in keys} for e in entries], indent=2))
    return entries


if __name__ == "__main__":
    main()
