"""Peak memory of one inference call and of one training step.

CUDA: ``torch.cuda.max_memory_allocated`` after a reset, in this process (the caching
allocator's statistics are exact): everything alive on the device at the peak - weights,
inputs, activations, workspaces, and in training gradients and optimizer state.

CPU: the increase of the peak resident set size (VmHWM, the live-process part of
``getrusage(RUSAGE_SELF).ru_maxrss``; see :func:`peak_rss_mib`) over the baseline after the
model is loaded, measured in a *fresh* process (:mod:`benchmark.measure.memory_fresh`),
because in a process that already ran the model the allocator reuses freed memory and the
increase reads near zero. The child rebuilds the detector from the job's recipe, loads the
weights, and per probe call makes a synthetic batch at the job's input shape, returns
freed heap pages to the OS, resets the kernel's peak (``/proc/self/clear_refs``), runs ONE
call (inference, then the training step) and reports the peak. So the CPU number is
activations, workspaces, outputs and one-time first-call allocations (oneDNN primitives);
weights (``weights_mb``), inputs and the Python/torch runtime are excluded.

Every probe is bounded (:func:`bounded_peaks`, :mod:`benchmark.measure.memory_bound`): it
runs at the batch it is for only when that fits a share of the free memory, and is
otherwise extrapolated from smaller batches or left null with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import resource
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.device import Device
from benchmark.measure.latency import timed_call
from benchmark.measure.memory_bound import bounded_peak, input_mb
from benchmark.measure.settings import BenchSettings
from benchmark.spec import OptimizerSpec

log = logging.getLogger(__name__)
KEYS = (
    "peak_mem_mb",
    "peak_mem_reserved_mb",
    "train_peak_mem_mb",
    "train_peak_mem_reserved_mb",
    "train_mem_batch_size",
    "weights_mb",
    "peak_mem_method",
    "cold_start_fresh_process_ms",
    # The bound (benchmark/measure/memory_bound.py): the batch each number is for, the largest
    # batch actually run, measured or extrapolated, and why a number is missing.
    "mem_budget_mb",
    "peak_mem_batch_size",
    "peak_mem_probe_batch_size",
    "peak_mem_source",
    "peak_mem_note",
    "train_mem_probe_batch_size",
    "train_mem_source",
    "train_mem_note",
)
# A training step starts at batch 2: BatchNorm in training mode needs more than one value
# per channel, which a 1x1 map (the last SSD layers at small sizes) has only at batch >= 2.
TRAIN_SMALLEST_BATCH = 2


def reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0).

    Returns:
        False when unavailable (not Linux, or /proc read-only): peaks then include everything
        since the process started.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) is ``max(VmHWM, peak of every thread
    that already exited)``; the second term survives :func:`reset_rss_peak` (threads that end
    while a model is built or loaded leave their peak there), so after a reset the live
    counter VmHWM from ``/proc/self/status`` is read instead. ``ru_maxrss`` is the fallback
    where /proc is unavailable.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # "VmHWM:  828484 kB"
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_batch(
    batch_size: int,
    image_size: tuple[int, int],
    num_classes: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images ``[3, H, W]`` uniform in [0, 1] and targets with 3 random boxes each.

    Memory does not depend on pixel values, only on shapes; targets only need to be valid.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(3, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1).to(device),
                "labels": torch.randint(0, num_classes, (3,), generator=g).to(device),
            }
        )
    return images, targets


def _inference(
    model: nn.Module, images: list[Tensor], device: Device, settings: BenchSettings
) -> float:
    model.eval()
    with torch.inference_mode():
        times, _ = timed_call(model, images, device, settings)
    return times["end_to_end"]


def _train_step(
    model: nn.Module,
    images,
    targets,
    device: Device,
    precision: str,
    optimizer: OptimizerSpec | None,
) -> None:
    model.train()
    opt = (optimizer or OptimizerSpec()).build([p for p in model.parameters() if p.requires_grad])
    try:
        with device.autocast(precision):
            losses = model(images, targets)
        sum(losses.values()).backward()
        opt.step()  # allocates the optimizer state (momentum, Adam moments) at the peak
    finally:
        # The peak is taken; free gradients and state so the next probe allocates its own.
        model.zero_grad(set_to_none=True)
        del opt


def probe(
    model: nn.Module,
    mode: str,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    device: Device,
    settings: BenchSettings,
    train_precision: str,
    optimizer: OptimizerSpec | None,
) -> dict[str, Any]:
    """:func:`peak_of` one inference call or one training step (``mode``) on the given batch."""
    if mode == "inference":
        return peak_of(lambda: _inference(model, images, device, settings), device)
    if mode == "train":
        return peak_of(
            lambda: _train_step(model, images, targets, device, train_precision, optimizer),
            device,
        )
    raise ValueError(f"memory probe mode must be inference or train, got {mode!r}")


def probe_batch(
    model: nn.Module,
    mode: str,
    batch_size: int,
    shape: tuple[int, int],
    device: Device,
    settings: BenchSettings,
    train_precision: str = "fp32",
    optimizer: OptimizerSpec | None = None,
    *,
    limit_mb: float | None = None,
) -> dict[str, Any]:
    """:func:`probe` on a synthetic batch of ``batch_size`` images ``[3, *shape]``; with
    ``limit_mb``, the batch and the call run under :meth:`Device.memory_limit`."""
    release_free_memory()  # the limit counts from the current mappings: trim them first
    guard = device.memory_limit(limit_mb) if limit_mb is not None else contextlib.nullcontext()
    with guard:
        images, targets = synthetic_batch(
            batch_size, shape, int(model.num_classes), device.torch_device
        )
        return probe(model, mode, images, targets, device, settings, train_precision, optimizer)


def bounded_peaks(
    model: nn.Module,
    probes: list[tuple[str, int]],
    shape: tuple[int, int],
    device: Device,
    settings: BenchSettings,
    train_precision: str = "fp32",
    optimizer: OptimizerSpec | None = None,
    *,
    budget_mb: float | None = None,
    guard: bool = False,
) -> list[dict[str, Any]]:
    """One :func:`~benchmark.measure.memory_bound.bounded_peak` per ``(mode, batch)`` probe,
    in order; with ``guard`` every call runs under a hard limit of ``budget_mb``."""
    limit = budget_mb if guard else None
    out = []
    for mode, target in probes:

        def run(b: int, mode: str = mode) -> dict[str, Any]:
            return probe_batch(
                model, mode, b, shape, device, settings, train_precision, optimizer, limit_mb=limit
            )

        peak = bounded_peak(
            run,
            int(target),
            budget_mb,
            smallest=TRAIN_SMALLEST_BATCH if mode == "train" else 1,
            extrapolate=settings.memory_extrapolate,
            input_mb_per_image=input_mb(1, shape),
        )
        out.append({**peak, "budget_mb": budget_mb})
    return out


def peak_of(fn, device: Device) -> dict[str, Any]:
    """Run ``fn()`` and return its peak memory (module docstring for what it includes).

    Returns:
        ``{"peak_mb", "reserved_mb" (CUDA, else None), "method", "value": fn's return}``.
    """
    # Every probe starts from a trimmed heap: on CPU, free chunks that are still resident (a
    # long-lived, fragmented glibc heap) would otherwise serve fn's allocations without
    # raising the RSS.
    release_free_memory()
    if device.is_cuda:
        device.synchronize()
        device.reset_peak_memory()
        value = fn()
        device.synchronize()
        peaks = device.peak_memory_mb()
        return {
            "peak_mb": peaks["allocated"],
            "reserved_mb": peaks["reserved"],
            "method": "cuda_max_memory_allocated",
            "value": value,
        }
    exact = reset_rss_peak()
    base = peak_rss_mib()
    value = fn()
    return {
        "peak_mb": max(0.0, peak_rss_mib() - base),
        "reserved_mb": None,
        "method": "cpu_peak_rss_increase" + ("" if exact else "_no_reset"),
        "value": value,
    }


def release_free_memory() -> None:
    """Collect garbage and return the C heap's free pages to the OS (glibc ``malloc_trim``),
    so memory freed by an earlier probe is not silently reused by the next one."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def in_process_peak(
    model: nn.Module,
    *,
    mode: str,
    batch_size: int,
    image_size: tuple[int, int],
    device: Device,
    settings: BenchSettings,
    train_precision: str = "fp32",
    optimizer: OptimizerSpec | None = None,
) -> dict[str, Any]:
    """One unbounded :func:`probe_batch` in this process (see :func:`in_process_peaks`)."""
    with _restored(model, mode == "train"):
        return probe_batch(
            model, mode, batch_size, image_size, device, settings, train_precision, optimizer
        )


def in_process_peaks(model: nn.Module, probes: list[tuple[str, int]], **kw) -> list[dict]:
    """:func:`bounded_peaks` in this process (``kw`` as there). Training steps change the
    weights and BN statistics, so they are snapshotted to host memory first and restored."""
    with _restored(model, any(mode == "train" for mode, _ in probes)):
        return bounded_peaks(model, probes, **kw)


@contextlib.contextmanager
def _restored(model: nn.Module, enabled: bool):
    if not enabled:
        yield
        return
    snapshot = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(snapshot)
        model.zero_grad(set_to_none=True)
        model.eval()
