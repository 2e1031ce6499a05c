"""Memory peaks: a fresh process reports a positive CPU peak; the in-process training step
leaves the model as it was."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest
import torch
from measure_toys import TinyDetector, TinyExtractor, one_thread  # noqa: F401 (fixture)

from benchmark.device import Device
from benchmark.measure.memory import in_process_peak, in_process_peaks, peak_of, reset_rss_peak
from benchmark.measure.memory_fresh import fresh_process_peaks
from benchmark.measure.settings import BenchSettings
from benchmark.spec import ModelRecipe, OptimizerSpec

CPU = Device.from_spec("cpu")
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture
def toy_recipe(monkeypatch):
    """A recipe the child can rebuild the toy from (this folder on its PYTHONPATH)."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    )
    return ModelRecipe(
        extractor={"_target_": "measure_toys.TinyExtractor", "channels": 32},
        meta_arch={"_target_": "measure_toys.TinyDetector"},
        num_classes=3,
        optimizer=OptimizerSpec({"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9}),
        train_batch_size=2,
    )


def test_fresh_process_peaks_are_positive_and_bounded(toy_recipe):
    torch.manual_seed(0)
    model = TinyDetector(extractor=TinyExtractor(channels=32), num_classes=3)
    inf, train = fresh_process_peaks(
        model,
        toy_recipe,
        probes=[("inference", 1), ("train", 16)],
        shape=(256, 256),
        device=CPU,
        settings=BenchSettings(),
        budget_mb=80.0,
    )
    # The first conv's output alone is 32 x 128 x 128 floats = 2 MiB.
    assert inf["peak_mb"] > 1.0 and inf["method"] == "cpu_peak_rss_increase_fresh_process"
    assert inf["value"] > 0  # the child's first-call time
    assert inf["source"] == "measured" and inf["probe_batch_size"] == 1
    # A training step holds at least the first conv's and ReLU's 2 MiB outputs per image at
    # once (64 MiB at batch 16); its bound from batch 2 exceeds 80 MiB, so the value is
    # extrapolated from batches that fit.
    assert train["source"] == "extrapolated" and train["batch_size"] == 16
    assert 2 < train["probe_batch_size"] < 16 and "extrapolated linearly" in train["note"]
    assert train["peak_mb"] > 16 * 4.0 and train["peak_mb"] > inf["peak_mb"]


def test_fresh_process_probe_that_hits_the_limit_is_null_with_the_reason(toy_recipe):
    """A budget below the smallest batch: the child's RLIMIT_DATA stops the allocation and
    both probes say so; the child itself ends normally (no OOM kill, no crash)."""
    model = TinyDetector(extractor=TinyExtractor(channels=32), num_classes=3)
    inf, train = fresh_process_peaks(
        model,
        toy_recipe,
        probes=[("inference", 1), ("train", 16)],
        shape=(256, 256),  # one input image alone is 3 x 256 x 256 floats = 0.75 MiB
        device=CPU,
        settings=BenchSettings(),
        budget_mb=0.5,
    )
    for out, first in ((inf, 1), (train, 2)):
        assert out["peak_mb"] is None and out["source"] is None and out["budget_mb"] == 0.5
        assert out["note"].startswith(f"not measured: batch {first} hit the memory limit")
        assert "RuntimeError: [enforce fail" in out["note"] or "MemoryError" in out["note"]


def test_a_child_that_dies_keeps_the_probes_before(toy_recipe):
    """The child reports after each probe: when it dies in the training step, the inference
    peak survives and the training peak is null with the exit code."""
    recipe = dataclasses.replace(toy_recipe, meta_arch={"_target_": "measure_toys.KilledDetector"})
    model = TinyDetector(extractor=TinyExtractor(channels=32), num_classes=3)
    inf, train = fresh_process_peaks(
        model,
        recipe,
        probes=[("inference", 1), ("train", 4)],
        shape=(64, 64),
        device=CPU,
        settings=BenchSettings(),
        budget_mb=1000.0,
    )
    assert inf["source"] == "measured" and inf["peak_mb"] > 0
    assert train["peak_mb"] is None and train["batch_size"] == 4
    assert f"failed with code {-signal.SIGKILL}" in train["note"]


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


@pytest.mark.parametrize("bounded", [False, True])
def test_in_process_train_step_sees_its_allocations_and_restores_the_model(bounded):
    torch.manual_seed(0)
    model = HungryDetector(extractor=TinyExtractor(), num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"device": CPU, "settings": BenchSettings()}
    if bounded:  # two training steps (batch 2 for the estimate, then 4), one restore
        _, out = in_process_peaks(
            model, [("inference", 1), ("train", 4)], shape=(64, 64), budget_mb=10_000.0, **kw
        )
        assert out["source"] == "measured" and out["probe_batch_size"] == 4
    else:
        out = in_process_peak(model, mode="train", batch_size=2, image_size=(64, 64), **kw)
    # The buffer is alive inside the step, so the peak increase is at least its size (peak_mb
    # is clamped at 0, so ">= 0" could never fail); the toy's own tensors are far smaller.
    assert BIG_MIB <= out["peak_mb"] < 3 * BIG_MIB, out["peak_mb"]
    assert out["method"].startswith("cpu_peak_rss_increase")
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
