"""Bootstrap intervals of the COCO metrics: the re-accumulation reproduces pycocotools on the
full set and on explicitly duplicated images; intervals are seeded, null when switched off,
and behave as intervals should (contain a constant metric, shrink with more images)."""

from __future__ import annotations

import numpy as np
import pytest
from coco_fakes import coco_from_dict, random_coco, replicate, run_cocoeval

from benchmark import bootstrap
from benchmark.bootstrap import (
    BootstrapSettings,
    PerImageMatches,
    accumulate,
    bootstrap_stats,
    interval_key_names,
    stats,
    summarize,
)
from benchmark.evaluate import ACCURACY_KEYS, METRIC_KEYS, coco_metrics


def _full_set(ev):
    matches = PerImageMatches.from_cocoeval(ev)
    precision, recall = accumulate(matches, np.ones((1, matches.num_images)))
    return matches, precision[0], recall[0]


def test_the_fake_set_is_realistic():
    """The cases the exactness test must cover are really in the data."""
    gt, dets = random_coco(0)
    annotated = {a["image_id"] for a in gt["annotations"]}
    detected = {d["image_id"] for d in dets}
    per_image = np.bincount([d["image_id"] for d in dets])
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert {im["id"] for im in gt["images"]} - annotated  # images without objects
    assert annotated - detected  # images with objects but no detection
    assert per_image.max() > 100  # maxDet truncation
    assert {d["category_id"] for d in dets} - {a["category_id"] for a in gt["annotations"]}
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2
    assert len({d["score"] for d in dets}) < len(dets)  # tied scores


@pytest.mark.parametrize(("seed", "decimals"), [(0, 2), (5, None), (7, 1)])
def test_full_set_reproduces_pycocotools_exactly(seed, decimals):
    ev = run_cocoeval(*random_coco(seed, score_decimals=decimals))
    matches, precision, recall = _full_set(ev)
    # Every precision sample (T x R x K x A x M) and every recall, bit for bit.
    assert np.array_equal(precision, ev.eval["precision"])
    assert np.array_equal(recall, ev.eval["recall"])
    # The 12 numbers: the same selection, summed in another order (float rounding only).
    summary = summarize(precision[None], recall[None], ev.params)[0]
    np.testing.assert_allclose(summary, ev.stats, rtol=0, atol=1e-15)
    assert 0.05 < ev.stats[0] < 0.95 and (ev.stats[3:6] > 0).all()  # a non-trivial case
    # The bootstrap's own path (no full precision array) gives the same numbers.
    fast = stats(matches, np.ones((1, matches.num_images)))[0]
    np.testing.assert_allclose(fast, ev.stats, rtol=0, atol=1e-15)


@pytest.mark.parametrize("matrix_floats", [2_000_000, 0])  # 0: the large-block path
def test_a_resample_equals_pycocotools_on_the_duplicated_images(monkeypatch, matrix_floats):
    """An image drawn k times counts as k independent images: the resample's precision and
    recall are pycocotools' on a dataset holding k copies of it (0 copies: left out)."""
    monkeypatch.setattr(bootstrap, "_MATRIX_FLOATS", matrix_floats)
    gt, dets = random_coco(1, score_decimals=None)  # unique scores: no tie order to define
    matches = PerImageMatches.from_cocoeval(run_cocoeval(gt, dets))
    rng = np.random.default_rng(3)
    for _ in range(3):
        copies = rng.multinomial(matches.num_images, np.full(matches.num_images, 0.025))
        assert copies.max() >= 2 and (copies == 0).any()
        reference = run_cocoeval(*replicate(gt, dets, copies))
        precision, recall = accumulate(matches, copies[None].astype(float))
        assert np.array_equal(precision[0], reference.eval["precision"])
        assert np.array_equal(recall[0], reference.eval["recall"])


def test_bootstrap_stats_equal_pycocotools_on_the_duplicated_images():
    """The batched path (many resamples at once, precision only at 100 detections)."""
    gt, dets = random_coco(6, score_decimals=None)
    matches = PerImageMatches.from_cocoeval(run_cocoeval(gt, dets))
    resampled, weights = bootstrap_stats(matches, 5, seed=4)
    for row, copies in zip(resampled[:2], weights[:2], strict=True):
        reference = run_cocoeval(*replicate(gt, dets, copies.astype(int))).stats
        np.testing.assert_allclose(row, np.where(reference > -1, reference, np.nan), atol=1e-15)


def test_bootstrap_is_seeded():
    matches = PerImageMatches.from_cocoeval(run_cocoeval(*random_coco(2)))
    a, wa = bootstrap_stats(matches, 40, seed=1)
    b, _ = bootstrap_stats(matches, 40, seed=1)
    c, _ = bootstrap_stats(matches, 40, seed=2)
    assert np.array_equal(a, b, equal_nan=True) and not np.array_equal(a, c, equal_nan=True)
    assert (wa.sum(axis=1) == matches.num_images).all()  # every resample draws N images


def _width(num_images: int) -> float:
    gt, dets = random_coco(11, num_images=num_images)
    metrics, _ = coco_metrics(coco_from_dict(gt), dets, bootstrap=BootstrapSettings(300))
    assert metrics["map_ci_low"] <= metrics["map"] <= metrics["map_ci_high"]
    return metrics["map_ci_high"] - metrics["map_ci_low"]


def test_intervals_shrink_with_more_images():
    """Four times the images: about half the width (1 / sqrt(N))."""
    assert 0 < _width(160) < 0.75 * _width(40)


def test_perfect_detections_have_a_zero_width_interval():
    gt, _ = random_coco(4)
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    metrics, _ = coco_metrics(coco_from_dict(gt), dets, bootstrap=BootstrapSettings(50))
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map_ci_low"] == pytest.approx(1.0) and metrics["map_ci_high"] == pytest.approx(
        1
    )


def test_coco_metrics_keys_when_off_and_without_detections():
    gt, dets = random_coco(3)
    coco = coco_from_dict(gt)
    metrics, _ = coco_metrics(coco, dets)
    assert set(metrics) == set(METRIC_KEYS)  # no settings: no interval keys
    off, _ = coco_metrics(coco, dets, bootstrap=BootstrapSettings(0))
    assert set(off) == set(ACCURACY_KEYS) == set(METRIC_KEYS) | set(interval_key_names(METRIC_KEYS))
    assert off["map_ci_low"] is None and off["bootstrap_samples"] == 0
    assert off["bootstrap_method"] is None
    on, _ = coco_metrics(coco, dets, bootstrap=BootstrapSettings(200))
    assert on["bootstrap_samples"] == 200 and on["bootstrap_method"] == "percentile"
    assert on["bootstrap_confidence"] == 0.95 and on["map"] == off["map"]  # same estimate
    for key in METRIC_KEYS:
        assert on[f"{key}_ci_low"] <= on[key] <= on[f"{key}_ci_high"], key
    empty, _ = coco_metrics(coco, [], bootstrap=BootstrapSettings(200))
    assert empty["map"] == 0.0 and empty["map_ci_low"] == 0.0 == empty["map_ci_high"]


def test_settings_are_checked():
    assert BootstrapSettings.from_cfg({"bootstrap": 0}).bootstrap == 0
    with pytest.raises(ValueError, match="eval.bootstrap"):
        BootstrapSettings(bootstrap=-1)
    with pytest.raises(ValueError, match="eval.confidence"):
        BootstrapSettings(confidence=95)
    with pytest.raises(ValueError, match="unknown eval settings"):
        BootstrapSettings.from_cfg({"resamples": 10})
