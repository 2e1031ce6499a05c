"""``python -m benchmark.compare`` on a tiny setting: builds the pairs, checks both sides'
detections, times paired runs and writes valid JSON. (The ResNet-50 pair is only built and
run once here: timing it end to end takes longer than a unit test should.)"""

from __future__ import annotations

import json

import pytest
import torch
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)
from torchvision.ops import box_iou

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
    """Same trunk and RPN weights, coder and anchors: the same proposals on both sides.

    At 128 px the RPN has 8 x 8 x 12 = 768 anchors, of which ~560 survive NMS: with the
    300-proposal cap both sides always return 300 whatever their weights, so the cap is lifted
    and the proposals themselves are compared (IoU > 0.9 rather than equality: torchvision
    rounds its anchors to whole pixels)."""
    ours, tv, size = compare.build_pair("faster_rcnn_resnet50_c4", image_size=128)
    cap = 5000
    ours.num_proposals = cap
    tv.model.rpn._post_nms_top_n = {"training": cap, "testing": cap}
    images, _ = compare.make_inputs(1, size)
    ours.eval(), tv.eval()
    with torch.inference_mode():
        a = ours.predict(ours.preprocess(images).tensor)["rois"][:, 1:]
        b = tv.predict(tv.preprocess(images).tensor)["proposals"]
    assert 300 < len(a) < 768 and abs(len(a) - len(b)) <= 2, (len(a), len(b))
    iou = box_iou(a, b)
    assert (iou.max(dim=1).values > 0.9).float().mean() >= 0.98  # each of ours has its twin
    assert (iou.max(dim=0).values > 0.9).float().mean() >= 0.98  # and each of torchvision's


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


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def test_paired_runs_alternate_the_order_and_drop_the_warm_up():
    calls = []

    def run(side, r):  # a fake timing: ours 10 + r ms, torchvision 20 + r ms
        calls.append((r, side))
        return (10.0 if side == "ours" else 20.0) + r

    bar = _Bar()
    times = compare._paired(run, repeats=3, warmup=1, bar=bar)
    # Ours first on even repeats, torchvision first on odd ones, so a load change between
    # the two members of a pair hits each side first equally often.
    assert calls == [
        (0, "ours"), (0, "torchvision"),
        (1, "torchvision"), (1, "ours"),
        (2, "ours"), (2, "torchvision"),
        (3, "torchvision"), (3, "ours"),
    ]  # fmt: skip
    assert times == {"ours": [11.0, 12.0, 13.0], "torchvision": [21.0, 22.0, 23.0]}  # no r=0
    assert bar.n == 4


def test_entry_ratio_is_the_median_of_per_pair_ratios():
    # Pairs (ours, torchvision): (1, 2), (10, 5), (100, 1000): ratios 0.5, 2 and 0.1, median
    # 0.5, while the ratio of the medians would be 10 / 5 = 2 (the machine's drift between
    # pairs would decide it).
    e = compare._entry(
        "p", "inference", {"ours": [1.0, 10.0, 100.0], "torchvision": [2.0, 5.0, 1000.0]}
    )
    assert e == {
        "pair": "p",
        "task": "inference",
        "ours_ms": 10.0,
        "torchvision_ms": 5.0,
        "ratio": pytest.approx(0.5),
    }
