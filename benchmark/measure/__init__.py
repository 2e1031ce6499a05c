"""Measurement: the "speed" half of speed/accuracy. See docs/measurement.md for the protocol.

:func:`measure` runs every enabled measurement on a built (and possibly trained) detector and
returns flat result keys; each role lives in its own module:

* :mod:`.latency` - per-image end-to-end and stage times, cold call, percentiles, throughput;
* :mod:`.flops` - GMACs of ``predict`` with FlopCounterMode (+ RoIAlign formulas);
* :mod:`.memory` - inference and training-step peaks (CUDA allocator / fresh-process RSS);
* :mod:`.roofline` - the cached device peak and the fraction of it ``predict`` reaches;
* :mod:`.environment` - device, libraries, threads, precision, flags;
* :mod:`.runtime` and :mod:`.parity` - ``bench.backend``: ``predict`` exported to ONNX and
  run by ONNX Runtime, checked against eager before it is timed (``benchmark.deploy``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from benchmark import schema
from benchmark.device import Device
from benchmark.measure.environment import environment
from benchmark.measure.fastpath import prepare_inference
from benchmark.measure.flops import count_predict, flop_keys
from benchmark.measure.latency import load_images, measure_latency, measure_throughput
from benchmark.measure.memory import in_process_peaks
from benchmark.measure.memory_bound import memory_budget_mb
from benchmark.measure.memory_fresh import fresh_process_peaks
from benchmark.measure.roofline import device_peaks, roofline_keys
from benchmark.measure.runtime import OnnxPredict, backend_version
from benchmark.measure.settings import RUNTIME_BACKENDS, BenchSettings
from benchmark.results import write_json_atomic
from benchmark.spec import InputSpec, ModelRecipe

__all__ = ["BenchSettings", "measure", "SAMPLES_FILE"]
log = logging.getLogger(__name__)
SAMPLES_FILE = "latency_samples.json"
# The measurements whose keys (declared with ``probe=`` in benchmark/schema/keys.py) start
# null: a disabled or failing one leaves them so.
PROBES = ("latency", "throughput", "flops", "roofline", "memory")
LATENCY_KEYS = tuple(schema.names(probe="latency"))


def _weights_mb(model: nn.Module) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2.0**20


def measure(
    model: nn.Module,
    dataset: Dataset,
    settings: BenchSettings | Mapping[str, Any] | None,
    device: Device,
    *,
    input_spec: InputSpec,
    recipe: ModelRecipe | None = None,
    out_dir: str | Path | None = None,
    prepared: tuple[nn.Module, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the enabled measurements and return the flat result keys.

    Args:
        model: a :class:`~models.meta_arch.base.DetectionModel` on ``device``.
        dataset: validation set yielding ``(image [3, H, W] in [0, 1], target)``, resized.
        settings: the job's :class:`BenchSettings` (a ``bench`` mapping or None, for the
            defaults, is read with :meth:`BenchSettings.from_cfg`).
        device: where to measure.
        input_spec: the job's input; the memory probes run on ``input_spec.shape``.
        recipe: how to rebuild the model and its training step: the fresh memory process
            rebuilds from it, and the training-step probe uses its batch size (unless
            ``bench.train_batch_size``), precision and optimizer. Without it the CPU memory
            is measured in-process, the training step at batch 2 with SGD.
        prepared: the timed copy and its notes, already prepared (a runtime backend:
            :func:`benchmark.deploy.prepare_runtime` exported and checked it). Without it a
            runtime backend is exported here, with no parity check.

    Returns:
        Keys documented in docs/measurement.md. A measurement that raises leaves its keys
        null and adds ``measure_errors[name]``, so one broken probe does not discard the
        job's training and accuracy.
    """
    s = settings if isinstance(settings, BenchSettings) else BenchSettings.from_cfg(settings)
    if s.precision == "fp16" and not device.is_cuda:  # a config error: fail the job, say why
        raise ValueError("bench.precision=fp16 needs CUDA (autocast); use fp32 or bf16 on CPU")
    if s.num_threads:
        torch.set_num_threads(int(s.num_threads))
    model.to(device.torch_device).eval()
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    out: dict[str, Any] = {
        **schema.nulls(*PROBES),
        "weights_mb": _weights_mb(model),
        "flops_input_size": None,
        "channels_last": s.channels_last,
        "fold_bn": s.fold_bn,
        "inference_mode": s.inference_mode,
        "compile": s.compile,
        "fold_bn_folded": None,
        "fold_bn_note": None,
        "compiled": False,
        "compile_error": None,
        "backend": s.backend,
        "backend_version": backend_version(s.backend),
        "runtime_providers": None,
        "runtime_threads": None,
        "runtime_export_seconds": None,
    }
    # torchvision references ignore the configured extractor: record the backbone they run.
    if getattr(model, "reference_name", None):
        out.update(extractor=model.backbone_name, reference_model=model.reference_name)
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    samples: dict[str, Any] = {}

    def attempt(name: str, fn) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # recorded, not raised: see Returns
            log.error("measurement %r failed:\n%s", name, traceback.format_exc())
            errors[name] = f"{type(e).__name__}: {e}"
            return None
        finally:
            seconds[name] = time.perf_counter() - t0

    en = s.enabled
    # Latency and throughput time a copy with the inference fast paths (BN folding, compile);
    # FLOPs and memory keep the job's model.
    fast = model
    runtime = s.backend in RUNTIME_BACKENDS
    if prepared is not None:
        fast, notes = prepared
        out.update(notes)
    elif runtime and (en.latency or en.throughput):  # an export failure fails the job
        fast, notes = prepare_inference(model, s, device, load_images(dataset, 1, device))
        out.update(notes)
    elif en.latency or en.throughput:
        example = lambda: load_images(dataset, 1, device)  # noqa: E731
        r = attempt("fast_paths", lambda: prepare_inference(model, s, device, example()))
        if r:
            fast, notes = r
            out.update(notes)
    runner = fast.predict if isinstance(fast.predict, OnnxPredict) else None
    if runner is not None and en.throughput:  # its own static shape, exported before timing
        attempt(
            "throughput_export",
            lambda: runner.add_shape(
                model.preprocess(load_images(dataset, s.throughput_batch_size, device)).tensor
            ),
        )
    if en.latency and (r := attempt("latency", lambda: measure_latency(fast, dataset, device, s))):
        out.update(r[0])
        samples.update(r[1])
    if en.throughput and (
        r := attempt("throughput", lambda: measure_throughput(fast, dataset, device, s))
    ):
        out.update(r[0])
        samples["throughput_batch_ms"] = r[1]
    if runner is not None:
        out.update(runner.result_keys())
    fast = runner = None  # free the timed copy before the memory probes
    if en.flops:

        def flops():
            # One validation image, as preprocess pads it: the input predict is timed on.
            x = model.preprocess(load_images(dataset, 1, device)).tensor
            out["flops_input_size"] = list(x.shape[-2:])
            return count_predict(model, x)

        out.update(flop_keys(attempt("flops", flops)))
    if en.roofline:
        peaks = attempt(
            "roofline",
            lambda: device_peaks(
                device, s.precision, s.roofline_seconds, s.roofline_refresh_seconds
            ),
        )
        out.update(
            roofline_keys(peaks, out["gmacs"], out["predict_ms"], out["latency_batch_size"] or 1)
        )
    if en.memory:
        out.update(attempt("memory", lambda: _memory(model, device, s, recipe, input_spec)) or {})
    out.update(environment(device, s.precision))
    out["measure_errors"] = errors
    out["measure_seconds"] = seconds  # wall time of each measurement (budgeting sweeps)
    if out_dir is not None and samples:
        write_json_atomic(Path(out_dir) / SAMPLES_FILE, samples)
    return out


def _memory(
    model: nn.Module,
    device: Device,
    s: BenchSettings,
    recipe: ModelRecipe | None,
    input_spec: InputSpec,
) -> dict[str, Any]:
    """Inference peak at ``bench.batch_size`` and training-step peak at the training batch
    size, each bounded by ``bench.memory_max_fraction`` of the free memory (memory_bound.py)."""
    train_bs = s.train_batch_size or (recipe.train_batch_size if recipe else 2)
    probes = [("inference", s.batch_size)] + (
        [("train", train_bs)] if s.enabled.train_memory else []
    )
    shape = tuple(input_spec.shape)
    budget = memory_budget_mb(device, s.memory_max_fraction)
    fresh = s.memory_fresh_process and not device.is_cuda and recipe is not None
    if fresh:
        peaks = fresh_process_peaks(
            model, recipe, probes=probes, shape=shape, device=device, settings=s, budget_mb=budget
        )
    else:  # CUDA (exact allocator statistics), or CPU in-process: no hard limit on CPU
        peaks = in_process_peaks(
            model,
            probes,
            shape=shape,
            device=device,
            settings=s,
            train_precision=recipe.train_precision if recipe else "fp32",
            optimizer=recipe.optimizer if recipe else None,
            budget_mb=budget,
            guard=device.is_cuda,
        )
    inf = peaks[0]
    out = {
        "mem_budget_mb": inf["budget_mb"],
        "peak_mem_mb": inf["peak_mb"],
        "peak_mem_reserved_mb": inf["reserved_mb"],
        "peak_mem_method": inf["method"],
        "peak_mem_batch_size": inf["batch_size"],
        "peak_mem_probe_batch_size": inf["probe_batch_size"],
        "peak_mem_source": inf["source"],
        "peak_mem_note": inf["note"],
        "cold_start_fresh_process_ms": inf["value"] if fresh else None,
    }
    if len(peaks) > 1:
        train = peaks[1]
        out.update(
            train_peak_mem_mb=train["peak_mb"],
            train_peak_mem_reserved_mb=train["reserved_mb"],
            train_mem_batch_size=train["batch_size"],
            train_mem_probe_batch_size=train["probe_batch_size"],
            train_mem_source=train["source"],
            train_mem_note=train["note"],
        )
    return out
