"""End to end: profile-only ``detbench`` runs write every measurement key; the stability command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)

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
def env(tmp_path_factory):
    """Subprocess environment: one roofline cache for the module, so the peak is measured once."""
    return {**os.environ, "DETBENCH_CACHE": str(tmp_path_factory.mktemp("cache"))}


def detbench(out: Path, overrides: list[str], env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", *overrides, f"hydra.run.dir={out}"],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode == 0 and result["status"] == "ok", (
        result.get("error"),
        proc.stderr[-3000:],
    )
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
    assert result["peak_mem_mb"] > 0 and result["train_peak_mem_mb"] > result["peak_mem_mb"]
    # Within the budget (half the free memory): both measured at the batch they are for.
    assert result["mem_budget_mb"] > 0 and result["input_shape"] == [96, 96]
    assert result["peak_mem_source"] == result["train_mem_source"] == "measured"
    assert result["train_mem_batch_size"] == result["train_mem_probe_batch_size"] == 2
    assert result["timing_n"] == 12 and result["input_size"] == [96, 96]
    samples = json.loads((out / "latency_samples.json").read_text())
    assert len(samples["end_to_end_ms"]) == 12


def test_profile_only_ssd_job(tmp_path, env):
    out = tmp_path / "ssd"
    result = detbench(out, ["meta_arch=ssd", "extractor=mobilenet_v3_small", *TINY], env)
    check_complete(result, out)
    assert result["extractor"] == "mobilenet_v3_small" and result["flops_uncounted_ops"] == []


def test_torchvision_reference_job(tmp_path, env):
    out = tmp_path / "tv"
    result = detbench(
        out, ["meta_arch=torchvision", "meta_arch.name=ssdlite320_mobilenet_v3_large", *TINY], env
    )
    check_complete(result, out)
    assert result["meta_arch"] == "torchvision" and result["extractor"] == "mobilenet_v3_large"
    assert result["reference_model"] == "ssdlite320_mobilenet_v3_large"


def test_stability_command(tmp_path, env, monkeypatch, capsys):
    """``python -m benchmark.stability`` (its ``main``, in-process to save a Python start-up)."""
    monkeypatch.setenv("DETBENCH_CACHE", env["DETBENCH_CACHE"])
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
