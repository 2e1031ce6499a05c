"""Inference fast paths: batch-norm folding, channels_last and ``torch.compile``.

:func:`prepare_inference` returns the model a job times: a copy of the trained detector with
the fast paths of the ``bench`` settings applied (the job's own model, its training state
and the FLOP / memory probes are untouched). Each fast path is a ``bench`` option; the ones
that never change outputs beyond float tolerance are on by default (docs/measurement.md,
"Fast paths", has the measured speed-ups):

* ``fold_bn`` (default on): every eval-mode batch norm that directly follows a convolution
  is folded into the convolution's weights and bias (``W' = W * g / sqrt(v + eps)``,
  ``b' = (b - m) * g / sqrt(v + eps) + beta``; DSSD, Fu et al. 2017, reports 1.2-1.5x).
  Pairs are found by tracing one forward pass with module hooks and a
  ``TorchFunctionMode`` that counts reads of every tensor, not with ``torch.fx``: a pair is
  a ``Conv2d`` called once whose output tensor is the input of a batch norm and is read by
  no other operation (a residual ``+`` reading it too would make folding wrong). The folded model's ``predict`` outputs are checked against the original's; if
  they differ beyond tolerance, the copy is discarded and the note says so.
* ``channels_last`` (default off, so results stay comparable with earlier sweeps; it gave
  1.1-1.25x on the dev CPU, docs/speed.md): NHWC weights; the input is converted in
  preprocessing (:func:`~.latency.timed_call`).
* ``inference_mode`` (default on): :func:`torch.inference_mode` instead of ``no_grad``
  (applied by the latency code).
* ``backend=compile`` (``compile: true`` is its old spelling): ``torch.compile`` of
  ``predict``. Compilation happens on the first call; if it fails the uncompiled model is
  used and the error is recorded.
* ``backend=onnxruntime`` (and ``onnxruntime_tensorrt``): ``predict`` of the (folded) copy
  exported to ONNX and run by ONNX Runtime (:mod:`.runtime`), batch norms always folded
  first. An export failure raises: a runtime job never times eager in its place.

Batch norms understood: :class:`torch.nn.BatchNorm2d` (eval mode, with running statistics)
and anything with ``weight``, ``bias``, ``running_mean``, ``running_var`` and ``eps`` whose
class name contains ``BatchNorm`` (torchvision's and timm's ``FrozenBatchNorm2d``). timm's
``BatchNormAct2d`` (norm + activation in one module) is replaced by its activation.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from benchmark.device import Device
from benchmark.measure.runtime import OnnxPredict
from benchmark.measure.settings import RUNTIME_BACKENDS, BenchSettings

__all__ = ["fold_batchnorm", "outputs_close", "prepare_inference"]

# Folding reorders float operations; deeper networks accumulate more rounding.
FOLD_RTOL = 1e-4


def _is_batchnorm(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.running_mean is not None and not m.training
    return "BatchNorm" in type(m).__name__ and all(
        isinstance(getattr(m, a, None), Tensor)
        for a in ("weight", "bias", "running_mean", "running_var")
    )


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) = x * scale + shift`` (eval statistics)."""
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bias - bn.running_mean * scale


def _fold_into(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold ``bn`` into ``conv`` in place (``conv`` gains a bias if it had none)."""
    with torch.no_grad():
        scale, shift = _bn_affine(bn)
        w = conv.weight
        conv.weight.copy_(w * scale.to(w).view(-1, *([1] * (w.dim() - 1))))
        old_bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        new_bias = old_bias.to(scale) * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(w), requires_grad=w.requires_grad)
        else:
            conv.bias.copy_(new_bias)


def _replacement(bn: nn.Module) -> nn.Module:
    """What stays of a folded norm: nothing, or the activation a norm+act module carries."""
    act = getattr(bn, "act", None)
    if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
        drop = getattr(bn, "drop", None)
        return nn.Sequential(drop, act) if isinstance(drop, nn.Module) else act
    return nn.Identity()


# Tensor metadata reads: not a use of the values.
_META_FUNCS = {"__get__", "dim", "size", "numel", "stride", "is_floating_point", "is_contiguous"}


class _CountUses(TorchFunctionMode):
    """Counts, per tensor id, the torch operations (modules' and functional ones, such as a
    residual ``+``) that read the tensor's values."""

    def __init__(self, uses: dict[int, int]):
        super().__init__()
        self.uses = uses
        self.keep: list[Tensor] = []  # ids of freed tensors would be reused: keep them alive

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _META_FUNCS:
            for a in (*args, *kwargs.values()):
                if isinstance(a, Tensor):
                    self.uses[id(a)] = self.uses.get(id(a), 0) + 1
                    self.keep.append(a)
        out = func(*args, **kwargs)
        self.keep.append(out)
        return out


def _trace_pairs(model: nn.Module, run) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` pairs where the BN's input is the conv's own output and no
    other operation reads that output, from one traced forward ``run()``."""
    uses: dict[int, int] = {}
    conv_out: dict[int, str] = {}  # id(output tensor) -> conv name
    conv_calls: dict[str, int] = {}
    consumers: dict[int, list[str]] = {}  # id(tensor) -> modules that took it as input
    keep: list[Tensor] = []  # hold the tensors so ids stay unique while tracing
    handles = []
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if isinstance(m, nn.Conv2d):

            def post(mod, inp, out, name=name):
                conv_calls[name] = conv_calls.get(name, 0) + 1
                if isinstance(out, Tensor):
                    conv_out[id(out)] = name
                    keep.append(out)

            handles.append(m.register_forward_hook(post))
        if len(m._modules) == 0 or _is_batchnorm(m):  # leaves (and BN+act modules)

            def pre(mod, inp, name=name):
                for t in inp:
                    if isinstance(t, Tensor):
                        consumers.setdefault(id(t), []).append(name)
                        keep.append(t)

            handles.append(m.register_forward_pre_hook(pre))
    try:
        with _CountUses(uses):
            run()
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for tid, conv in conv_out.items():
        users = consumers.get(tid, [])
        if conv_calls.get(conv) != 1 or len(users) != 1 or uses.get(tid) != 1:
            continue
        bn = modules[users[0]]
        if _is_batchnorm(bn) and bn.running_mean.numel() == modules[conv].out_channels:
            pairs.append((conv, users[0]))
    return pairs


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = new


def fold_batchnorm(model: nn.Module, run) -> int:
    """Fold every traced Conv2d -> BatchNorm pair of an eval-mode ``model`` in place.

    Args:
        model: in eval mode (training-mode BN normalizes with batch statistics: not foldable).
        run: a callable running one forward pass of ``model`` (e.g. ``predict`` on one image).

    Returns:
        The number of batch norms folded.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model")
    with torch.no_grad():
        pairs = _trace_pairs(model, run)
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _fold_into(model.get_submodule(conv_name), bn)
        _set_submodule(model, bn_name, _replacement(bn))
    return len(pairs)


def _flat_tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in _flat_tensors(x[k])]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _flat_tensors(v)]
    return []


def outputs_close(a: Any, b: Any, rtol: float = FOLD_RTOL) -> bool:
    """Same structure and shapes, and every floating tensor within ``rtol * max|b|`` of ``b``."""
    ta, tb = _flat_tensors(a), _flat_tensors(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape:
            return False
        if x.is_floating_point():
            scale = float(y.abs().max()) if y.numel() else 0.0
            if y.numel() and float((x.float() - y.float()).abs().max()) > rtol * max(scale, 1e-6):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def prepare_inference(
    model: nn.Module,
    settings: BenchSettings,
    device: Device,
    example: list[Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to time, with the fast paths of ``settings``.

    Args:
        model: a :class:`~models.meta_arch.base.DetectionModel` (or a torchvision wrapper).
        settings: the ``bench`` settings (``fold_bn``, ``channels_last``, ``compile``).
        device: where it runs.
        example: images ``[3, H, W]`` in [0, 1] to trace and check on (default one random
            image of 224 px; a job passes a validation image).

    Returns:
        ``(model, notes)``: ``model`` itself when no fast path changes weights or modules,
        else an eval-mode copy; ``notes`` holds ``fold_bn_folded`` (batch norms folded, 0 if
        reverted), ``fold_bn_note``, ``compiled`` and ``compile_error``.
    """
    notes: dict[str, Any] = {
        "fold_bn_folded": 0,
        "fold_bn_note": None,
        "compiled": False,
        "compile_error": None,
    }
    model.eval()
    runtime = settings.backend in RUNTIME_BACKENDS
    if not (settings.fold_bn or settings.channels_last or settings.compile or runtime):
        return model, notes
    if example is None:
        example = [torch.rand(3, 224, 224, device=device.torch_device)]
    fast = copy.deepcopy(model).eval()

    def predict(m: nn.Module):
        x = m.preprocess(list(example)).tensor
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return m.predict(x)

    if settings.channels_last:
        fast.to(memory_format=torch.channels_last)
    # A runtime export is always folded: ONNX Runtime fuses Conv+BN in its own graph anyway,
    # and torch.export cannot trace a batch norm over the two-stage family's per-RoI batch,
    # whose size is data-dependent.
    if settings.fold_bn or runtime:
        with torch.inference_mode():
            reference = predict(fast)
            n = fold_batchnorm(fast, lambda: predict(fast))
            if n and not outputs_close(predict(fast), reference):
                notes["fold_bn_note"] = f"reverted: outputs of {n} folded batch norms differ"
                fast = copy.deepcopy(model).eval()
                if settings.channels_last:
                    fast.to(memory_format=torch.channels_last)
            else:
                notes["fold_bn_folded"] = n
    if settings.compile:
        eager = fast.predict
        try:
            fast.predict = torch.compile(eager)
            with torch.inference_mode():
                predict(fast)  # compiles now, so a failure falls back here, not mid-timing
            notes["compiled"] = True
        except Exception as e:  # any backend error: time the eager model instead
            fast.predict = eager
            notes["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    if runtime:
        runner = OnnxPredict(fast, settings.backend, device)
        runner.add_shape(fast.preprocess(list(example)).tensor)
        fast.predict = runner
    return fast, notes
