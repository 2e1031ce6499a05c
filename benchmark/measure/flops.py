"""FLOPs of ``predict`` with :class:`torch.utils.flop_counter.FlopCounterMode`, reported as GMACs.

Convention (Huang et al. 2017 and torchvision's ``_ops`` metadata): multiply-adds of the
contraction operators - convolutions, ``mm``/``addmm``/``bmm``/``baddbmm``, attention - plus
RoIAlign and PS-RoIAlign, whose formulas are registered here. Element-wise operations,
normalization, activations, pooling, resizing and NMS are not counted. ``FlopCounterMode``
reports FLOPs = 2 x MACs for every formula, so ``gmacs = flops / 2 / 1e9``.

``gmacs_extractor``, ``gmacs_neck`` and ``gmacs_head`` split ``gmacs`` by part: the model's
``cost_parts()`` names the extractor's and the neck's modules; forward hooks on them read the
counter's running total before and after each call, so a part gets exactly what ran inside
it, and the head is the rest of ``predict`` (prediction heads; for two-stage detectors the
RPN, RoIAlign and the box classifier, including the extractor's last stage run on the crops).
The three add up to ``gmacs``.

``gmacs_conv`` is the convolutions alone (``aten.convolution``): the part of the count that
does not depend on how many RoIs reach a linear box head, and what torchvision's published
``_ops`` are for its MobileNet Faster R-CNNs (docs/measurement.md, "Cross-check").

Two-stage hook (the contract for ``models/meta_arch/two_stage.py``). A detector whose
second stage runs a data-dependent number of RoIs defines:

* ``num_proposals: int`` - RoIs per image at test time, as configured;
* ``flop_count_mode() -> ContextManager`` - while it is active, ``predict`` must run the
  second stage on exactly ``num_proposals`` RoIs per image: keep the top ``num_proposals``
  proposals by objectness without NMS or score thresholds (repeating proposals when there
  are fewer candidates), so the count does not depend on what random weights proposed.

:func:`count_predict` enters ``model.flop_count_mode()`` when it exists and records
``flops_num_proposals``; models without it (one-stage) are counted as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision  # noqa: F401  (registers the torch.ops.torchvision operators)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

# An operator whose name has one of these tokens does arithmetic worth counting; if it ran
# without a formula, the count is incomplete and the result says so. Element-wise, reduction
# and data-movement operators are excluded on purpose (the convention above).
_CONTRACTION_TOKENS = frozenset(
    {
        "conv",
        "conv1d",
        "conv2d",
        "conv3d",
        "convolution",
        "mm",
        "bmm",
        "addmm",
        "baddbmm",
        "addbmm",
        "matmul",
        "linear",
        "einsum",
        "dot",
        "vdot",
        "mv",
        "addmv",
        "addr",
        "tensordot",
        "attention",
        "roi",
        "deform",
        "lstm",
        "gru",
        "rnn",
    }
)
# The parts ``gmacs`` is split into (``gmacs_<part>`` result keys).
PARTS = ("extractor", "neck", "head")
# Bilinear interpolation reads 4 neighbours and weights each: 4 multiply-adds per sample.
BILINEAR_MACS = 4


def _roi_grid(
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> int:
    """Sampling points per bin summed over RoIs: ``sum_k grid_h_k * grid_w_k``.

    A positive ``sampling_ratio`` S gives S x S points per bin; otherwise torchvision's
    adaptive grid ``ceil(roi_h / pooled_h) x ceil(roi_w / pooled_w)`` per RoI (RoI size in
    feature-map cells, at least 1 when not ``aligned``), computed from the actual boxes.
    """
    k = rois.shape[0]
    if sampling_ratio > 0:
        return k * sampling_ratio * sampling_ratio
    if k == 0:
        return 0
    boxes = rois[:, 1:5].float() * spatial_scale
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    if not aligned:
        h, w = h.clamp(min=1.0), w.clamp(min=1.0)
    gh = torch.ceil(h / pooled_h).clamp(min=1)
    gw = torch.ceil(w / pooled_w).clamp(min=1)
    return int((gh * gw).sum().item())


def roi_align_macs(
    input_shape,
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool = False,
    out_channels: int | None = None,
) -> int:
    """Multiply-adds of RoIAlign: ``sum_RoIs C_out * ph * pw * grid_points * 4``.

    Each output element of ``[K, C_out, ph, pw]`` averages ``grid_points`` bilinear samples of
    4 multiply-adds each. The interpolation weights are shared across channels and not counted.
    PS-RoIAlign has ``C_out = C_in / (ph * pw)`` (each bin reads its own channel group).
    """
    c = input_shape[1] if out_channels is None else out_channels
    points = _roi_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    return c * pooled_h * pooled_w * points * BILINEAR_MACS


def _register_roi_formulas() -> None:
    """Register FLOP formulas (2 x MACs, the counter's unit) for torchvision's RoI operators."""
    ops = torch.ops.torchvision

    if ops.roi_align not in flop_registry:

        @register_flop_formula(ops.roi_align, get_raw=True)
        def _roi_align_flop(
            input,
            rois,
            spatial_scale,
            pooled_height,
            pooled_width,
            sampling_ratio,
            aligned,
            *args,
            out_val=None,
            **kwargs,
        ) -> int:
            return 2 * roi_align_macs(
                input.shape,
                rois,
                spatial_scale,
                pooled_height,
                pooled_width,
                sampling_ratio,
                aligned,
            )

    if ops.ps_roi_align not in flop_registry:

        @register_flop_formula(ops.ps_roi_align, get_raw=True)
        def _ps_roi_align_flop(
            input,
            rois,
            spatial_scale,
            pooled_height,
            pooled_width,
            sampling_ratio,
            *args,
            out_val=None,
            **kwargs,
        ) -> int:
            c_out = input.shape[1] // (pooled_height * pooled_width)
            # PS-RoIAlign in torchvision is not "aligned" (no half-pixel offset).
            return 2 * roi_align_macs(
                input.shape,
                rois,
                spatial_scale,
                pooled_height,
                pooled_width,
                sampling_ratio,
                False,
                out_channels=c_out,
            )


_register_roi_formulas()


def _is_convolution(op_name: str) -> bool:
    """``aten.convolution`` (what every ``nn.Conv*`` and ``F.conv*`` dispatches to), its
    variants ``aten._convolution``, ``aten.conv2d``...; not ``conv_tbc`` or the backward."""
    name = op_name.split(".", 1)[-1].split(".", 1)[0].lstrip("_")
    return name in ("convolution", "conv1d", "conv2d", "conv3d", "conv_transpose2d")


def _is_contraction(op_name: str) -> bool:
    """``aten._slow_conv2d_forward`` -> True; ``aten.add`` / ``prims.convert_element_type`` -> False."""
    name = op_name.split(".", 1)[-1].split(".", 1)[0]
    return bool(_CONTRACTION_TOKENS & set(name.lower().split("_")))


class _Counter(FlopCounterMode):
    """FlopCounterMode that also records the operators that ran without a formula.

    ``_count_flops`` is called for every operator that was neither decomposed nor skipped,
    i.e. exactly those that executed under the counter, so "not in the registry" there means
    "ran and added zero".
    """

    def __init__(self):
        super().__init__(display=False)
        self.no_formula: set[str] = set()

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet not in self.flop_registry:
            self.no_formula.add(str(func_packet))
        return super()._count_flops(func_packet, out, args, kwargs)


@dataclass
class FlopReport:
    """What the counter saw.

    Attributes:
        gmacs: multiply-adds / 1e9.
        by_op: GMACs per operator (``aten.convolution``, ``torchvision.roi_align``...).
        gmacs_conv: the convolutions' share of ``gmacs`` (``aten.convolution``).
        uncounted_ops: contraction-like operators that ran but have no formula (their
            cost is missing from ``gmacs``); empty when the count is complete.
        num_proposals: RoIs per image the count was made at (two-stage hook), else None.
        by_part: GMACs of ``extractor``, ``neck`` and ``head`` (summing to ``gmacs``) when
            the model declares ``cost_parts()``, else empty.
    """

    gmacs: float
    by_op: dict[str, float] = field(default_factory=dict)
    uncounted_ops: list[str] = field(default_factory=list)
    num_proposals: int | None = None
    by_part: dict[str, float] = field(default_factory=dict)

    @property
    def gmacs_conv(self) -> float:
        return sum(v for op, v in self.by_op.items() if _is_convolution(op))


@contextlib.contextmanager
def _part_hooks(counter: FlopCounterMode, parts: dict[str, list[nn.Module]]):
    """Attribute the counter's FLOPs to ``parts`` while active; yields part -> FLOPs.

    A pre-hook notes the running total when a module of a part is entered, the hook adds the
    difference when it returns. Every submodule is hooked too, since a container may be
    iterated rather than called (torchvision's SSDlite runs ``for block in self.features``);
    nested calls within a part are counted once, at the outermost.
    """
    totals = dict.fromkeys(parts, 0)
    depth = dict.fromkeys(parts, 0)
    start = {}
    handles = []

    def enter(name):
        def hook(module, args):
            if depth[name] == 0:
                start[name] = counter.get_total_flops()
            depth[name] += 1

        return hook

    def leave(name):
        def hook(module, args, output):
            depth[name] -= 1
            if depth[name] == 0:
                totals[name] += counter.get_total_flops() - start[name]

        return hook

    try:
        for name, modules in parts.items():
            for module in {id(m): m for top in modules for m in top.modules()}.values():
                handles.append(module.register_forward_pre_hook(enter(name)))
                handles.append(module.register_forward_hook(leave(name)))
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def _count(fn, *args, parts: dict[str, list[nn.Module]] | None = None) -> FlopReport:
    with torch.inference_mode(), _Counter() as counter, _part_hooks(counter, parts or {}) as by:
        fn(*args)
    by_op: dict[str, float] = defaultdict(float)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op)] += flops / 2e9
    total = counter.get_total_flops()
    by_part = {}
    if parts:
        by_part = {name: flops / 2e9 for name, flops in by.items()}
        by_part["head"] = (total - sum(by.values())) / 2e9
    return FlopReport(
        gmacs=total / 2e9,
        by_op=dict(by_op),
        uncounted_ops=sorted(op for op in counter.no_formula if _is_contraction(op)),
        by_part=by_part,
    )


def count_predict(model: nn.Module, images: Tensor) -> FlopReport:
    """Count ``model.predict(images)`` in eval mode, at the fixed proposal count if the model
    implements the two-stage hook (module docstring).

    Args:
        images: ``[B, 3, H, W]`` normalized (``model.preprocess(...).tensor``); for per-image
            GMACs pass B = 1.
    """
    model.eval()
    hook = getattr(model, "flop_count_mode", None)
    ctx = hook() if callable(hook) else contextlib.nullcontext()
    declared = getattr(model, "cost_parts", None)
    parts = declared() if callable(declared) else None
    with ctx:
        report = _count(model.predict, images, parts=parts)
    if callable(hook):
        report.num_proposals = getattr(model, "num_proposals", None)
    return report


def count_forward(model: nn.Module, images: list[Tensor]) -> FlopReport:
    """Count a torchvision-style eval ``forward`` (transform, network and postprocess): the
    convention torchvision's ``_ops`` metadata was produced with."""
    model.eval()
    return _count(model, images)


def flop_keys(report: FlopReport | None) -> dict[str, Any]:
    """The result keys (all None when FLOPs were not counted)."""
    if report is None:
        return dict.fromkeys(
            ("gmacs", "gmacs_conv", "gmacs_by_op", "flops_uncounted_ops", "flops_num_proposals")
            + tuple(f"gmacs_{part}" for part in PARTS)
        )

    def finite(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    return {
        "gmacs": finite(report.gmacs),
        "gmacs_conv": finite(report.gmacs_conv),
        **{f"gmacs_{part}": finite(report.by_part.get(part)) for part in PARTS},
        "gmacs_by_op": report.by_op,
        "flops_uncounted_ops": report.uncounted_ops,
        "flops_num_proposals": report.num_proposals,
    }
