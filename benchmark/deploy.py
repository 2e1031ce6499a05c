"""A job's runtime backend (``bench.backend=onnxruntime``): export, parity, then timing.

Called by :func:`benchmark.job._run` after training and evaluation, before the timing lock:

1. the timed copy is prepared as for eager (BN folding) and its ``predict`` exported to
   ONNX and loaded in the runtime (:mod:`benchmark.measure.runtime`);
2. its outputs are compared to the eager model's (:mod:`benchmark.measure.parity`), and when
   the job evaluates, its own COCO AP is computed on the validation set (``parity_map``);
3. beyond a tolerance the job fails (:class:`~benchmark.measure.parity.ParityError`, the
   numbers recorded), else the prepared copy is what :func:`benchmark.measure.measure` times.

FLOPs and memory stay those of the PyTorch model (ONNX Runtime reports neither).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from benchmark.device import Device
from benchmark.evaluate import coco_metrics, predict_dataset
from benchmark.measure.fastpath import prepare_inference
from benchmark.measure.latency import load_images
from benchmark.measure.parity import ParityError, compare_outputs, parity_failures
from benchmark.measure.runtime import backend_version
from benchmark.measure.settings import BenchSettings
from models.errors import IncompatibleConfigError

__all__ = ["prepare_runtime"]
log = logging.getLogger("detbench")


def prepare_runtime(
    model: nn.Module,
    data: Any,
    settings: BenchSettings,
    device: Device,
    *,
    eager_map: float | None,
    evaluate: bool,
    progress: bool = False,
) -> tuple[tuple[nn.Module, dict[str, Any]], dict[str, Any]]:
    """Export the job's model to its runtime and check parity.

    Args:
        model: the job's (trained) eval-mode detector.
        data: the job's data (``val``, ``val_coco``, ``label_to_category_id``).
        settings: the bench settings (``backend``, ``parity_*``).
        device: where the runtime runs.
        eager_map: the eager model's ``map`` when the job evaluated, else None.
        evaluate: compute ``parity_map`` on the validation set (the job evaluates).

    Returns:
        ``(prepared, keys)``: the timed copy with its fast-path notes (for
        :func:`benchmark.measure.measure`) and the result keys (``backend``,
        ``backend_version``, ``parity_*``).

    Raises:
        ParityError: outputs or AP beyond tolerance; its ``keys`` hold the numbers.
    """
    model.eval()
    shapes = _input_shapes(model, data.val, device)
    if len(shapes) > settings.runtime_max_shapes:
        raise IncompatibleConfigError(
            f"bench.backend={settings.backend} exports one static graph per input shape and the "
            f"validation images give {len(shapes)} shapes at batch 1 "
            f"(bench.runtime_max_shapes={settings.runtime_max_shapes})"
        )
    fast, notes = prepare_inference(model, settings, device, load_images(data.val, 1, device))
    for example in shapes.values():  # every shape the job runs, exported before any timing
        fast.predict.add_shape(example)
    keys: dict[str, Any] = {
        "backend": settings.backend,
        "backend_version": backend_version(settings.backend),
        **fast.predict.result_keys(),
        **compare_outputs(model, fast, data.val, device, settings),
        "parity_map": None,
    }
    if evaluate:
        detections = predict_dataset(
            fast,
            data.val,
            data.label_to_category_id,
            device.torch_device,
            batch_size=1,  # the exported graph's shape
            progress=progress,
        )
        keys["parity_map"] = coco_metrics(data.val_coco, detections)[0]["map"]
    problems = parity_failures(keys, eager_map)
    if problems:
        raise ParityError(
            f"{settings.backend} does not reproduce eager PyTorch: " + "; ".join(problems), keys
        )
    log.info(
        "%s parity: boxes %.2g px, scores %.2g, AP %s",
        settings.backend,
        keys["parity_max_abs_diff"]["boxes"],
        keys["parity_max_abs_diff"]["scores"],
        keys["parity_map"],
    )
    return (fast, notes), keys


def _input_shapes(model: nn.Module, dataset: Any, device: Device) -> dict[tuple, Any]:
    """``{shape: one preprocessed batch of it}`` over the validation images at batch 1 (the
    two-stage family resizes the shorter side: portrait and landscape images differ)."""
    shapes: dict[tuple, Any] = {}
    with torch.inference_mode():
        for i in range(len(dataset)):
            x = model.preprocess(load_images(dataset, 1, device, start=i)).tensor
            shapes.setdefault(tuple(x.shape), x)
    return shapes
