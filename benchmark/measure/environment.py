"""What a number was measured on: device, libraries, threads, precision and math flags.

These keys go on every result, whatever its status (``benchmark.job.base_result`` calls
:func:`environment`), and again after measuring (the thread count may have been set by the
job or the ``bench`` config in between).
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from typing import Any

import torch

from benchmark.device import Device, cpu_model_name
from benchmark.results import git_sha


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: Device, precision: str | None = None) -> dict[str, Any]:
    """Environment keys for ``result.json``.

    Args:
        device: the job's device.
        precision: the ``bench.precision`` the timings use (fp32/fp16/bf16).

    Returns:
        Flat keys: ``device``, ``device_name``, ``cpu_model``, ``cpu_count``, ``num_threads``,
        ``num_interop_threads``, ``precision``, ``torch_version``, ``torchvision_version``,
        ``timm_version``, ``python_version``, ``platform``, ``hostname``, ``git_sha`` and the
        device's backend keys (``cuda_version``, ``cudnn_version``, ``gpu_driver``,
        ``cudnn_benchmark``, ``tf32_matmul``, ``tf32_cudnn``...; see ``Device.environment``).
    """
    import torchvision

    return {
        "device": device.type,
        "device_name": device.name,
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "precision": precision,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "timm_version": _version("timm"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_sha": git_sha(),
        **device.environment(),
    }
