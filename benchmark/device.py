"""The one device abstraction: everything CUDA-specific that the runner needs lives here.

Timing, synchronization, peak-memory bookkeeping and autocast differ between CPU and CUDA.
Keeping them behind :class:`Device` means the rest of the code has no ``if cuda`` branches and
the logic is testable on a CPU-only machine (the CUDA branches are thin and marked in tests).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
MEMINFO = "/proc/meminfo"  # MemAvailable: the CPU's free memory (Device.free_memory_mb)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; otherwise ``torch.device(spec)``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} requested but CUDA is not available on this machine")
    return dev


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform's best guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Device:
    """A torch device plus the operations whose implementation depends on its type."""

    torch_device: torch.device

    @classmethod
    def from_spec(cls, spec: str = "auto") -> Device:
        return cls(resolve_device(spec))

    @property
    def type(self) -> str:
        return self.torch_device.type

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def name(self) -> str:
        if self.is_cuda:
            return torch.cuda.get_device_name(self.torch_device)
        return cpu_model_name()

    def synchronize(self) -> None:
        """Wait for queued kernels; a no-op on CPU where ops run synchronously."""
        if self.is_cuda:
            torch.cuda.synchronize(self.torch_device)

    @contextlib.contextmanager
    def timer(self) -> Iterator[list[float]]:
        """Time a block in milliseconds; the value is appended to the yielded list on exit.

        CUDA: events recorded on the current stream around the block, then synchronized,
        so the time is device time of the enqueued work. CPU: ``time.perf_counter``.
        """
        out: list[float] = []
        if self.is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield out
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            yield out
            out.append((time.perf_counter() - t0) * 1e3)

    def autocast(self, precision: str = "fp32") -> contextlib.AbstractContextManager:
        """Autocast for ``fp16``/``bf16`` (CUDA; bf16 also on CPU), a null context for fp32."""
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        dtype = _PRECISIONS[precision]
        if dtype is None:
            return contextlib.nullcontext()
        if dtype is torch.float16 and not self.is_cuda:
            raise ValueError("fp16 autocast needs CUDA; use bf16 or fp32 on CPU")
        return torch.autocast(device_type=self.type, dtype=dtype)

    @property
    def pin_memory(self) -> bool:
        """Whether data loaders should pin host memory: page-locked batches copy to a GPU
        faster and let ``non_blocking=True`` copies overlap compute. Pointless on CPU, where
        pinning only costs a copy (and needs CUDA to be present at all)."""
        return self.is_cuda

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.torch_device)

    def free_memory_mb(self) -> float | None:
        """Memory new allocations can take now without pushing anyone out, in MiB.

        CUDA: the driver's free device memory (``torch.cuda.mem_get_info``; other processes'
        allocations are already subtracted). CPU: ``MemAvailable`` of /proc/meminfo, the
        kernel's estimate of what can be allocated without swapping (free memory plus
        reclaimable caches). None where unknown (no /proc).
        """
        if self.is_cuda:
            free, _ = torch.cuda.mem_get_info(self.torch_device)
            return free / 2.0**20
        value = _proc_kib(MEMINFO, "MemAvailable:")
        return None if value is None else value / 1024.0

    @contextlib.contextmanager
    def memory_limit(self, extra_mb: float) -> Iterator[bool]:
        """Inside the block this process can allocate at most ``extra_mb`` MiB more; beyond
        it allocations fail with an exception instead of the machine running out of memory.
        Yields whether a limit is in force.

        CUDA: the caching allocator's per-process fraction, set to (reserved now +
        ``extra_mb``) / total memory (``torch.OutOfMemoryError`` beyond), restored on exit.
        CPU: the soft ``RLIMIT_DATA`` (on Linux >= 4.7 the data segment plus private writable
        mappings: malloc's heap and mmap'd chunks, thread stacks), set to the current
        ``VmData`` + ``extra_mb`` (torch raises ``RuntimeError: ... can't allocate memory``,
        Python ``MemoryError``), restored on exit. The CPU limit binds every thread of the
        process and a C++ library that cannot handle a failed allocation aborts, so use it
        only in a process that does nothing else (the fresh memory child). Pages the process
        had already mapped but not touched (free heap) can still become resident under it.
        """
        if self.is_cuda:
            total = torch.cuda.get_device_properties(self.torch_device).total_memory
            reserved = torch.cuda.memory_reserved(self.torch_device)
            before = torch.cuda.get_per_process_memory_fraction(self.torch_device)
            fraction = min(1.0, (reserved + extra_mb * 2.0**20) / total)
            torch.cuda.set_per_process_memory_fraction(fraction, self.torch_device)
            try:
                yield True
            finally:
                torch.cuda.set_per_process_memory_fraction(before, self.torch_device)
            return
        import resource

        data_kib = _proc_kib("/proc/self/status", "VmData:")
        if data_kib is None or not hasattr(resource, "RLIMIT_DATA"):
            yield False
            return
        before = resource.getrlimit(resource.RLIMIT_DATA)
        limit = int(data_kib * 1024 + extra_mb * 2**20)
        if before[1] != resource.RLIM_INFINITY:
            limit = min(limit, before[1])  # the soft limit may not exceed the hard one
        resource.setrlimit(resource.RLIMIT_DATA, (limit, before[1]))
        try:
            yield True
        finally:
            resource.setrlimit(resource.RLIMIT_DATA, before)

    def peak_memory_mb(self) -> dict[str, float] | None:
        """CUDA ``max_memory_allocated``/``reserved`` since the last reset, in MiB; None on CPU
        (CPU peaks are measured as peak RSS of a fresh process by the measurement code)."""
        if not self.is_cuda:
            return None
        mib = 2.0**20
        return {
            "allocated": torch.cuda.max_memory_allocated(self.torch_device) / mib,
            "reserved": torch.cuda.max_memory_reserved(self.torch_device) / mib,
        }

    # -- data-parallel training and exclusive timing (benchmark/distributed.py, timing_lock.py) --
    @property
    def dist_backend(self) -> str:
        """The torch.distributed backend for this device type: NCCL on CUDA, gloo on CPU."""
        return "nccl" if self.is_cuda else "gloo"

    def device_count(self) -> int:
        """How many ranks of this type one process tree can use: visible GPUs, or 1 CPU
        "device" (CPU ranks share the cores; their thread counts are split)."""
        return torch.cuda.device_count() if self.is_cuda else 1

    def for_rank(self, local_rank: int) -> Device:
        """The device of data-parallel rank ``local_rank``: one GPU each on CUDA, the CPU
        otherwise. Pins the CUDA current device so NCCL and kernels use that GPU."""
        if not self.is_cuda:
            return self
        torch.cuda.set_device(local_rank)
        return Device(torch.device("cuda", local_rank))

    @property
    def supports_sync_batchnorm(self) -> bool:
        """``torch.nn.SyncBatchNorm`` raises on CPU tensors in a process group (PyTorch
        implements it for CUDA only), so cross-rank BN is a CUDA feature."""
        return self.is_cuda

    @property
    def lock_key(self) -> str:
        """Which physical device a timing lock protects: the GPU's UUID (stable whatever
        ``CUDA_VISIBLE_DEVICES`` renumbers), or ``cpu``: CPU jobs share all cores."""
        if self.is_cuda:
            props = torch.cuda.get_device_properties(self.torch_device)
            uuid = getattr(props, "uuid", None)
            return f"cuda-{uuid}" if uuid is not None else f"cuda-{self.torch_device.index or 0}"
        return "cpu"

    # -- what the measurement code records about the device ----------------------------------
    @property
    def cache_key(self) -> str:
        """A file-name-safe key for per-machine caches (the roofline peak).

        CPU peaks depend on the thread count, CUDA fp32 peaks on TF32, so both are in the key.
        """
        if self.is_cuda:
            tf32 = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
            key = f"cuda-{self.name}-{tf32}"
        else:
            key = f"cpu-{self.name}-t{torch.get_num_threads()}"
        return "".join(c if c.isalnum() or c in "-." else "_" for c in key)

    def onnx_providers(self, backend: str = "onnxruntime") -> list[tuple[str, dict[str, str]]]:
        """ONNX Runtime execution providers for ``bench.backend`` on this device, in priority
        order, as ``(name, options)``: the CPU provider on the CPU; CUDA (then the CPU provider
        for the operators CUDA lacks) on a CUDA device; TensorRT first for
        ``onnxruntime_tensorrt``, which needs CUDA.

        Raises:
            ValueError: ``onnxruntime_tensorrt`` on the CPU.
        """
        cpu = ("CPUExecutionProvider", {})
        if not self.is_cuda:
            if backend == "onnxruntime_tensorrt":
                raise ValueError("bench.backend=onnxruntime_tensorrt needs a CUDA device")
            return [cpu]
        cuda = ("CUDAExecutionProvider", {"device_id": str(self.torch_device.index or 0)})
        if backend == "onnxruntime_tensorrt":
            trt = ("TensorrtExecutionProvider", {"device_id": cuda[1]["device_id"]})
            return [trt, cuda, cpu]
        return [cuda, cpu]

    def environment(self) -> dict[str, object]:
        """Backend versions and math flags that change speed or numerics.

        CUDA-only values (driver, GPU capability) are None on CPU; the build's CUDA/cuDNN
        versions and the global flags are recorded on every device (they are process state).
        """
        cudnn = torch.backends.cudnn
        env: dict[str, object] = {
            "cuda_version": torch.version.cuda,
            "cudnn_version": cudnn.version() if cudnn.is_available() else None,
            "cudnn_benchmark": bool(cudnn.benchmark),
            "cudnn_deterministic": bool(cudnn.deterministic),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "gpu_driver": None,
            "gpu_capability": None,
            "gpu_memory_mb": None,
        }
        if self.is_cuda:
            props = torch.cuda.get_device_properties(self.torch_device)
            env.update(
                gpu_driver=_nvidia_driver_version(),
                gpu_capability=f"{props.major}.{props.minor}",
                gpu_memory_mb=props.total_memory / 2.0**20,
            )
        return env


def _proc_kib(path: str, key: str) -> int | None:
    """The ``kB`` value of the line starting with ``key`` in a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])  # "MemAvailable:   22201884 kB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _nvidia_driver_version() -> str | None:
    """The NVIDIA driver version via NVML when installed, else ``nvidia-smi``; None if neither."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or no driver: fall back to the CLI
        pass
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (
        out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    )
