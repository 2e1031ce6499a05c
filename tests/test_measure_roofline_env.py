"""Roofline peak caching and arithmetic; environment keys."""

from __future__ import annotations

import json

import pytest
import torch
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)

from benchmark.device import Device
from benchmark.measure import roofline
from benchmark.measure.environment import environment

CPU = Device.from_spec("cpu")


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DETBENCH_CACHE", str(tmp_path))
    calls = []
    real = roofline.measure_peaks

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(roofline, "measure_peaks", counting)
    first = roofline.device_peaks(CPU, "fp32", seconds=0.05)
    second = roofline.device_peaks(CPU, "fp32", seconds=0.05)
    assert len(calls) == 1 and not first["roofline_cached"] and second["roofline_cached"]
    path = tmp_path / f"roofline-{CPU.cache_key}-fp32.json"
    assert second["roofline_cache"] == str(path) and path.exists()
    assert f"t{torch.get_num_threads()}" in path.name  # CPU peaks depend on the thread count
    cached = json.loads(path.read_text())
    assert cached["peak_gemm_gflops"] == first["peak_gemm_gflops"] > 0
    assert cached["peak_conv_gflops"] > 0
    # A peak first measured on a busy machine is raised by a later, better refresh probe ...
    path.write_text(json.dumps({**cached, "peak_conv_gflops": 1e-3}))
    healed = roofline.device_peaks(CPU, "fp32", seconds=0.05, refresh_seconds=0.01)
    assert len(calls) == 2 and healed["peak_conv_gflops"] > 1e-3
    assert healed["peak_gemm_gflops"] >= cached["peak_gemm_gflops"]  # never lowered
    assert json.loads(path.read_text())["peak_conv_gflops"] == healed["peak_conv_gflops"]
    # ... and another torch version measures again.
    path.write_text(json.dumps({**cached, "torch_version": "0.0"}))
    assert not roofline.device_peaks(CPU, "fp32", seconds=0.05)["roofline_cached"]
    assert len(calls) == 3


def test_roofline_keys():
    peaks = {"peak_gemm_gflops": 100.0, "peak_conv_gflops": 200.0}
    keys = roofline.roofline_keys(peaks, gmacs=1.0, predict_ms=20.0)
    assert keys["achieved_gflops"] == pytest.approx(100.0)  # 2 GFLOP in 20 ms
    assert keys["peak_fraction"] == pytest.approx(0.5)
    assert (
        roofline.roofline_keys(peaks, gmacs=1.0, predict_ms=40.0, images_per_call=2)[
            "peak_fraction"
        ]
        == 0.5
    )
    assert roofline.roofline_keys(None, None, None) == dict.fromkeys(
        ("peak_gemm_gflops", "peak_conv_gflops", "achieved_gflops", "peak_fraction")
    )


def test_environment_keys():
    env = environment(CPU, "fp32")
    for key in (
        "device",
        "device_name",
        "cpu_model",
        "num_threads",
        "num_interop_threads",
        "precision",
        "torch_version",
        "torchvision_version",
        "timm_version",
        "cuda_version",
        "cudnn_version",
        "gpu_driver",
        "cudnn_benchmark",
        "tf32_matmul",
        "tf32_cudnn",
        "git_sha",
    ):
        assert key in env, key
    assert env["device"] == "cpu" and env["precision"] == "fp32" and env["gpu_driver"] is None
    assert env["num_threads"] == torch.get_num_threads() and env["timm_version"]
    assert isinstance(env["cudnn_benchmark"], bool)
    json.dumps(env)  # plain data
