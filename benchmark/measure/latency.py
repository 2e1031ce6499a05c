"""Latency with a stage split, the cold first call, percentiles, and throughput at a larger batch.

Every timed call runs the three steps of :class:`~models.meta_arch.base.DetectionModel` in
order, each inside its own timer and all inside one end-to-end timer, so the stage times of a
sample add up to its end-to-end time (up to the timers' own overhead, microseconds). Timing the
stages in separate runs instead would not add up: caches and allocator state differ per run.

Images are loaded and moved to the device before each timed call, outside the timers:
decoding, resizing and the host-to-device copy belong to the data pipeline, not the model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from benchmark.device import Device
from benchmark.intervals import median_interval, min_samples, percentile_is_supported
from benchmark.measure.settings import BenchSettings

STAGES = ("preprocess", "predict", "postprocess")


def load_images(dataset: Dataset, n: int, device: Device, start: int = 0) -> list[Tensor]:
    """``n`` validation images in dataset order from ``start`` (wrapping around), on the device.

    Args:
        dataset: yields ``(image [3, H, W] float in [0, 1], target)``, already resized.
        n: number of images; the dataset is cycled when it has fewer.
        start: index of the first image.

    Returns:
        ``n`` tensors ``[3, H, W]`` on ``device``.
    """
    if len(dataset) == 0:
        raise ValueError("the validation set is empty: there are no images to time")
    return [dataset[(start + i) % len(dataset)][0].to(device.torch_device) for i in range(n)]


def timed_call(
    model: nn.Module,
    images: Sequence[Tensor],
    device: Device,
    settings: BenchSettings,
) -> tuple[dict[str, float], list[dict[str, Tensor]]]:
    """One inference call (preprocess, predict, postprocess), each stage and the whole timed.

    Call under ``torch.inference_mode()`` (or ``no_grad``) with the model in eval mode.

    Args:
        images: ``batch_size`` tensors ``[3, H, W]`` float in [0, 1] on the device.

    Returns:
        ``{"end_to_end", "preprocess", "predict", "postprocess"}`` in milliseconds, and the
        detections. ``end_to_end`` excludes postprocess when ``settings.include_postprocess``
        is false (postprocess is still timed, after the end-to-end timer stopped).
    """
    times: dict[str, list[float]] = {}

    def postprocess(outputs, image_sizes):
        with device.timer() as t:
            dets = model.postprocess(outputs, image_sizes)
        times["postprocess"] = t
        return dets

    with device.autocast(settings.precision):
        with device.timer() as e2e:
            with device.timer() as times["preprocess"]:
                batch = model.preprocess(list(images))
                x = batch.tensor
                if settings.channels_last:  # input layout is preprocessing's job
                    x = x.contiguous(memory_format=torch.channels_last)
            with device.timer() as times["predict"]:
                outputs = model.predict(x)
            if settings.include_postprocess:
                dets = postprocess(outputs, batch.image_sizes)
        if not settings.include_postprocess:
            dets = postprocess(outputs, batch.image_sizes)
    out = {"end_to_end": e2e[0]}
    out.update({k: v[0] for k, v in times.items()})
    return out, dets


def summarize(samples_ms: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Median with its confidence interval, p90, p99, mean, sample sd, min and n (ms).

    Percentiles use linear interpolation (numpy's default), so median <= p90 <= p99. A
    percentile is None, with the reason in ``p90_note`` / ``p99_note``, when the sample is
    too small for it to be more than the largest value (:func:`percentile_is_supported`:
    p90 needs 10 samples, p99 100). ``ci_low``/``ci_high`` is the distribution-free interval
    of the median from order statistics (:func:`median_interval`; None below 6 samples).
    """
    a = np.asarray(samples_ms, dtype=float)
    out: dict[str, Any] = {"median": float(np.median(a))}
    for q in (90, 99):
        supported = percentile_is_supported(a.size, q)
        out[f"p{q}"] = float(np.percentile(a, q)) if supported else None
        out[f"p{q}_note"] = (
            None
            if supported
            else f"needs >= {min_samples(q)} timed calls to differ from the maximum, had {a.size}"
        )
    ci = median_interval(a, confidence)
    out.update(
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        mean=float(a.mean()),
        std=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        min=float(a.min()),
        n=int(a.size),
    )
    return out


def median_split(
    samples: dict[str, list[float]], median: float
) -> tuple[list[int], dict[str, float]]:
    """The stage split of the median call.

    Stage medians do not add up to the end-to-end median when timings are noisy (the
    slow calls of each stage are different calls). So the split is averaged over the
    ``max(1, n // 5)`` calls whose end-to-end time is closest to the median: robust to
    outliers, and per call the stages add up, so the split adds up to (almost exactly)
    ``latency_ms``.

    Returns:
        The indices of those calls and ``{stage: mean ms over them}``.
    """
    e2e = np.asarray(samples["end_to_end"], dtype=float)
    near = np.argsort(np.abs(e2e - median), kind="stable")[: max(1, e2e.size // 5)]
    split = {s: float(np.asarray(samples[s], dtype=float)[near].mean()) for s in STAGES}
    return sorted(int(i) for i in near), split


def inference_context(settings: BenchSettings):
    """``torch.inference_mode()`` (``bench.inference_mode``, the default) or ``no_grad``.

    inference_mode also skips autograd's version counters and view tracking; both give the
    same outputs.
    """
    return torch.inference_mode() if settings.inference_mode else torch.no_grad()


def measure_latency(
    model: nn.Module,
    dataset: Dataset,
    device: Device,
    settings: BenchSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`_measure_latency` under :func:`inference_context`."""
    with inference_context(settings):
        return _measure_latency(model, dataset, device, settings)


def measure_throughput(
    model: nn.Module,
    dataset: Dataset,
    device: Device,
    settings: BenchSettings,
) -> tuple[dict[str, Any], list[float]]:
    """:func:`_measure_throughput` under :func:`inference_context`."""
    with inference_context(settings):
        return _measure_throughput(model, dataset, device, settings)


def _measure_latency(
    model: nn.Module,
    dataset: Dataset,
    device: Device,
    settings: BenchSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cold call, ``warmup`` untimed calls, then the timed calls.

    Each timed call processes ``batch_size`` images (1 by default, the papers' protocol).
    At least ``num_images`` images are timed; while the timed phase has lasted less than
    ``min_seconds`` (wall time), more are timed, up to ``max_images``: cheap models get
    enough samples for a real p99 at a bounded cost.

    Returns:
        The result keys (``latency_ms`` = median end-to-end, ``latency_ms_ci_low``/
        ``_ci_high``, ``latency_ms_p90``/``_p99`` (with ``_note``)/``_mean``/``_std``/``_min``, ``cold_start_ms``, the stage split of the median call
        ``preprocess_ms``/``predict_ms``/``postprocess_ms`` (:func:`median_split`),
        ``timing_n``...) and the per-call samples for ``latency_samples.json``.
    """
    model.eval()
    bs = settings.batch_size
    min_calls = math.ceil(settings.num_images / bs)
    max_calls = max(min_calls, math.ceil((settings.max_images or settings.num_images) / bs))
    first = 1 + settings.warmup  # call index of the first timed call

    def images(call: int) -> list[Tensor]:
        # Call c uses images c*bs .. c*bs+bs-1: each call sees new images, in dataset order.
        # Loaded per call (outside the timers) so a long run does not hold all images.
        return load_images(dataset, bs, device, start=call * bs)

    # The very first call (lazy initialization, first-touch allocations, autotuning) is
    # reported on its own and never mixed into the percentiles.
    first_images = images(0)
    cold, _ = timed_call(model, first_images, device, settings)
    for c in range(1, first):
        timed_call(model, images(c), device, settings)
    samples: dict[str, list[float]] = {k: [] for k in ("end_to_end", *STAGES)}
    start, n_calls = time.perf_counter(), 0
    while n_calls < min_calls or (
        n_calls < max_calls and time.perf_counter() - start < settings.min_seconds
    ):
        t, _ = timed_call(model, images(first + n_calls), device, settings)
        for k in samples:
            samples[k].append(t[k])
        n_calls += 1
    e2e = summarize(samples["end_to_end"])
    near, split = median_split(samples, e2e["median"])
    keys: dict[str, Any] = {
        "latency_ms": e2e["median"],
        "latency_ms_ci_low": e2e["ci_low"],
        "latency_ms_ci_high": e2e["ci_high"],
        "latency_ms_p90": e2e["p90"],
        "latency_ms_p99": e2e["p99"],
        "latency_ms_p90_note": e2e["p90_note"],
        "latency_ms_p99_note": e2e["p99_note"],
        "latency_ms_mean": e2e["mean"],
        "latency_ms_std": e2e["std"],
        "latency_ms_min": e2e["min"],
        "cold_start_ms": cold["end_to_end"],
        **{f"{s}_ms": v for s, v in split.items()},
        "timing_n": e2e["n"],
        "latency_batch_size": bs,
        "latency_warmup": settings.warmup,
        "latency_includes_postprocess": settings.include_postprocess,
        "input_size": list(first_images[0].shape[-2:]),
    }
    n_ds = len(dataset)
    record = {
        "unit": "ms",
        "batch_size": bs,
        "cold_start": cold,
        "image_indices": [
            [((first + c) * bs + j) % n_ds for j in range(bs)] for c in range(n_calls)
        ],
        **{f"{k}_ms": v for k, v in samples.items()},
        "stage_split_calls": near,
    }
    return keys, record


def _measure_throughput(
    model: nn.Module,
    dataset: Dataset,
    device: Device,
    settings: BenchSettings,
) -> tuple[dict[str, Any], list[float]]:
    """Images per second of the full pipeline at ``throughput_batch_size``.

    One untimed batch first (a new batch size can allocate and autotune anew), then
    ``throughput_iters`` timed batches; ``throughput_ips = images / total time``.

    Returns:
        ``{"throughput_ips", "throughput_batch_size"}`` and the per-batch times (ms).
    """
    model.eval()
    bs, iters = settings.throughput_batch_size, settings.throughput_iters
    # Throughput always includes postprocessing: it is what a deployed detector delivers.
    full = dataclasses.replace(settings, include_postprocess=True)
    timed_call(model, load_images(dataset, bs, device), device, full)
    times = []
    for i in range(1, iters + 1):
        t, _ = timed_call(model, load_images(dataset, bs, device, start=i * bs), device, full)
        times.append(t["end_to_end"])
    return {
        "throughput_ips": bs * len(times) / (sum(times) / 1e3),
        "throughput_batch_size": bs,
    }, times
