"""The extractor comparison: like-for-like pairs, changes and ratios against a reference,
shares of the multiply-adds, Huang et al.'s Figure 3 question per meta-architecture, the
report section, ``extractors.csv`` and ``detbench-report --extractors/--baseline``."""

from __future__ import annotations

import pandas as pd
import pytest
from report_fakes import fake_result, make_fake_sweep, write_job

from benchmark.report import extractors as ex
from benchmark.report.cli import build_parser, extractor_text
from benchmark.report.cli import main as report_main
from benchmark.report.repeats import extractor_group, recipe_cell_keys, summarize_repeats
from benchmark.report.table import load_results


def _record(meta="ssd", ext="resnet18", size=300, **config):
    return {
        "meta_arch": meta,
        "extractor": ext,
        "image_size": size,
        "config": {
            "meta_arch": {"_target_": "models.meta_arch.single_shot.SSD"},
            "extractor": {"model_name": ext, "pretrained": False, "frozen_bn": False},
            "train": {"max_iters": 100},
            **config,
        },
    }


def test_extractor_group_ignores_only_the_extractor():
    base = extractor_group(_record())
    assert extractor_group(_record(ext="mobilenet_v2")) == base
    assert extractor_group({**_record(), "config": {**_record()["config"], "seed": 3}}) == base
    assert extractor_group(_record(size=600)) != base
    assert extractor_group(_record(meta="rfcn")) != base
    assert extractor_group(_record(train={"max_iters": 200})) != base
    pretrained = _record()
    pretrained["config"]["extractor"]["pretrained"] = True
    assert extractor_group(pretrained) != base  # ImageNet weights vs scratch: not like for like


def test_recipe_cell_keys_go_with_the_extractor():
    """huang2017's cells set e.g. the learning rate per (meta-architecture, extractor): two
    extractors of the paper grid still pair though their lr differ, other keys still count."""
    assert "train.optimizer.lr" in recipe_cell_keys("huang2017", "rfcn")
    a = _record(meta="rfcn", recipe_set="huang2017", train={"optimizer": {"lr": 3e-4}})
    b = _record(meta="rfcn", ext="inception_v3", recipe_set="huang2017")
    b["config"]["train"] = {"optimizer": {"lr": 1e-3}}
    assert extractor_group(a) == extractor_group(b)
    c = _record(meta="rfcn", recipe_set="huang2017", train={"batch_size": 4})
    assert extractor_group(c) != extractor_group(a)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """SSD and R-FCN at 300 px over three extractors, SSD's accuracy not following top-1
    (Huang et al.'s finding for SSD, made exact here), and one SSD at 600 px alone."""
    root = tmp_path_factory.mktemp("extractors")
    for meta in ("ssd", "rfcn"):
        for ext in ("mobilenet_v1", "inception_v3", "resnet101"):
            result = fake_result(meta, ext, 300, 300 if meta == "rfcn" else None)
            if meta == "ssd":  # top-1: mobilenet_v1 71.1 < inception_v3 77.3 < resnet101 77.4
                result["map"] = {"mobilenet_v1": 0.20, "inception_v3": 0.18, "resnet101": 0.22}[ext]
            write_job(root, f"meta_arch={meta},extractor={ext}", result)
    write_job(
        root, "meta_arch=ssd,extractor=resnet101,size=600", fake_result("ssd", "resnet101", 600)
    )
    return root


def test_comparison_pairs_like_for_like(small_sweep):
    summary = summarize_repeats(load_results(small_sweep))
    table = ex.comparison_table(summary)
    # The 600 px SSD has no partner; the two 300 px settings have three extractors each.
    assert len(table) == 6 and set(table["setting"]) == {
        "SSD (ssd_extra), 300 px",
        "R-FCN, 300 px, 300 prop.",
    }
    # Reference: every extractor is in both settings; mobilenet_v1 has the fewest GMACs.
    assert set(table["reference"]) == {"mobilenet_v1"}
    rfcn = table[table["meta_arch"] == "rfcn"].set_index("extractor")
    # fake_result: latency and GMACs scale with the extractor's cost factor (1, 3.2, 4.5);
    # memory is 40 * cost + 25 * 1.8 (R-FCN's factor), so its ratio is (40c + 45) / 85.
    assert rfcn.loc["inception_v3", "latency_ratio"] == pytest.approx(3.2)
    assert rfcn.loc["resnet101", "gmacs_ratio"] == pytest.approx(4.5)
    assert rfcn.loc["resnet101", "memory_ratio"] == pytest.approx((40 * 4.5 + 45) / 85)
    # accuracy 0.32 * acc * 0.93 * 0.84 (R-FCN, 300 px, 300 proposals): the change in points
    assert rfcn.loc["resnet101", "accuracy_change"] == pytest.approx(
        0.32 * 0.93 * 0.84 * (0.95 - 0.78)
    )
    assert rfcn.loc["mobilenet_v1", "accuracy_change"] == 0
    # R-FCN's fake split: 80 % extractor, no neck, 20 % head.
    assert rfcn["extractor_share"].tolist() == pytest.approx([0.8] * 3)
    assert rfcn["neck_share"].tolist() == pytest.approx([0.0] * 3)


def test_baseline_choice_and_unknown_baseline(small_sweep):
    summary = summarize_repeats(load_results(small_sweep))
    table = ex.comparison_table(summary, baseline="resnet101")
    ssd = table[table["meta_arch"] == "ssd"].set_index("extractor")
    assert ssd.loc["mobilenet_v1", "accuracy_change"] == pytest.approx(0.20 - 0.22)
    with pytest.raises(ex.UnknownBaselineError, match="valid: inception_v3, mobilenet_v1"):
        ex.comparison_table(summary, baseline="vgg16")


def test_classifier_question_per_meta_architecture(small_sweep):
    """SSD: of the 3 pairs with different top-1 only (inception_v3, resnet101) and
    (mobilenet_v1, resnet101) follow top-1: 2 of 3, "mixed". R-FCN follows it: 3 of 3."""
    answers = {
        a.meta_arch: a for a in ex.classifier_answers(summarize_repeats(load_results(small_sweep)))
    }
    assert (answers["ssd"].pairs, answers["ssd"].agree, answers["ssd"].verdict) == (3, 2, "mixed")
    assert (answers["rfcn"].pairs, answers["rfcn"].agree, answers["rfcn"].verdict) == (3, 3, "yes")
    # Within-setting least squares, by hand: top-1 71.1, 77.294, 77.374 (mean 75.256);
    # SSD AP 20, 18, 22 (mean 20): slope = sum(dx dy) / sum(dx^2).
    dx = [71.1 - 75.256, 77.294 - 75.256, 77.374 - 75.256]
    dy = [0.0, -2.0, 2.0]
    slope = sum(a * b for a, b in zip(dx, dy, strict=True)) / sum(a * a for a in dx)
    assert answers["ssd"].slope == pytest.approx(slope, rel=1e-3)
    assert "2 of 3 pairs" in answers["ssd"].sentence()


def test_report_section_csv_and_cli(fake_report, small_sweep, tmp_path, capsys):
    """The shared fake report: 88 paired rows (SSD, DSSD, RefineDet: 2 sizes x 4 extractors;
    Faster R-CNN and R-FCN: 2 sizes x 4 proposal counts x 4 extractors; the stride-8 job has
    no partner); per meta-architecture C(4, 2) = 6 pairs per setting."""
    folder = fake_report.folder
    csv = pd.read_csv(folder / "extractors.csv")
    assert len(csv) == 3 * 8 + 2 * 32 and "extractor_group" not in csv
    page = (folder / "report.html").read_text()
    assert '<h2 id="extractors">Feature extractors</h2>' in page
    assert "SSD: yes: in 12 of 12 pairs (2 settings)" in page
    assert "Faster R-CNN: yes: in 48 of 48 pairs (8 settings)" in page
    assert 'alt="fig12_extractors.png"' in page and 'alt="fig13_gmacs_parts.png"' in page
    assert (folder / "fig12_extractors.svg").is_file() and (
        folder / "fig13_gmacs_parts.pdf"
    ).is_file()
    printed = extractor_text(folder, "map")  # what detbench-report --extractors prints
    assert "R-FCN, 300 px, 10 prop. (vs MobileNet v1):" in printed
    assert "R-FCN: yes: in 48 of 48 pairs (8 settings)" in printed
    assert build_parser().parse_args(["x", "--extractors", "--baseline", "resnet18"]).extractors
    # An unknown baseline fails before anything is written, naming the valid ones.
    out = tmp_path / "report"
    assert report_main([str(small_sweep), "--out", str(out), "--baseline", "vgg16"]) == 2
    assert "--baseline 'vgg16'" in capsys.readouterr().err
    assert not (out / "report.html").exists()


def test_no_pairs_says_so(tmp_path):
    make_fake_sweep(tmp_path / "one", sizes=(300,), proposals=(300,))
    df = load_results(tmp_path / "one")
    alone = df[df["extractor"] == "resnet101"]
    assert ex.comparison_table(summarize_repeats(alone)).empty
    section = ex.extractor_section(ex.comparison_table(alone), [], {})
    assert "nothing to pair" in section.body
