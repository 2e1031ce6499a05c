"""The memory bound's decisions (benchmark/measure/memory_bound.py), on fake probes and fake
free memory, and the hard limit that backs it (Device.memory_limit).

A fake probe's peak is ``fixed + per_image * batch`` MiB (plus a one-time extra on its first,
cold, call), so every expected number below is a hand computation from those two constants.
"""

from __future__ import annotations

import pytest
import torch

import benchmark.device
from benchmark.device import Device
from benchmark.measure.memory_bound import bounded_peak, input_mb, memory_budget_mb

CPU = Device.from_spec("cpu")
OOM = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"


class FakeProbe:
    """``run(b)`` for :func:`bounded_peak`: linear peaks; raises like torch's CPU allocator
    above ``limit_mb`` (the guard); records every batch it was asked to run."""

    def __init__(self, fixed, per_image, cold_extra=0.0, limit_mb=None, input_per_image=0.0):
        self.fixed, self.per_image, self.cold_extra = fixed, per_image, cold_extra
        self.limit_mb, self.input_per_image = limit_mb, input_per_image
        self.calls: list[int] = []
        self.costs: list[float] = []  # what each call really took: peak + inputs

    def __call__(self, b: int) -> dict:
        self.calls.append(b)
        peak = self.fixed + self.per_image * b + (self.cold_extra if len(self.calls) == 1 else 0)
        self.costs.append(peak + b * self.input_per_image)
        if self.limit_mb is not None and self.costs[-1] > self.limit_mb:
            raise RuntimeError(f"{OOM}: you tried to allocate {int(peak * 2**20)} bytes")
        return {"peak_mb": peak, "reserved_mb": None, "method": "fake", "value": len(self.calls)}


def test_a_target_that_fits_is_measured_after_the_smallest_batch():
    run = FakeProbe(fixed=100, per_image=50)
    out = bounded_peak(run, 32, budget_mb=10_000, smallest=2)
    # batch 2 costs 200 MiB, so batch 32 costs at most 16 x 200 = 3200 <= 10000: run it.
    assert run.calls == [2, 32]
    assert out["peak_mb"] == 100 + 50 * 32 and out["source"] == "measured"
    assert out["batch_size"] == out["probe_batch_size"] == 32 and out["note"] is None
    assert out["value"] == 1 and out["method"] == "fake"  # the cold call's value


def test_a_target_over_the_budget_is_extrapolated_from_batches_that_fit():
    run = FakeProbe(fixed=100, per_image=50, cold_extra=50)
    out = bounded_peak(run, 32, budget_mb=1000, smallest=2)
    # cold batch 2: 250 -> bound 4000 > 1000; warm batch 2: 200 -> 100 per image -> batch
    # floor(1000 / 100) = 10 (600 MiB); the line through (2, 200) and (10, 600) gives
    # 600 + 22 * 50 = 1700 = fixed + 32 * per_image at batch 32. (With the cold point the
    # slope would be 43.75 and the value 1562.5: the warm repeat is what makes it exact.)
    assert run.calls == [2, 2, 10] and max(run.costs) <= 1000
    assert out["peak_mb"] == pytest.approx(1700) and out["source"] == "extrapolated"
    assert out["batch_size"] == 32 and out["probe_batch_size"] == 10
    assert "batches 2 (200 MiB) and 10 (600 MiB)" in out["note"]


def test_inputs_count_against_the_budget():
    run = FakeProbe(fixed=100, per_image=50, input_per_image=50)
    out = bounded_peak(run, 32, budget_mb=1000, smallest=2, input_mb_per_image=50)
    # batch 2 costs 200 + 100 of inputs = 150 per image -> floor(1000 / 150) = 6.
    assert run.calls == [2, 2, 6] and max(run.costs) <= 1000
    assert out["peak_mb"] == pytest.approx(1700) and out["probe_batch_size"] == 6


@pytest.mark.parametrize(
    ("budget", "extrapolate", "reason"),
    [
        (250, True, "and so would batch 3"),  # warm batch 2 = 100 per image: only 2 fits
        (1000, False, "bench.memory_extrapolate=false"),
    ],
)
def test_no_extrapolation_gives_null_with_the_reason(budget, extrapolate, reason):
    run = FakeProbe(fixed=100, per_image=50)
    out = bounded_peak(run, 32, budget_mb=budget, smallest=2, extrapolate=extrapolate)
    assert run.calls == [2, 2]
    assert out["peak_mb"] is None and out["source"] is None and out["probe_batch_size"] == 2
    assert out["note"].startswith("not measured: batch 32 would need up to 3200 MiB")
    assert reason in out["note"]


def test_peaks_that_do_not_grow_are_not_extrapolated():
    run = FakeProbe(fixed=400, per_image=0)
    out = bounded_peak(run, 32, budget_mb=1000, smallest=2)
    # warm batch 2 = 400 -> 200 per image -> batch 5, also 400: a flat line says nothing.
    assert run.calls == [2, 2, 5] and out["peak_mb"] is None
    assert "do not grow" in out["note"]


def test_the_guard_turns_a_misestimate_into_null_with_the_reason():
    # The bound says batch 32 fits (16 x 200 <= 10000), but the memory limit stops it.
    run = FakeProbe(fixed=100, per_image=50, limit_mb=1000)
    out = bounded_peak(run, 32, budget_mb=10_000, smallest=2)
    assert run.calls == [2, 32] and out["peak_mb"] is None and out["source"] is None
    assert out["probe_batch_size"] == 2  # the largest batch that ran
    assert out["note"].startswith("not measured: batch 32 hit the memory limit")
    assert "can't allocate memory" in out["note"]


def test_other_errors_are_not_taken_for_memory():
    def broken(b):
        raise ValueError("Expected more than 1 value per channel when training")

    with pytest.raises(ValueError, match="per channel"):
        bounded_peak(broken, 8, budget_mb=1000)


def test_unknown_free_memory_probes_the_target_directly():
    run = FakeProbe(fixed=100, per_image=50)
    out = bounded_peak(run, 32, budget_mb=None, smallest=2)
    assert run.calls == [32] and out["peak_mb"] == 1700 and out["source"] == "measured"


def test_batch_one_is_one_call():
    run = FakeProbe(fixed=10, per_image=5)
    out = bounded_peak(run, 1, budget_mb=1000)
    assert run.calls == [1] and out["peak_mb"] == 15 and out["probe_batch_size"] == 1


def test_retinanet_at_800_px_is_extrapolated_not_oom_killed(tmp_path, monkeypatch):
    """Issue 13's case, decided with a fake MemAvailable instead of run: a training step of
    torchvision's retinanet_resnet50_fpn at 800 px grew to 23 GB at batch 32, modelled as
    23 GiB / 32 = 736 MiB per image, on this machine's 22,201,884 kB of MemAvailable."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683584 kB\nMemAvailable:   22201884 kB\n")
    monkeypatch.setattr(benchmark.device, "MEMINFO", str(meminfo))
    budget = memory_budget_mb(CPU, 0.5)
    assert budget == pytest.approx(0.5 * 22201884 / 1024)  # 10840.8 MiB
    image = input_mb(1, (800, 800))  # 3 x 800 x 800 float32 = 7.32 MiB
    run = FakeProbe(fixed=0, per_image=23 * 1024 / 32, input_per_image=image)
    out = bounded_peak(run, 32, budget, smallest=2, input_mb_per_image=image)
    # batch 2: 2 x 743.3 MiB with inputs -> floor(10840.8 / 743.3) = 14 -> 10304 MiB,
    # extrapolated along 736 MiB per image to 23552 MiB = 23 GiB.
    assert run.calls == [2, 2, 14] and max(run.costs) <= budget
    assert out["peak_mb"] == pytest.approx(23 * 1024) and out["source"] == "extrapolated"
    assert out["probe_batch_size"] == 14 and out["batch_size"] == 32


def test_free_memory_reads_mem_available(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2048 kB\nMemFree: 512 kB\nMemAvailable: 1024 kB\n")
    monkeypatch.setattr(benchmark.device, "MEMINFO", str(meminfo))
    assert CPU.free_memory_mb() == 1.0
    monkeypatch.setattr(benchmark.device, "MEMINFO", str(tmp_path / "missing"))
    assert CPU.free_memory_mb() is None and memory_budget_mb(CPU, 0.5) is None


def test_cpu_memory_limit_fails_allocations_beyond_it_and_is_lifted_after():
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    with CPU.memory_limit(64) as enforced:
        assert enforced
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            torch.empty(256 * 2**20, dtype=torch.uint8)  # 256 MiB > 64 MiB
        small = torch.empty(8 * 2**20, dtype=torch.uint8)  # 8 MiB fits
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    big = torch.empty(256 * 2**20, dtype=torch.uint8)
    assert big.numel() == 256 * 2**20 and small.numel() == 8 * 2**20


def test_memory_settings_are_checked():
    from benchmark.measure.settings import BenchSettings

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="bench.memory_max_fraction must be in"):
            BenchSettings(memory_max_fraction=bad)
    with pytest.raises(ValueError, match="bench.train_batch_size must be >= 1"):
        BenchSettings(train_batch_size=0)
    assert BenchSettings(memory_max_fraction=1.0).memory_extrapolate
