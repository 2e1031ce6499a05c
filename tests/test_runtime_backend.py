"""``bench.backend``: ONNX Runtime timed like eager, output parity, the backend as an axis."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
import torch
from hydra import compose, initialize_config_module
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)
from torchvision.ops import ps_roi_align

from benchmark.config_checks import SettingsError, check_settings
from benchmark.device import Device
from benchmark.identity import fingerprint, identity_config
from benchmark.job import run_job
from benchmark.measure.runtime import OnnxPredict
from benchmark.measure.settings import BenchSettings
from benchmark.report.backends import backend_table
from benchmark.report.table import results_table
from models.box_ops import BoxCoder
from models.heads.proposals import generate_proposals
from models.heads.rfcn import ps_roi_align_votes

ROOT = Path(__file__).resolve().parents[1]
META_ARCHS = sorted(p.stem for p in (ROOT / "sweeps" / "meta_arch").glob("*.yaml"))
TINY = [
    "data=synthetic",
    "data.num_train=4",
    "data.num_val=4",
    "data.gen_size=64",
    "data.image_size=64",
    "train.max_iters=0",
    "bench.warmup=1",
    "bench.num_images=4",
    "bench.min_seconds=0",
    "bench.parity_images=4",
    "progress=false",
    "num_threads=1",
    "timing_lock=false",
    *(f"bench.enabled.{k}=false" for k in ("throughput", "flops", "memory", "roofline")),
]


def _cfg(tmp_path: Path, *overrides: str, hydra: bool = False):
    with initialize_config_module("sweeps", version_base="1.3"):
        return compose(
            "config",
            overrides=[*TINY, f"data.root={tmp_path / 'data'}", *overrides],
            return_hydra_config=hydra,
        )


# -- the pieces that make the export possible -------------------------------------------------
@pytest.mark.parametrize(("bins", "sampling_ratio"), [(7, 3), (3, 4)])
def test_ps_roi_align_decomposition_matches_torchvision(bins, sampling_ratio):
    """R-FCN's export path (RoIAlign on per-bin sub-boxes) takes the same samples as
    torchvision's PS-RoIAlign: equal votes, including a degenerate thin RoI."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, bins * bins * 5, 20, 24, generator=g)
    xy = torch.rand(30, 2, generator=g) * 300
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), xy, xy + 80], dim=1)
    rois[0, 1:] = torch.tensor([10.0, 10.0, 10.5, 40.0])
    expected = ps_roi_align(maps, rois, bins, 1 / 16, sampling_ratio).mean(dim=(2, 3))
    got = ps_roi_align_votes(maps, rois, bins, 1 / 16, sampling_ratio)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_single_image_proposals_equal_the_batched_path():
    """Batch 1 (the exported path) proposes what the batched path proposes for that image."""
    g = torch.Generator().manual_seed(1)
    anchors = torch.rand(400, 2, generator=g) * 100
    anchors = torch.cat([anchors, anchors + 8 + torch.rand(400, 2, generator=g) * 30], dim=1)
    logits = torch.randn(2, 400, generator=g)
    deltas = torch.randn(2, 400, 4, generator=g) * 0.1
    kw = dict(coder=BoxCoder((10.0, 10.0, 5.0, 5.0)), pre_nms_topk=300, nms_threshold=0.5)
    for n in (50, 350):  # fewer and more proposals than survive NMS
        batched = generate_proposals(logits, deltas, anchors, (140, 140), num_proposals=n, **kw)
        single = generate_proposals(
            logits[:1], deltas[:1], anchors, (140, 140), num_proposals=n, **kw
        )
        for a, b in zip(single, batched, strict=True):
            torch.testing.assert_close(a[0], b[0])
        assert 0 < int(single.valid.sum()) < n or n == 50


# -- settings, identity, folders ----------------------------------------------------------------
def test_backend_settings():
    assert BenchSettings(compile=True).backend == "compile"  # the old flag still works
    assert BenchSettings(backend="compile").compile is True
    with pytest.raises(ValueError, match="contradicts bench.backend=onnxruntime"):
        BenchSettings(backend="onnxruntime", compile=True)
    with pytest.raises(ValueError, match="channels_last"):
        BenchSettings(backend="onnxruntime", channels_last=True)
    with pytest.raises(ValueError, match="bench.backend must be one of"):
        BenchSettings(backend="tflite")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Device.from_spec("cpu").onnx_providers("onnxruntime_tensorrt")
    assert Device.from_spec("cpu").onnx_providers() == [("CPUExecutionProvider", {})]


def test_backend_is_checked_and_part_of_identity_and_folder(tmp_path):
    with pytest.raises(SettingsError, match="bench.backend must be one of .*got 'tflite'"):
        check_settings(_cfg(tmp_path, "bench.backend=tflite"))
    eager = _cfg(tmp_path, hydra=True)
    ort = _cfg(tmp_path, "bench.backend=onnxruntime", hydra=True)
    assert fingerprint(identity_config(eager)) != fingerprint(identity_config(ort))
    assert "bench.backend=onnxruntime" in str(ort.hydra.run.dir)
    assert str(eager.hydra.run.dir) != str(ort.hydra.run.dir)


# -- the runtime on a toy detector (seconds) ---------------------------------------------------
def test_toy_detector_runs_in_onnxruntime_with_static_shapes(one_thread):  # noqa: F811
    from measure_toys import TinyDetector, TinyExtractor

    from benchmark.measure.fastpath import prepare_inference
    from benchmark.measure.parity import compare_outputs, parity_failures

    device = Device.from_spec("cpu")
    torch.manual_seed(0)
    model = TinyDetector(extractor=TinyExtractor(), num_classes=3).eval()
    images = [(torch.rand(3, 48, 64), {}) for _ in range(3)]
    settings = BenchSettings(backend="onnxruntime", parity_images=3)
    fast, _ = prepare_inference(model, settings, device, [images[0][0]])
    assert fast.predict.result_keys()["runtime_providers"] == ["CPUExecutionProvider"]
    keys = compare_outputs(model, fast, images, device, settings)
    assert keys["parity_images"] == 3 and not parity_failures(keys, None)
    assert 0 <= keys["parity_max_abs_diff"]["outputs"] <= 1e-4
    with pytest.raises(ValueError, match=r"no ONNX graph for input shape \[1, 3, 64, 48\]"):
        fast.predict(model.preprocess([torch.rand(3, 64, 48)]).tensor)
    # a runtime that is off is caught: the same check with a shifted output
    shifted = {**keys, "parity_max_abs_diff": {**keys["parity_max_abs_diff"], "boxes": 0.5}}
    assert parity_failures(shifted, None) == ["boxes differ by 0.5 > 0.05"]
    assert parity_failures(keys, eager_map=0.30) == []  # no runtime AP: nothing to compare
    assert parity_failures({**keys, "parity_map": 0.29}, eager_map=0.30) == [
        "AP 0.2900 vs eager 0.3000 (tolerance 0.005)"
    ]


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow  # the export alone takes ~10 s on a 2-core CPU
def test_onnxruntime_job_is_timed_in_the_runtime(tmp_path, monkeypatch, one_thread):  # noqa: F811
    calls = []
    run = OnnxPredict.__call__
    monkeypatch.setattr(OnnxPredict, "__call__", lambda s, x, t=None: calls.append(1) or run(s, x))
    cfg = _cfg(
        tmp_path, "meta_arch=ssd", "extractor=mobilenet_v3_small", "bench.backend=onnxruntime"
    )
    r = run_job(cfg, tmp_path / "job", progress=False)
    assert r["status"] == "ok", r["error"]
    assert r["backend"] == "onnxruntime" and r["backend_version"] == onnxruntime.__version__
    assert r["runtime_providers"] == ["CPUExecutionProvider"]
    assert r["parity_images"] == 4
    diff = r["parity_max_abs_diff"]
    assert 0 <= diff["boxes"] <= 0.05 and 0 <= diff["scores"] <= 1e-3
    assert r["parity_map"] is None  # profile-only: no accuracy to compare
    # parity (4 images), cold + warm-up (2) and the timed calls all ran in the runtime
    assert len(calls) == 4 + 2 + r["timing_n"] and r["latency_ms"] > 0 and r["predict_ms"] > 0


@pytest.mark.slow
def test_parity_failure_fails_the_job_untimed(tmp_path, monkeypatch, one_thread):  # noqa: F811
    """A runtime whose boxes are off (a wrong export) fails with the numbers, never timed."""
    run = OnnxPredict.__call__

    def shifted(self, images, targets=None):
        out = run(self, images)
        out["box_deltas"] = out["box_deltas"] + 0.5  # x/y offsets of 0.05 anchor widths
        return out

    monkeypatch.setattr(OnnxPredict, "__call__", shifted)
    # One training step: the job evaluates, so the runtime's own AP is computed too.
    cfg = _cfg(
        tmp_path,
        "meta_arch=ssd",
        "extractor=mobilenet_v3_small",
        "bench.backend=onnxruntime",
        "train.max_iters=1",
        "train.batch_size=2",
        "train.warmup_iters=0",
    )
    r = run_job(cfg, tmp_path / "job", progress=False)
    assert r["status"] == "failed" and r["error"].startswith("ParityError")
    assert r["parity_max_abs_diff"]["boxes"] > 0.05 and "boxes differ by" in r["error"]
    assert 0.0 <= r["parity_map"] <= 1.0  # recorded with the failure
    assert r.get("latency_ms") is None and r["backend"] == "onnxruntime"


@pytest.mark.slow
@pytest.mark.parametrize("meta_arch", META_ARCHS)
def test_every_meta_architecture_runs_in_onnxruntime(tmp_path, meta_arch, one_thread):  # noqa: F811
    extractor = "mobilenet_v3_large_tv" if meta_arch == "torchvision" else "mobilenet_v3_small"
    cfg = _cfg(
        tmp_path, f"meta_arch={meta_arch}", f"extractor={extractor}", "bench.backend=onnxruntime"
    )
    r = run_job(cfg, tmp_path / "job", progress=False)
    assert r["status"] in ("ok", "skipped"), r["error"]
    if r["status"] == "skipped":
        assert r["error"]
    else:
        assert r["parity_max_abs_diff"]["boxes"] <= 0.05 and r["runtime_export_seconds"] > 0


# -- the report axis ------------------------------------------------------------------------------
def _record(backend: str | None, latency: float, size: int, **extra) -> dict:
    bench = {"backend": backend} if backend else {"compile": extra.pop("compile", False)}
    return {
        "status": "ok",
        "meta_arch": "ssd",
        "extractor": "resnet18",
        "image_size": size,
        "latency_ms": latency,
        "predict_ms": latency / 2,
        "map": 0.3,
        "config": {"meta_arch": {"name": "ssd"}, "data": {"image_size": size}, "bench": bench},
        **({"backend": backend} if backend else {}),
        **extra,
    }


def test_report_pairs_backends_per_configuration():
    records = [
        _record(None, 10.0, 128),  # an old result: no backend key, no compile -> eager
        _record("onnxruntime", 4.0, 128, parity_max_abs_diff={"boxes": 0.01}),
        _record(None, 8.0, 128, compile=True),  # the old flag: compile
        _record("eager", 20.0, 256),  # timed in one backend only: no row
    ]
    df = results_table(records)
    assert list(df.sort_values("latency_ms")["backend"]) == [
        "onnxruntime",
        "compile",
        "eager",
        "eager",
    ]
    table = backend_table(df)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["latency_ms[eager]"] == 10.0 and row["latency_ms[onnxruntime]"] == 4.0
    assert row["onnxruntime / eager"] == pytest.approx(0.4)
    assert row["compile / eager"] == pytest.approx(0.8)
    assert row["parity_boxes_px[onnxruntime]"] == 0.01
    assert "onnxruntime" not in row["configuration"]


# -- GPU: the CUDA and TensorRT execution providers -------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime_tensorrt"])
def test_gpu_providers_run_the_export(backend):
    from measure_toys import TinyDetector, TinyExtractor

    from benchmark.measure.fastpath import prepare_inference
    from benchmark.measure.parity import compare_outputs, parity_failures

    provider = {"onnxruntime": "CUDAExecutionProvider"}.get(backend, "TensorrtExecutionProvider")
    if provider not in onnxruntime.get_available_providers():
        pytest.skip(f"this onnxruntime build has no {provider} (install onnxruntime-gpu)")
    device = Device.from_spec("cuda")
    torch.manual_seed(0)
    model = TinyDetector(extractor=TinyExtractor(), num_classes=3).to(device.torch_device).eval()
    images = [(torch.rand(3, 64, 64), {}) for _ in range(3)]
    settings = BenchSettings(backend=backend, parity_images=3)
    fast, _ = prepare_inference(model, settings, device, [images[0][0].cuda()])
    assert fast.predict.result_keys()["runtime_providers"][0] == provider
    assert not parity_failures(compare_outputs(model, fast, images, device, settings), None)
