"""Memory peaks: a fresh process reports a positive CPU peak; the in-process training step
leaves the model as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from measure_toys import TinyDetector, TinyExtractor, one_thread  # noqa: F401 (fixture)
from omegaconf import OmegaConf

from benchmark.device import Device
from benchmark.measure.memory import in_process_peak, peak_of, reset_rss_peak
from benchmark.measure.memory_fresh import fresh_process_peaks
from benchmark.measure.settings import BenchSettings

CPU = Device.from_spec("cpu")
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture
def toy_cfg(monkeypatch):
    """A job config the child can rebuild the toy from (this folder on its PYTHONPATH)."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    )
    return OmegaConf.create(
        {
            "extractor": {"_target_": "measure_toys.TinyExtractor", "channels": 32},
            "meta_arch": {"_target_": "measure_toys.TinyDetector"},
            "train": {
                "batch_size": 2,
                "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9},
            },
        }
    )


def test_fresh_process_peaks_are_positive(toy_cfg):
    torch.manual_seed(0)
    model = TinyDetector(extractor=TinyExtractor(channels=32), num_classes=3)
    inf, train = fresh_process_peaks(
        model,
        toy_cfg,
        probes=[("inference", 1), ("train", 2)],
        image_size=(256, 256),
        device=CPU,
        settings=BenchSettings(),
    )
    # The first conv's output alone is 32 x 128 x 128 floats = 2 MiB.
    assert inf["peak_mb"] > 1.0 and inf["method"] == "cpu_peak_rss_increase_fresh_process"
    assert inf["value"] > 0  # the child's first-call time
    # Twice the batch, activations kept for backward, gradients, optimizer state.
    assert train["peak_mb"] > inf["peak_mb"]


def test_rss_peak_reset_and_increase():
    assert reset_rss_peak(), "Linux /proc/self/clear_refs should be writable"
    out = peak_of(lambda: torch.ones(64 * 2**20 // 4).sum(), CPU)  # touches a 64 MiB buffer
    assert 50 < out["peak_mb"] < 200 and out["reserved_mb"] is None


def test_rss_peak_sees_allocations_served_from_a_fragmented_heap():
    # Freeing a 30 MiB buffer raises glibc's mmap threshold; 200 x 1 MiB then live on the
    # heap, and all but the last are freed: ~199 MiB of free, still-resident chunks that
    # would serve the 64 MiB below without any RSS growth unless the heap is trimmed first.
    big = torch.ones(30 * 2**20 // 4)
    del big
    chunks = [torch.ones(2**20 // 4) for _ in range(200)]
    last = chunks[-1]
    del chunks
    out = peak_of(lambda: torch.ones(64 * 2**20 // 4).sum(), CPU)
    assert 50 < out["peak_mb"] < 200, out["peak_mb"]
    del last


BIG_MIB = 64


class HungryDetector(TinyDetector):
    """TinyDetector whose loss also fills a 64 MiB buffer: a training step's peak that is
    known to be at least that much."""

    def loss(self, outputs, targets, image_sizes):
        losses = super().loss(outputs, targets, image_sizes)
        big = torch.ones(BIG_MIB * 2**20 // 4)  # float32: touched, so resident
        return {**losses, "loss_big": big.sum() * 0.0}


def test_in_process_train_step_sees_its_allocations_and_restores_the_model():
    torch.manual_seed(0)
    model = HungryDetector(extractor=TinyExtractor(), num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = in_process_peak(
        model, mode="train", batch_size=2, image_size=(64, 64), device=CPU, settings=BenchSettings()
    )
    # The buffer is alive inside the step, so the peak increase is at least its size (peak_mb
    # is clamped at 0, so ">= 0" could never fail); the toy's own tensors are far smaller.
    assert BIG_MIB <= out["peak_mb"] < 3 * BIG_MIB, out["peak_mb"]
    assert out["method"] == "cpu_peak_rss_increase"
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
