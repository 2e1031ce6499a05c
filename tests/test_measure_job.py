"""End to end: profile-only jobs (in-process) write every measurement key; the stability command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)

from benchmark.job import run_job

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic",
    "data.num_train=16",
    "data.num_val=8",
    "data.image_size=96",
    "train.max_iters=0",
    "train.batch_size=2",
    "bench.warmup=1",
    "bench.num_images=12",
    "bench.min_seconds=0",  # exactly 12 timed images: p90 and the median's interval, no p99
    "bench.throughput_batch_size=2",
    "bench.throughput_iters=1",
    "progress=false",
    "num_threads=1",  # see measure_toys.one_thread
]
# Keys with a value on every CPU result (CUDA-only and accuracy keys are null here).
FILLED = (
    "latency_ms",
    "latency_ms_ci_low",
    "latency_ms_ci_high",
    "latency_ms_p90",
    "latency_ms_p99_note",
    "latency_ms_std",
    "cold_start_ms",
    "preprocess_ms",
    "predict_ms",
    "postprocess_ms",
    "throughput_ips",
    "timing_n",
    "gmacs",
    "gmacs_extractor",
    "gmacs_neck",
    "gmacs_head",
    "peak_mem_mb",
    "train_peak_mem_mb",
    "params",
    "params_trainable",
    "num_anchors",
    "peak_gemm_gflops",
    "peak_conv_gflops",
    "achieved_gflops",
    "peak_fraction",
    "device",
    "device_name",
    "cpu_model",
    "torch_version",
    "torchvision_version",
    "timm_version",
    "num_threads",
    "precision",
    "cuda_version",
    "cudnn_version",
    "weights_mb",
    "peak_mem_method",
    "cold_start_fresh_process_ms",
)
PRESENT = (
    "flops_uncounted_ops",
    "flops_num_proposals",
    "peak_mem_reserved_mb",
    "gpu_driver",
    "cudnn_benchmark",
    "tf32_matmul",
    "tf32_cudnn",
    "git_sha",
    "map",
    "map_50",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One roofline cache for the module, so the peak is measured once."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def cache(cache_dir, monkeypatch) -> str:
    monkeypatch.setenv("DETBENCH_CACHE", cache_dir)
    return cache_dir


def detbench(out: Path, overrides: list[str]) -> dict:
    """A profile-only job run in this process, as ``detbench`` runs it (same config, same
    ``run_job``), without a Python start-up per job; the CLI itself is exercised by the smoke
    sweep and the scale-out tests."""
    with initialize_config_module(config_module="sweeps", version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    result = run_job(cfg, out, progress=False)
    assert result == json.loads((out / "result.json").read_text())
    assert result["status"] == "ok", result.get("error")
    return result


def check_complete(result: dict, out: Path) -> None:
    assert result["measure_errors"] == {}
    missing = [k for k in FILLED if result.get(k) is None]
    assert not missing, missing
    assert all(k in result for k in PRESENT)
    assert (
        result["map"] is None and result["train_iters"] == 0
    )  # profile-only: accuracy not measured
    assert result["latency_ms_ci_low"] <= result["latency_ms"] <= result["latency_ms_ci_high"]
    assert result["latency_ms"] <= result["latency_ms_p90"] and result["latency_ms_p99"] is None
    stages = result["preprocess_ms"] + result["predict_ms"] + result["postprocess_ms"]
    assert stages == pytest.approx(result["latency_ms"], rel=0.05)
    assert result["gmacs"] > 0 and 0 < result["peak_fraction"] < 2
    parts = result["gmacs_extractor"] + result["gmacs_neck"] + result["gmacs_head"]
    assert parts == pytest.approx(result["gmacs"], rel=1e-9) and result["gmacs_extractor"] > 0
    assert result["peak_mem_mb"] > 0 and result["train_peak_mem_mb"] > result["peak_mem_mb"]
    # Within the budget (half the free memory): both measured at the batch they are for.
    assert result["mem_budget_mb"] > 0 and result["input_shape"] == [96, 96]
    assert result["peak_mem_source"] == result["train_mem_source"] == "measured"
    assert result["train_mem_batch_size"] == result["train_mem_probe_batch_size"] == 2
    assert result["timing_n"] == 12 and result["input_size"] == [96, 96]
    samples = json.loads((out / "latency_samples.json").read_text())
    assert len(samples["end_to_end_ms"]) == 12


def test_profile_only_ssd_job(tmp_path, cache):
    out = tmp_path / "ssd"
    result = detbench(out, ["meta_arch=ssd", "extractor=mobilenet_v3_small", *TINY])
    check_complete(result, out)
    assert result["extractor"] == "mobilenet_v3_small" and result["flops_uncounted_ops"] == []


def test_torchvision_reference_job(tmp_path, cache):
    out = tmp_path / "tv"
    result = detbench(
        out, ["meta_arch=torchvision", "meta_arch.name=ssdlite320_mobilenet_v3_large", *TINY]
    )
    check_complete(result, out)
    assert result["meta_arch"] == "torchvision" and result["extractor"] == "mobilenet_v3_large"
    assert result["reference_model"] == "ssdlite320_mobilenet_v3_large"


def test_stability_command(tmp_path, cache, monkeypatch, capsys):
    """``python -m benchmark.stability`` (its ``main``, in-process to save a Python start-up)."""
    monkeypatch.chdir(tmp_path)
    summary = tmp_path / "stability.json"
    from benchmark.stability import main

    main(
        [
            "meta_arch=ssd",
            "extractor=mobilenet_v3_small",
            *TINY,
            "--runs",
            "2",
            "--json",
            str(summary),
        ]
    )
    assert "relative spread" in capsys.readouterr().out
    data = json.loads(summary.read_text())
    assert len(data["runs"]) == 2
    s = data["latency_ms"]
    assert 0 < s["min"] <= s["median"] <= s["max"] and s["relative_spread"] >= 0
