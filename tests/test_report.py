"""The report package on hand-made and fake tables: frontier, critical points, table loading,
figures, CSV and HTML files. Fast: no model is built or trained."""

from __future__ import annotations

import html
import json
import os
import re
import time

import numpy as np
import pandas as pd
import pytest
from report_fakes import DATA_WARNING, ENV, TARGETS, fake_result, make_fake_sweep, write_job

from benchmark.report import (
    FIGURES,
    frontier,
    frontier_table,
    load_results,
    pareto_mask,
    write_report,
)
from benchmark.report.callback import failed_since
from benchmark.report.cli import main as report_cli
from benchmark.report.html import CSP
from benchmark.report.imagenet import imagenet_top1
from benchmark.report.pareto import critical_points, sweet_spot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_mask_matches_a_hand_made_frontier():
    # name: (cost, accuracy). Frontier by hand: a (cheapest), c, e (most accurate).
    points = {
        "a": (10, 0.20),
        "b": (20, 0.18),  # dominated by a (costlier, less accurate)
        "c": (30, 0.30),
        "d": (30, 0.25),  # same cost as c, less accurate
        "e": (80, 0.40),
        "f": (90, 0.40),  # as accurate as e but costlier
        "g": (np.nan, 0.99),  # no cost: never on the frontier
        "h": (5, np.nan),
    }
    cost, acc = map(np.array, zip(*points.values(), strict=True))
    mask = pareto_mask(cost, acc)
    assert [n for n, m in zip(points, mask, strict=True) if m] == ["a", "c", "e"]


def test_pareto_mask_keeps_one_of_exact_twins_and_handles_empty():
    assert pareto_mask(np.array([1.0, 1.0]), np.array([0.5, 0.5])).tolist() == [True, False]
    assert pareto_mask(np.array([]), np.array([])).tolist() == []


def _table(rows):
    return pd.DataFrame(
        [{"status": s, "label": n, "latency_ms": c, "map": a} for n, c, a, s in rows]
    )


def test_frontier_ignores_failed_rows_and_sorts_by_cost():
    df = _table([("x", 50, 0.5, "ok"), ("y", 10, 0.9, "failed"), ("z", 5, 0.1, "ok")])
    front = frontier(df, "latency_ms")
    assert front["label"].tolist() == ["z", "x"]


def test_critical_points_fastest_sweet_spot_most_accurate():
    # A frontier with a clear elbow at "knee": accuracy rises steeply, then flattens.
    df = _table(
        [
            ("fast", 10, 0.10, "ok"),
            ("knee", 20, 0.30, "ok"),
            ("mid", 100, 0.33, "ok"),
            ("slow", 1000, 0.35, "ok"),
            ("bad", 500, 0.05, "ok"),
        ]
    )
    front = frontier(df, "latency_ms")
    names = dict(zip(front["label"], critical_points(front, "latency_ms"), strict=True))
    assert names == {"fast": "fastest", "knee": "sweet spot", "mid": "", "slow": "most accurate"}


def test_sweet_spot_needs_three_points_and_a_bend():
    assert sweet_spot(np.array([1.0, 2.0]), np.array([0.1, 0.2])) is None
    # Concave-up (accuracy per log-ms increasing): no elbow above the chord.
    assert sweet_spot(np.array([1.0, 10.0, 100.0]), np.array([0.1, 0.11, 0.5])) is None


def test_frontier_table_has_every_axis_and_critical_names(fake_report):
    table = frontier_table(load_results(fake_report.folder))
    assert set(table["axis"]) == {"latency", "gmacs", "memory"}
    for axis, group in table.groupby("axis"):
        first = "fastest" if axis == "latency" else "cheapest"
        assert {first, "sweet spot", "most accurate"} <= set(group["critical"])
        assert group["map"].is_monotonic_increasing


def test_load_results_flattens_config_and_tolerates_missing_keys(tmp_path):
    full = fake_result("faster_rcnn", "resnet101", 600, 50, stride=8)
    full["map_small"] = -1.0  # COCO's "no small objects" marker is not a score
    write_job(tmp_path, "a", full)
    write_job(
        tmp_path,
        "b",
        {
            "status": "ok",
            "meta_arch": "ssd",
            "extractor": "mobilenet_v1",
            "map": 0.2,
            "config": {"meta_arch": {"_target_": TARGETS["ssd"], "neck": {"depths": [512]}}},
        },
    )
    refinenet = {
        "_target_": TARGETS["refinedet"],
        "neck": {},
        "top_down": {"_target_": "models.necks.refinenet.RefineNetTopDown"},
    }
    write_job(
        tmp_path,
        "e",
        {
            "status": "ok",
            "meta_arch": "refinedet",
            "extractor": "resnet18",
            "config": {"meta_arch": refinenet},
        },
    )
    write_job(
        tmp_path,
        "c",
        {"status": "skipped", "meta_arch": "rfcn", "extractor": "vgg16", "error": "cannot split"},
    )
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "result.json").write_text("{not json")
    write_job(tmp_path / ".hydra", "ignored", {"status": "ok"})  # hidden folders are not jobs
    df = load_results(tmp_path).set_index("job")
    assert sorted(df.index) == ["a", "b", "c", "d", "e"]
    assert df.loc["a", "num_proposals"] == 50 and df.loc["a", "output_stride"] == 8
    assert np.isnan(df.loc["a", "map_small"])
    assert df.loc["a", "label"] == "Faster R-CNN w/ ResNet-101, 600 px, 50 prop., stride 8"
    assert df.loc["b", "neck"] == "ssd_extra" and np.isnan(df.loc["b", "latency_ms"])
    assert df.loc["e", "neck"] == "refinenet" and pd.isna(df.loc["a", "neck"])
    assert np.isnan(df.loc["b", "num_proposals"])  # single-shot: no proposals
    assert df.loc["b", "top1"] == pytest.approx(71.1)  # MobileNet v1: Huang et al. Table 2
    assert df.loc["c", "status"] == "skipped" and df.loc["c", "error"] == "cannot split"
    assert df.loc["d", "status"] == "failed" and "unreadable" in df.loc["d", "error"]


def test_imagenet_top1_sources():
    assert imagenet_top1("resnet18") == (pytest.approx(69.758), "torchvision")
    assert imagenet_top1("mobilenet_v2", "mobilenetv2_100")[1] == "torchvision"
    assert imagenet_top1("inception_resnet_v2") == (80.4, "Huang et al. 2017 Table 2")
    assert imagenet_top1("my_custom_net") == (None, None)


def test_write_report_writes_every_file(fake_report):
    summary, fake_sweep = fake_report, fake_report.folder
    assert summary.counts == {"ok": 89, "skipped": 1, "failed": 1}
    assert "91 jobs: 89 ok, 1 skipped, 1 failed" in summary.line()
    for name in ["results.csv", "frontier.csv", "report.html", *FIGURES]:
        assert (fake_sweep / name).is_file(), name
    for name in FIGURES:  # the fake sweep varies every axis, so every figure applies
        data = (fake_sweep / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000, name
    csv = pd.read_csv(fake_sweep / "results.csv")
    assert len(csv) == 91 and {"map", "latency_ms", "gmacs", "peak_mem_mb", "label"} <= set(csv)
    assert "job_dir" not in csv  # absolute paths stay out of shareable files
    front = pd.read_csv(fake_sweep / "frontier.csv")
    assert {"axis", "critical", "label", "map"} <= set(front)
    assert (front["critical"] == "most accurate").sum() == 3


def test_report_html_is_self_contained_and_lists_problems(fake_report):
    page = (fake_report.folder / "report.html").read_text()
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert sorted(embedded) == sorted(FIGURES)
    # Self-contained: nothing the page refers to by address (scripts are inline: plotly.js,
    # the table sorter), and its policy forbids any load (the Chromium test tries one).
    assert not re.search(
        r'<(?:script|img|link|iframe|source)\b[^>]*\s(?:src|href)="(?!data:)', page
    )
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert "Invalid learning rate" in page and "cannot split its last stage" in page
    assert "traceback: meta_arch=ssd,extractor=mobilenet_v1,train.optimizer.lr=-1" in page
    assert ENV["device_name"] in page and ENV["torch_version"] in page
    assert "Timing protocol" in page and "warm-up" in page
    # The one job with a data warning (report_fakes.DATA_WARNING), in its own section.
    warnings = page[page.index("<h2>Data warnings</h2>") : page.index("<h2>Device and software")]
    assert DATA_WARNING in html.unescape(warnings) and "extractor.output_stride=8" in warnings


def test_figures_need_their_axis_to_vary(tmp_path):
    root = make_fake_sweep(tmp_path / "one", sizes=(300,), proposals=(300,))
    (root / "fig05_resolution.png").write_bytes(PNG_MAGIC)  # stale file from an earlier run
    written = write_report(root).files
    assert "fig05_resolution.png" not in written and not (root / "fig05_resolution.png").exists()
    assert "fig06_proposals.png" not in written
    assert "pareto_latency.png" in written and "fig04_object_size.png" in written


def test_empty_folder_still_gets_a_report(tmp_path):
    summary = write_report(tmp_path)
    assert summary.total == 0 and (tmp_path / "report.html").is_file()
    assert not list(tmp_path.glob("*.png"))


def test_cli(tmp_path, capsys):
    write_job(tmp_path, "j", fake_result("ssd", "resnet101", 300))
    assert report_cli([str(tmp_path)]) == 0
    assert "1 jobs: 1 ok, 0 skipped, 0 failed" in capsys.readouterr().out
    assert report_cli([str(tmp_path / "missing")]) == 2


def test_failed_since_counts_only_fresh_failures(tmp_path):
    write_job(tmp_path, "old", {"status": "failed", **ENV})
    old = time.time() - 100
    os.utime(tmp_path / "old" / "result.json", (old, old))
    start = time.time() - 1
    write_job(tmp_path, "new", {"status": "failed", **ENV})
    write_job(tmp_path, "ok", json.loads(json.dumps(fake_result("ssd", "resnet101", 300))))
    assert [p.name for p in failed_since(tmp_path, start)] == ["new"]
