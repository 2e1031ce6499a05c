"""Seed repeats, frontiers that know their noise, and the protocol a report states: on
hand-made tables with hand-computed expectations, and one fake sweep with two seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from report_fakes import fake_result, make_repeat_sweep, with_intervals, write_job

from benchmark.report import write_report
from benchmark.report.figures import pareto_figure
from benchmark.report.pareto import indistinguishable_critical_points, noise_verdicts
from benchmark.report.protocol import Protocols
from benchmark.report.repeats import repeat_group, summarize_repeats
from benchmark.report.table import load_results, results_table


def test_repeat_group_ignores_the_seed_and_bookkeeping_keys_only():
    base = fake_result("ssd", "resnet101", 300)
    a = {**base, "config": {**base["config"], "seed": 0, "progress": True, "sweep_name": "x"}}
    b = {**base, "config": {**base["config"], "seed": 1, "progress": False, "sweep_name": "y"}}
    other_size = {**a, "image_size": 600}
    other_lr = {**a, "config": {**a["config"], "train": {"max_iters": 100, "batch_size": 4}}}
    assert repeat_group(a) == repeat_group(b)
    assert repeat_group(a) != repeat_group(other_size) and repeat_group(a) != repeat_group(other_lr)
    # without a config: the job folder without its seed= override
    assert repeat_group({"job": "meta_arch=ssd,seed=0"}) == repeat_group(
        {"job": "meta_arch=ssd,seed=3"}
    )
    assert repeat_group({"job": "meta_arch=ssd,seed=0"}) != repeat_group({"job": "meta_arch=dssd"})


def test_summary_of_two_seeds_by_hand(tmp_path):
    """map 0.20 and 0.22 (bootstrap intervals +-0.03): mean 0.21, sd 0.01414, n 2; the seed
    interval 0.21 +- 12.706 * 0.01414 / sqrt(2) = +-0.12706 is wider than the bootstrap's."""
    base = fake_result("ssd", "resnet101", 300)
    for seed, value in ((0, 0.20), (1, 0.22)):
        result = {**base, "seed": seed, "config": {**base["config"], "seed": seed}, "map": value}
        result.update(map_ci_low=value - 0.03, map_ci_high=value + 0.03)
        write_job(tmp_path, f"meta_arch=ssd,seed={seed}", result)
    single = {**fake_result("rfcn", "resnet101", 300), "map_ci_low": 0.1, "map_ci_high": 0.3}
    write_job(tmp_path, "meta_arch=rfcn", single)
    summary = summarize_repeats(load_results(tmp_path)).set_index("meta_arch")
    ssd, rfcn = summary.loc["ssd"], summary.loc["rfcn"]
    assert ssd["n"] == 2 and ssd["seeds"] == "0;1" and ssd["map"] == pytest.approx(0.21)
    assert ssd["map_sd"] == pytest.approx(math.sqrt(2) * 0.01)
    half = 12.7062 * 0.01  # t(0.975, 1) * sd / sqrt(2), sd = 0.01 * sqrt(2)
    assert ssd["map_ci_low"] == pytest.approx(0.21 - half, abs=1e-4)
    assert ssd["map_ci_high"] == pytest.approx(0.21 + half, abs=1e-4)
    assert ssd["ci_method"] == "seeds+bootstrap" and ssd["jobs"].count(";") == 1
    # one run: its own interval, no sd
    assert rfcn["n"] == 1 and np.isnan(rfcn["map_sd"]) and rfcn["ci_method"] == "bootstrap"
    assert (rfcn["map_ci_low"], rfcn["map_ci_high"]) == (0.1, 0.3)


def test_summary_keeps_the_bootstrap_interval_when_seeds_agree(tmp_path):
    """Two seeds with the same number: no training noise seen, but the validation images
    still leave the bootstrap's uncertainty (the hull keeps it)."""
    base = fake_result("ssd", "resnet101", 300)
    for seed in (0, 1):
        result = {**base, "seed": seed, "config": {**base["config"], "seed": seed}, "map": 0.2}
        write_job(tmp_path, f"s{seed}", {**result, "map_ci_low": 0.15, "map_ci_high": 0.26})
    row = summarize_repeats(load_results(tmp_path)).iloc[0]
    assert (row["map_ci_low"], row["map_ci_high"]) == (pytest.approx(0.15), pytest.approx(0.26))


def _front(rows):
    return pd.DataFrame(rows, columns=["label", "latency_ms", "map", "map_ci_low", "map_ci_high"])


def test_noise_verdicts_by_hand():
    front = _front(
        [
            ("a", 10, 0.15, 0.10, 0.20),
            ("b", 20, 0.26, 0.21, 0.30),  # 0.21 > 0.20: better than a
            ("c", 30, 0.31, 0.25, 0.36),  # 0.25 < 0.30: overlaps b
            ("d", 40, 0.40, np.nan, np.nan),  # no interval
        ]
    )
    verdicts = noise_verdicts(front)
    assert verdicts["vs_cheaper"].tolist() == ["", "better", "not distinguishable", "no interval"]
    assert verdicts["cheaper_label"].tolist() == ["", "a", "b", "c"]


def test_indistinguishable_critical_points_in_words():
    front = _front([("SSD", 23.0, 0.30, 0.27, 0.33), ("RefineDet", 24.0, 0.31, 0.28, 0.34)])
    front = front.assign(
        axis="latency", cost_column="latency_ms", critical=["fastest", "most accurate"]
    )
    front = pd.concat([front, noise_verdicts(front)], axis=1)
    (sentence,) = indistinguishable_critical_points(front)
    assert sentence.startswith("latency: RefineDet (most accurate, 24 ms) and SSD (23 ms)")
    assert "not distinguishable at this budget" in sentence and "31.0 % [28.0, 34.0]" in sentence


def test_protocols_mixed_threads_get_letters():
    rows = pd.DataFrame(
        [
            {**fake_result("ssd", "resnet101", 300), "num_threads": 1, "train_iters": 150},
            {**fake_result("rfcn", "resnet101", 300), "num_threads": 2, "train_iters": 150},
            {**fake_result("dssd", "resnet101", 300), "num_threads": 2, "train_iters": 150},
        ]
    )
    rows["total_batch_size"] = 8
    protocols = Protocols(rows)
    assert protocols.mixed and protocols.differing == ["threads"]
    assert protocols.letters.tolist() == ["A", "B", "B"]
    assert protocols.legend == {"A": "1 thread", "B": "2 threads"}
    common = " · ".join(protocols.common())
    assert "synthetic" in common and "150 steps x 8 images from random weights" in common
    assert "300 px" in common and "fp32" in common and "threads" not in common
    assert "MIXED PROTOCOLS (threads): A: 1 thread; B: 2 threads" in protocols.subtitle()
    assert not Protocols(rows[rows["num_threads"] == 2]).mixed
    pretrained = rows.assign(pretrained=np.array([True, True, False]), num_threads=2)
    assert Protocols(pretrained).legend == {
        "A": "150 steps x 8 images from pretrained weights",
        "B": "150 steps x 8 images from random weights",
    }


@pytest.fixture(scope="module")
def repeat_sweep(tmp_path_factory):
    root = make_repeat_sweep(tmp_path_factory.mktemp("repeats"), seeds=(0, 1))
    write_report(root)
    return root


def test_report_of_a_repeated_sweep(repeat_sweep):
    results = pd.read_csv(repeat_sweep / "results.csv")
    summary = pd.read_csv(repeat_sweep / "summary.csv")
    assert len(results) == 20 and len(summary) == 10 and (summary["n"] == 2).all()
    assert (
        (summary["map_ci_low"] <= summary["map"]) & (summary["map"] <= summary["map_ci_high"])
    ).all()
    front = pd.read_csv(repeat_sweep / "frontier.csv")
    assert (front["n"] == 2).all()  # computed on the summary: one point per configuration
    assert not front.duplicated(["axis", "label"]).any()
    assert set(front["vs_cheaper"].dropna()) <= {"better", "not distinguishable", "no interval"}
    page = (repeat_sweep / "report.html").read_text()
    assert "synthetic (600 train / 100 val images)" in page
    assert "100 steps x 8 images from random weights" in page
    assert "not distinguishable at this budget" in page and "summary.csv" in page
    assert "Seed repeats: 2 per configuration" in page


def test_pareto_figure_error_bars_in_percent(repeat_sweep):
    df = load_results(repeat_sweep)
    fig = pareto_figure(df, "latency_ms")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    # one accuracy bar and one latency bar per configuration
    assert sum(c.has_yerr for c in bars) == 10 and sum(c.has_xerr for c in bars) == 10
    assert ax.get_ylim()[1] > 20 and "(%)" in ax.get_ylabel()  # AP in percent
    assert "2 seeds each" in fig.get_suptitle()
    assert "100 steps x 8 images from random weights" in ax.get_title()
    # a run without intervals: no bar, no legend entry
    plain = results_table([{**fake_result("ssd", "resnet101", 300), "job": "x"}])
    plain_ax = pareto_figure(plain, "latency_ms").axes[0]
    assert not [c for c in plain_ax.containers if isinstance(c, ErrorbarContainer)]


def test_with_intervals_helper_is_consistent():
    r = with_intervals(fake_result("ssd", "resnet101", 300), seed=2)
    assert r["map_ci_low"] < r["map"] < r["map_ci_high"] and r["seed"] == 2
