"""Memory probes that bound themselves: measurement never takes the machine's memory.

A training step of a large detector at the training batch can need more memory than the
machine has free (torchvision's RetinaNet at 800 px, batch 32: about 23 GB on CPU); run
blindly, the probe is killed by the kernel's OOM killer - or, on a shared machine, another
job is. So every probe follows :func:`bounded_peak`:

1. **Budget**: a share (``bench.memory_max_fraction``) of the memory free when measurement
   starts (:meth:`benchmark.device.Device.free_memory_mb`: ``MemAvailable`` on CPU, the
   driver's free memory on CUDA).
2. **Estimate**: probe the smallest batch first (1; 2 for a training step, where BatchNorm
   needs two values per channel) and bound the target batch ``B`` by proportion,
   ``cost(B) <= cost(b) * B / b``: a peak is a fixed part (gradients, optimizer state,
   workspaces) plus a part per image, so scaling all of it overestimates. ``cost`` is the
   measured peak plus the synthetic inputs, which are allocated too.
3. **Probe** at ``B`` when that bound fits the budget: the number is measured (``source:
   measured``). Otherwise probe the largest batch ``b_hi`` whose bound fits, and extrapolate
   the line through ``b`` (probed again, warm, so both points exclude first-call
   allocations) and ``b_hi`` to ``B`` (``source: extrapolated``, the note gives both
   points). When no second batch fits, or ``bench.memory_extrapolate=false``, or the peaks
   do not grow with the batch, the value is null and the note says why.
4. **Guard**: the caller runs each probe under a hard limit of the budget
   (:meth:`~benchmark.device.Device.memory_limit`: ``RLIMIT_DATA`` in the fresh CPU process,
   the allocator's fraction on CUDA), so a misestimate - or a smallest batch that is already
   too big - ends in an allocation error, reported as null with the reason, not in an OOM kill.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from benchmark.device import Device


def memory_budget_mb(device: Device, fraction: float) -> float | None:
    """``fraction`` of the device's free memory in MiB; None when the free memory is unknown."""
    free = device.free_memory_mb()
    return None if free is None else fraction * free


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (the guard's limit, or the device is full)."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def input_mb(batch_size: int, shape: tuple[int, int]) -> float:
    """MiB of ``batch_size`` float32 images ``[3, H, W]`` (the probe's synthetic inputs)."""
    return batch_size * 3 * shape[0] * shape[1] * 4 / 2.0**20


def bounded_peak(
    run: Callable[[int], dict[str, Any]],
    target: int,
    budget_mb: float | None,
    *,
    smallest: int = 1,
    extrapolate: bool = True,
    input_mb_per_image: float = 0.0,
) -> dict[str, Any]:
    """The peak of one call at batch ``target`` without exceeding ``budget_mb`` (module doc).

    Args:
        run: ``run(b)`` probes one call at batch ``b`` and returns
            :func:`benchmark.measure.memory.peak_of`'s dict (``peak_mb``, ``reserved_mb``,
            ``method``, ``value``); it raises an allocation error when it hits the guard.
        target: the batch the number is for (``B``).
        budget_mb: what one probe may allocate; None: unknown, ``target`` is probed directly.
        smallest: the first batch probed (capped at ``target``).
        extrapolate: allow extrapolation; False records null when ``target`` does not fit.
        input_mb_per_image: MiB of one synthetic input image, added to each estimate.

    Returns:
        ``peak_mb``, ``reserved_mb`` (null or extrapolated like ``peak_mb``), ``method``,
        ``value`` (``run``'s value of the first, cold, call), ``batch_size`` (``target``),
        ``probe_batch_size`` (the largest batch run, or null), ``source`` (``measured``,
        ``extrapolated`` or null) and ``note`` (null when measured at ``target``).
    """
    out: dict[str, Any] = {
        "peak_mb": None,
        "reserved_mb": None,
        "method": None,
        "value": None,
        "batch_size": target,
        "probe_batch_size": None,
        "source": None,
        "note": None,
    }
    budget = f"{budget_mb:.0f} MiB" if budget_mb is not None else "?"

    def attempt(b: int) -> dict[str, Any] | None:
        try:
            r = run(b)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            limit = (
                f"the memory limit of the budget ({budget}, bench.memory_max_fraction of the "
                "free memory)"
                if budget_mb is not None
                else "the device's free memory"
            )
            error = f"{type(e).__name__}: {str(e).strip()}"[:240]
            out["note"] = f"not measured: batch {b} hit {limit}: {error}"
            return None
        out["method"] = r["method"]
        out["probe_batch_size"] = max(b, out["probe_batch_size"] or 0)
        return r

    def measured(r: dict[str, Any]) -> dict[str, Any]:
        return {
            **out,
            "peak_mb": r["peak_mb"],
            "reserved_mb": r["reserved_mb"],
            "source": "measured",
        }

    def cost(r: dict[str, Any], b: int) -> float:
        return r["peak_mb"] + b * input_mb_per_image

    first = min(smallest, target)
    if budget_mb is None:  # nothing to bound against: the target as it is
        if (r := attempt(target)) is None:
            return out
        return {**measured(r), "value": r["value"]}
    if (cold := attempt(first)) is None:
        return out
    out["value"] = cold["value"]
    if first == target:
        return measured(cold)
    if cost(cold, first) * target / first <= budget_mb:
        return measured(r) if (r := attempt(target)) is not None else out
    # The target does not fit: a warm repeat of the smallest batch, then the largest that fits.
    if (lo := attempt(first)) is None:
        return out
    per_image = cost(lo, first) / first
    b_hi = target if per_image <= 0 else math.floor(budget_mb / per_image)
    if b_hi >= target:
        return measured(r) if (r := attempt(target)) is not None else out
    bound = (
        f"batch {target} would need up to {per_image * target:.0f} MiB, over the budget ({budget})"
    )
    if b_hi <= first:
        return {**out, "note": f"not measured: {bound}, and so would batch {first + 1}"}
    if not extrapolate:
        return {**out, "note": f"not measured: {bound} (bench.memory_extrapolate=false)"}
    if (hi := attempt(b_hi)) is None:
        return out
    slope = (hi["peak_mb"] - lo["peak_mb"]) / (b_hi - first)
    points = f"batches {first} ({lo['peak_mb']:.0f} MiB) and {b_hi} ({hi['peak_mb']:.0f} MiB)"
    if slope <= 0:
        return {**out, "note": f"not measured: {bound}; the peaks of {points} do not grow"}
    reserved = None
    if hi["reserved_mb"] is not None and lo["reserved_mb"] is not None:
        r_slope = (hi["reserved_mb"] - lo["reserved_mb"]) / (b_hi - first)
        reserved = hi["reserved_mb"] + r_slope * (target - b_hi)
    return {
        **out,
        "peak_mb": hi["peak_mb"] + slope * (target - b_hi),
        "reserved_mb": reserved,
        "source": "extrapolated",
        "note": f"extrapolated linearly from {points}: {bound}",
    }
