"""The device's measured compute peak (cached per machine) and how much of it a model reaches.

The peak is the best rate of a large GEMM and of a large 3x3 convolution, in the job's
precision, with the job's thread count: what this machine's libraries (MKL/oneDNN on CPU,
cuBLAS/cuDNN on CUDA) deliver in the best case, not the vendor's datasheet number. It is
measured once and cached as JSON under ``$DETBENCH_CACHE`` (default ``~/.cache/detbench``),
keyed by device, thread count (CPU) or TF32 (CUDA), and precision; a different torch version
measures again. Later jobs run a short refresh probe and keep the best value seen
(:func:`device_peaks`).

``achieved_gflops = 2 * gmacs / predict time`` and ``peak_fraction = achieved / conv peak``:
the share of the machine's convolution throughput the network part keeps busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.device import Device
from benchmark.results import write_json_atomic

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Probe sizes: big enough to run near peak, small enough for ~10-50 ms per call on 2 CPU cores.
_GEMM_N = {"cpu": 768, "cuda": 8192}
_CONV_SHAPE = {  # (batch, channels, spatial): 3x3 conv, channels in = out, stride 1, padding 1
    "cpu": (1, 128, 56),
    "cuda": (32, 256, 56),
}


PEAK_KEYS = ("peak_gemm_gflops", "peak_conv_gflops")


def cache_root() -> Path:
    """``$DETBENCH_CACHE`` if set, else ``~/.cache/detbench``."""
    return Path(os.environ.get("DETBENCH_CACHE") or "~/.cache/detbench").expanduser()


def cache_path(device: Device, precision: str) -> Path:
    return cache_root() / f"roofline-{device.cache_key}-{precision}.json"


def _best_gflops(
    fn: Callable[[], Any],
    flops: float,
    device: Device,
    seconds: float,
    min_reps: int = 3,
    max_reps: int = 200,
) -> float:
    """``flops`` / fastest of repeated calls, in GFLOP/s: for a peak, only the fastest run
    matters (interference from other processes only ever slows a run down)."""
    fn()  # first call: allocation, kernel selection
    device.synchronize()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for rep in range(max_reps):
        if rep >= min_reps and time.perf_counter() > deadline:
            break
        with device.timer() as t:
            fn()
        best = min(best, t[0])
    return flops / (best / 1e3) / 1e9


@torch.inference_mode()
def measure_peaks(device: Device, precision: str, seconds: float = 1.0) -> dict[str, Any]:
    """Run the GEMM and convolution probes (``seconds`` each at most, beyond 3 repetitions).

    Returns:
        ``{"peak_gemm_gflops", "peak_conv_gflops", "gemm_n", "conv_shape", ...}``.
    """
    dtype = _DTYPES[precision]
    dev = device.torch_device
    n = _GEMM_N.get(device.type, _GEMM_N["cpu"])
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    gemm = _best_gflops(lambda: torch.mm(a, b), 2.0 * n**3, device, seconds)

    bs, c, s = _CONV_SHAPE.get(device.type, _CONV_SHAPE["cpu"])
    x = torch.randn(bs, c, s, s, device=dev, dtype=dtype)
    w = torch.randn(c, c, 3, 3, device=dev, dtype=dtype)
    conv_flops = 2.0 * bs * c * c * 9 * s * s
    conv = _best_gflops(lambda: F.conv2d(x, w, padding=1), conv_flops, device, seconds)
    return {
        "peak_gemm_gflops": gemm,
        "peak_conv_gflops": conv,
        "gemm_n": n,
        "conv_shape": [bs, c, s, s, 3],
        "precision": precision,
        "device_name": device.name,
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def device_peaks(
    device: Device, precision: str, seconds: float = 0.5, refresh_seconds: float = 0.0
) -> dict[str, Any]:
    """The cached peaks for this device and precision, measuring them on a cache miss.

    A peak measured while other processes used the cores is too low, and a cache would keep
    it forever; so with ``refresh_seconds > 0`` a cache hit still runs a short probe, and the
    cache keeps the best rate seen for each probe. A low first value heals on a quiet run.

    Returns:
        The cache entry plus ``roofline_cache`` (its path) and ``roofline_cached`` (whether
        the values come from the cache rather than from this call's probe).
    """
    path = cache_path(device, precision)
    cached = None
    try:
        entry = json.loads(path.read_text())
        if entry.get("torch_version") == torch.__version__:
            cached = entry
    except (OSError, json.JSONDecodeError):
        pass
    if cached is not None and refresh_seconds <= 0:
        return {**cached, "roofline_cache": str(path), "roofline_cached": True}
    entry = measure_peaks(device, precision, refresh_seconds if cached is not None else seconds)
    if cached is not None:
        if not any(entry[k] > cached[k] for k in PEAK_KEYS):  # keep the file as it is
            return {**cached, "roofline_cache": str(path), "roofline_cached": True}
        entry.update({k: max(entry[k], cached[k]) for k in PEAK_KEYS})
    # Concurrent jobs may race here; the atomic rename keeps the file whole either way. A
    # read-only home only costs measuring again next time.
    with contextlib.suppress(OSError):
        write_json_atomic(path, entry)
    return {**entry, "roofline_cache": str(path), "roofline_cached": False}


def roofline_keys(
    peaks: dict[str, Any] | None,
    gmacs: float | None,
    predict_ms: float | None,
    images_per_call: int = 1,
) -> dict[str, Any]:
    """``peak_gemm_gflops``, ``peak_conv_gflops``, ``achieved_gflops``, ``peak_fraction``.

    Args:
        gmacs: per image.
        predict_ms: median time of one ``predict`` call on ``images_per_call`` images.
    """
    keys: dict[str, Any] = dict.fromkeys(
        ("peak_gemm_gflops", "peak_conv_gflops", "achieved_gflops", "peak_fraction")
    )
    if peaks is not None:
        keys["peak_gemm_gflops"] = peaks["peak_gemm_gflops"]
        keys["peak_conv_gflops"] = peaks["peak_conv_gflops"]
    if gmacs is not None and predict_ms:
        # FLOPs = 2 x MACs: the peaks above count a multiply-add as two operations too.
        keys["achieved_gflops"] = 2.0 * gmacs * images_per_call / (predict_ms / 1e3)
        if keys["peak_conv_gflops"]:
            keys["peak_fraction"] = keys["achieved_gflops"] / keys["peak_conv_gflops"]
    return keys
