"""The CUDA branches of measurement (events, allocator peaks, autocast, flags); skipped on CPU."""

from __future__ import annotations

import pytest
import torch
from measure_toys import TinyDetector, TinyExtractor

from benchmark.device import Device
from benchmark.measure import measure
from benchmark.measure.memory import in_process_peak
from benchmark.measure.settings import BenchSettings
from benchmark.spec import InputSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def cuda_toy():
    torch.manual_seed(0)
    model = TinyDetector(extractor=TinyExtractor(channels=16), num_classes=3).cuda().eval()
    return model, [(torch.rand(3, 128, 128), {}) for _ in range(4)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_measure(cuda_toy, tmp_path, monkeypatch, precision):
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp_path))
    model, dataset = cuda_toy
    bench = {
        "warmup": 2,
        "num_images": 6,
        "precision": precision,
        "throughput_batch_size": 2,
        "throughput_iters": 1,
        "roofline_seconds": 0.1,
    }
    out = measure(
        model,
        dataset,
        bench,
        Device.from_spec("cuda"),
        input_spec=InputSpec("square", 128),
        out_dir=tmp_path,
    )
    assert out["measure_errors"] == {}
    assert out["latency_ms"] > 0 and out["predict_ms"] > 0 and out["throughput_ips"] > 0
    assert out["peak_mem_method"] == "cuda_max_memory_allocated"
    assert out["peak_mem_reserved_mb"] >= out["peak_mem_mb"] > 0 and out["train_peak_mem_mb"] > 0
    assert out["gpu_driver"] and out["gpu_capability"] and out["cudnn_version"]
    assert 0 < out["peak_fraction"] < 1.5 and out["peak_conv_gflops"] > 0


def test_cuda_train_peak_exceeds_inference(cuda_toy):
    model, _ = cuda_toy
    kw = {"image_size": (256, 256), "device": Device.from_spec("cuda"), "settings": BenchSettings()}
    inf = in_process_peak(model, mode="inference", batch_size=1, **kw)
    train = in_process_peak(model, mode="train", batch_size=4, **kw)
    assert train["peak_mb"] > inf["peak_mb"] > 0


def test_cuda_cache_key_has_tf32():
    key = Device.from_spec("cuda").cache_key
    assert key.startswith("cuda-") and (key.endswith("-tf32") or key.endswith("-ieee"))


def test_cuda_memory_limit_fails_allocations_beyond_it():
    """The guard of the bounded memory probes on CUDA: the allocator's per-process fraction."""
    dev = Device.from_spec("cuda")
    before = torch.cuda.get_per_process_memory_fraction(dev.torch_device)
    with dev.memory_limit(64) as enforced:
        assert enforced
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(256 * 2**20, dtype=torch.uint8, device=dev.torch_device)
    assert torch.cuda.get_per_process_memory_fraction(dev.torch_device) == before
    assert torch.empty(256 * 2**20, dtype=torch.uint8, device=dev.torch_device).numel() > 0
