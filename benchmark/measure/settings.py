"""The measurement settings as a typed object, read from the ``bench`` config group.

``sweeps/bench/default.yaml`` is the documented source of the values; the defaults here only
matter when measurement code is called without Hydra (tests, notebooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

PRECISIONS = ("fp32", "fp16", "bf16")
# What runs ``predict`` while timing (benchmark/measure/runtime.py). ``compile`` is
# ``torch.compile``; the ``onnxruntime*`` ones export ``predict`` to ONNX and run it in ONNX
# Runtime with one execution provider: CPU (or CUDA on a CUDA device), or TensorRT.
BACKENDS = ("eager", "compile", "onnxruntime", "onnxruntime_tensorrt")
RUNTIME_BACKENDS = ("onnxruntime", "onnxruntime_tensorrt")


@dataclass(frozen=True)
class Enabled:
    """Which measurements run; a disabled one leaves its keys null."""

    latency: bool = True
    throughput: bool = True
    flops: bool = True
    memory: bool = True
    train_memory: bool = True
    roofline: bool = True


@dataclass(frozen=True)
class BenchSettings:
    """See ``sweeps/bench/default.yaml`` for what each field means."""

    warmup: int = 5
    num_images: int = 20
    # The YAML times more images for cheap models (min_seconds 3, max_images 200; num_images
    # wins over a smaller max_images); here the defaults time exactly num_images, which
    # direct callers (tests) rely on.
    min_seconds: float = 0.0
    max_images: int | None = None
    batch_size: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    fold_bn: bool = True
    inference_mode: bool = True
    compile: bool = False
    backend: str = "eager"
    parity_images: int = 20
    parity_box_atol: float = 0.05
    parity_score_atol: float = 1e-3
    parity_map_atol: float = 0.005
    runtime_max_shapes: int = 8
    num_threads: int | None = None
    include_postprocess: bool = True
    throughput_batch_size: int = 8
    throughput_iters: int = 3
    roofline_seconds: float = 0.5
    roofline_refresh_seconds: float = 0.1
    enabled: Enabled = field(default_factory=Enabled)
    memory_fresh_process: bool = True
    train_batch_size: int | None = None
    memory_max_fraction: float = 0.5
    memory_extrapolate: bool = True

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"bench.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.compile and self.backend not in ("eager", "compile"):
            raise ValueError(
                f"bench.compile=true (the old spelling of bench.backend=compile) contradicts "
                f"bench.backend={self.backend}"
            )
        if self.compile and self.backend == "eager":  # the old flag: same job as backend=compile
            object.__setattr__(self, "backend", "compile")
        object.__setattr__(self, "compile", self.backend == "compile")
        if self.backend in RUNTIME_BACKENDS and (self.channels_last or self.precision != "fp32"):
            raise ValueError(
                f"bench.backend={self.backend} runs the exported fp32 graph: it takes neither "
                f"bench.channels_last=true nor bench.precision={self.precision} (the runtime "
                f"chooses its own layouts)"
            )
        if self.parity_images < 1:
            raise ValueError(f"bench.parity_images must be >= 1, got {self.parity_images}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"bench.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.num_images < 1 or self.batch_size < 1 or self.warmup < 0:
            raise ValueError(
                "bench.num_images and bench.batch_size must be >= 1, bench.warmup >= 0"
            )
        if not 0.0 < self.memory_max_fraction <= 1.0:
            raise ValueError(
                f"bench.memory_max_fraction must be in (0, 1], got {self.memory_max_fraction}"
            )
        if self.train_batch_size is not None and self.train_batch_size < 1:
            raise ValueError(f"bench.train_batch_size must be >= 1, got {self.train_batch_size}")
        if self.min_seconds < 0:
            raise ValueError(f"bench.min_seconds must be >= 0, got {self.min_seconds}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"bench.max_images must be >= 1 or null, got {self.max_images}")

    @classmethod
    def from_cfg(cls, node: Any | None) -> BenchSettings:
        """From a ``bench`` DictConfig or plain dict (None gives the defaults).

        Unknown keys raise, so a typo in an override does not silently measure the default.
        """
        if node is None:
            return cls()
        try:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(node):
                node = OmegaConf.to_container(node, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf comes with hydra
            pass
        data = dict(node)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown bench settings {sorted(unknown)}; known: {sorted(known)}")
        if isinstance(data.get("enabled"), dict):
            data["enabled"] = Enabled(**data["enabled"])
        return cls(**data)
