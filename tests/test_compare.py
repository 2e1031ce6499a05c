"""``python -m benchmark.compare`` on a tiny setting: builds the pairs, checks both sides'
detections, times paired runs and writes valid JSON. (The ResNet-50 pair is only built and
run once here: timing it end to end takes longer than a unit test should.)"""

from __future__ import annotations

import json

import pytest
import torch
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)

from benchmark import compare


def test_compare_tiny_writes_json(tmp_path, capsys):
    out = tmp_path / "cmp.json"
    compare.main(
        [
            "--pairs", "ssdlite320_mobilenet_v3_large",
            "--image-size", "128", "--repeats", "1", "--warmup", "0",
            "--train-repeats", "1", "--train-batch", "2", "--json", str(out),
        ]
    )  # fmt: skip
    entries = json.loads(out.read_text())
    assert [(e["pair"], e["task"]) for e in entries] == [
        ("ssdlite320_mobilenet_v3_large", "inference"),
        ("ssdlite320_mobilenet_v3_large", "train_step"),
    ]
    for e in entries:
        assert set(e) == {"pair", "task", "ours_ms", "torchvision_ms", "ratio"}
        assert e["ours_ms"] > 0 and e["torchvision_ms"] > 0 and e["ratio"] > 0
    assert "| pair | task |" in capsys.readouterr().out


def test_faster_rcnn_pair_shares_weights_and_proposals():
    ours, tv, size = compare.build_pair("faster_rcnn_resnet50_c4", image_size=128)
    images, _ = compare.make_inputs(1, size)
    ours.eval(), tv.eval()
    with torch.inference_mode():
        a = ours.predict(ours.preprocess(images).tensor)
        b = tv.predict(tv.preprocess(images).tensor)
    # Same trunk/RPN weights and coder: the same number of RoIs reach the box head.
    assert abs(a["rois"].shape[0] - b["proposals"].shape[0]) <= 2


def test_check_detections_rejects_wrong_kinds():
    good = {
        "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([1]),
    }
    compare.check_detections([good], 10)
    with pytest.raises(ValueError):
        compare.check_detections([{**good, "boxes": torch.tensor([[3.0, 2.0, 1.0, 4.0]])}], 10)
    with pytest.raises(ValueError):
        compare.check_detections([{**good, "labels": torch.tensor([1.0])}], 10)


def test_ssdlite_pair_is_the_same_architecture():
    """Ours and torchvision's SSDLite: same parameter count, GMACs and default boxes."""
    from benchmark.measure.flops import count_predict

    ours, tv, size = compare.build_pair("ssdlite320_mobilenet_v3_large")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())
    images, _ = compare.make_inputs(1, size)
    gmacs = [count_predict(m, m.preprocess(images).tensor).gmacs for m in (ours, tv)]
    assert gmacs[0] == pytest.approx(gmacs[1], rel=1e-9)
    with torch.no_grad():
        assert ours.predict(ours.preprocess(images).tensor)["anchors"].shape == (3234, 4)
