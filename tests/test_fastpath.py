"""Inference fast paths (benchmark/measure/fastpath.py): every one gives the plain path's
outputs within float tolerance, and a failing torch.compile falls back with a note."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)
from timm.layers import BatchNormAct2d
from torch import nn

from benchmark.device import Device
from benchmark.measure.fastpath import fold_batchnorm, outputs_close, prepare_inference
from benchmark.measure.latency import inference_context, timed_call
from benchmark.measure.settings import BenchSettings
from models.extractors import TimmExtractor
from models.meta_arch.single_shot import SSD
from models.necks.ssd_extra import SSDExtraLayers

CPU = Device.from_spec("cpu")
PLAIN = BenchSettings(fold_bn=False, channels_last=False, compile=False)


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial statistics, so folding is really exercised (fresh BN is the identity)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(scope="module")
def ssd():
    """SSD + timm MobileNetV3 (BatchNormAct2d, depthwise convs, SE), BN extra layers."""
    torch.manual_seed(0)
    extractor = TimmExtractor(model_name="mobilenetv3_large_100")
    model = SSD(
        extractor=extractor,
        num_classes=3,
        neck=lambda info: SSDExtraLayers(info, depths=[64, 64], separable=True),
    )
    _randomize_bn(model)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 96, generator=g)]


def _detect(model, images, settings):
    with inference_context(settings):
        return timed_call(model, images, CPU, settings)[1]


def _predict(model, images, settings=PLAIN):
    with torch.inference_mode():
        x = model.preprocess(images).tensor
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model.predict(x)


def test_fold_bn_matches_plain(ssd, images):
    fast, notes = prepare_inference(ssd, dataclasses.replace(PLAIN, fold_bn=True), CPU, images)
    assert fast is not ssd and notes["fold_bn_note"] is None
    # Every BN of the extractor, extra layers and head follows a conv: all folded.
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ssd.modules())
    assert notes["fold_bn_folded"] == n_bn > 50
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    assert outputs_close(_predict(fast, images), _predict(ssd, images))
    a, b = _detect(fast, images, PLAIN), _detect(ssd, images, PLAIN)
    torch.testing.assert_close(a[0]["scores"], b[0]["scores"], rtol=1e-4, atol=1e-5)
    # The job's own model is untouched.
    assert any(isinstance(m, BatchNormAct2d) for m in ssd.modules())


def test_fold_bn_skips_shared_and_non_adjacent_pairs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            # conv's output also feeds the residual: folding would change it.
            z = self.bn(y) + y
            return self.bn2(torch.relu(self.conv2(z)))  # ReLU between conv2 and bn2

    net = Net().eval()
    _randomize_bn(net)
    x = torch.rand(1, 3, 8, 8)
    assert fold_batchnorm(net, lambda: net(x)) == 0


def test_fold_bn_frozen_bn_resnet():
    """FrozenBatchNorm2d (two-stage extractors) folds too."""
    torch.manual_seed(0)
    ex = TimmExtractor(model_name="resnet18", frozen_bn=True).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = ex(x)
        n = fold_batchnorm(ex, lambda: ex(x))
        assert n == 20  # every BN of resnet18 (conv1 + 8 blocks x 2 + 3 downsamples)
        assert outputs_close(ex(x), ref)


def test_channels_last_matches_plain(ssd, images):
    s = dataclasses.replace(PLAIN, channels_last=True)
    fast, _ = prepare_inference(ssd, s, CPU, images)
    assert outputs_close(_predict(fast, images, s), _predict(ssd, images))


def test_no_grad_matches_inference_mode(ssd, images):
    a = _detect(ssd, images, PLAIN)
    b = _detect(ssd, images, dataclasses.replace(PLAIN, inference_mode=False))
    assert outputs_close(a, b, rtol=0)


def test_plain_settings_return_the_model_itself(ssd, images):
    fast, notes = prepare_inference(ssd, PLAIN, CPU, images)
    assert fast is ssd and notes["fold_bn_folded"] == 0 and not notes["compiled"]


def test_compile_failure_falls_back_with_a_note(ssd, images, monkeypatch):
    def broken(fn, *a, **k):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    s = dataclasses.replace(PLAIN, compile=True)
    fast, notes = prepare_inference(ssd, s, CPU, images)
    assert notes["compiled"] is False and "no C++ compiler" in notes["compile_error"]
    assert outputs_close(_predict(fast, images), _predict(ssd, images))


def test_bench_defaults_enable_only_exact_fast_paths():
    s = BenchSettings()
    assert s.fold_bn and s.inference_mode and not s.channels_last and not s.compile
