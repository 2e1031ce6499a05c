"""The result schema (benchmark/schema): one declaration per key, and everything derived from it.

The central test adds a metric the way a contributor would, touching only the schema and its
probe, and follows it into result.json, results.csv, the report's table and the labels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from measure_toys import TinyDetector, TinyExtractor, one_thread  # noqa: F401 (fixture)
from report_fakes import fake_result, write_job

import benchmark.measure as measure_module
from benchmark import schema
from benchmark.device import Device
from benchmark.evaluate import METRIC_KEYS
from benchmark.measure import SAMPLES_FILE, measure
from benchmark.report import write_report
from benchmark.report.cli import main as report_cli
from benchmark.report.style import label
from benchmark.schema.docs import BLOCK, update
from benchmark.schema.format import format_value, job_line
from benchmark.spec import InputSpec

README = Path(__file__).resolve().parents[1] / "results" / "README.md"
CPU = Device.from_spec("cpu")


def test_results_readme_tables_are_generated_from_the_schema():
    text = README.read_text()
    assert update(text) == text, "run: python -m benchmark.schema --write results/README.md"
    blocks = "".join(m["body"] for m in BLOCK.finditer(text))
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", blocks, re.M)
    assert sorted(documented) == sorted(schema.KEYS)  # every key once, nothing else


def test_a_key_is_declared_once_and_checked():
    key = schema.KEYS["map"]
    with pytest.raises(ValueError, match="declared twice"):
        schema._registry([key, key])
    with pytest.raises(ValueError, match="a cost or accuracy must be numeric"):
        schema.Key("x", "latency", "x", kind="text", cost=True)
    with pytest.raises(schema.UnknownKeyError, match="did you mean latency_ms"):
        schema.get("latency_mss")


def test_metric_keys_follow_pycocotools_summarize_order():
    # COCOeval.summarize() fills stats[0..11] in this order (pycocotools/cocoeval.py,
    # _summarizeDets): AP, AP50, AP75, AP S/M/L, AR@1, AR@10, AR@100, AR S/M/L.
    assert METRIC_KEYS == (
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        "mar_1",
        "mar_10",
        "mar_100",
        "mar_small",
        "mar_medium",
        "mar_large",
    )


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("map", 0.2315, "23.2"),  # AP in percent, one decimal (COCO's convention)
        ("map_50", 0.0002315, "0.0"),
        ("latency_ms", 7.2345, "7.23"),  # ms: about three significant digits
        ("latency_ms", 72.345, "72.3"),
        ("latency_ms", 1158.3, "1158"),
        ("predict_ms", 0.4321, "0.432"),
        ("gmacs", 0.1037, "0.104"),
        ("params", 5_123_456, "5.12M"),
        ("num_anchors", 1917, "1917"),
        ("num_anchors", 35_210, "35.2k"),
        ("train_iters", 300.0, "300"),
        ("timing_exclusive", True, "yes"),
        ("meta_arch", "ssd", "ssd"),
        ("latency_ms", None, "–"),
        ("latency_ms", float("nan"), "–"),
        ("not_a_declared_key", 3.14159, "3.14"),
    ],
)
def test_formats(column, value, shown):
    assert format_value(column, value) == shown


def test_headers_and_units():
    assert schema.KEYS["map"].header == "AP (%)"
    assert schema.KEYS["latency_ms"].header == "latency (ms)"
    assert schema.KEYS["params"].header == "parameters"
    assert label("gmacs") == "Multiply-adds per image (GMACs)"
    assert label("not_a_declared_key") == "not_a_declared_key"
    assert schema.cost_axes() == {
        "latency_ms": "latency",
        "gmacs": "gmacs",
        "peak_mem_mb": "memory",
    }


def test_job_line_gives_accuracy_with_interval_latency_gmacs_memory_and_path(tmp_path):
    result = {
        "status": "ok",
        "meta_arch": "ssd",
        "meta_arch_name": "SSD",
        "extractor": "mobilenet_v2",
        "map": 0.2715,
        "map_ci_low": 0.2512,
        "map_ci_high": 0.2903,
        "map_50": 0.58,
        "latency_ms": 7.234,
        "gmacs": 0.1037,
        "peak_mem_mb": 45.21,
    }
    assert job_line(result, tmp_path) == (
        "SSD w/ mobilenet_v2: ok: AP 27.2% [25.1, 29.0], AP50 58.0%, latency 7.23 ms, "
        f"multiply-adds 0.104 GMACs, peak memory 45.2 MiB -> {tmp_path / 'result.json'}"
    )
    failed = {"status": "failed", "meta_arch": "rfcn", "extractor": "vgg16", "error": "boom"}
    assert job_line(failed) == "rfcn w/ vgg16: failed: boom"


# -- adding a metric: its probe and the schema, nothing else ------------------------------


P95 = schema.Key(
    "latency_ms_p95",
    "latency",
    "95th percentile",
    unit="ms",
    label="Latency per image, batch 1, end to end (ms, p95)",
    short="p95",
    cost=True,
    probe="latency",
    table=True,
)


@pytest.fixture
def p95_metric(monkeypatch):
    """The two edits of a new metric: its declaration (here added to the registry, as a line
    in benchmark/schema/keys.py would) and its probe (the latency probe computing it)."""
    monkeypatch.setitem(schema.KEYS, P95.name, P95)
    original = measure_module.measure_latency

    def latency_with_p95(model, dataset, device, settings):
        keys, samples = original(model, dataset, device, settings)
        keys["latency_ms_p95"] = float(np.percentile(samples["end_to_end_ms"], 95))
        return keys, samples

    monkeypatch.setattr(measure_module, "measure_latency", latency_with_p95)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = TinyDetector(extractor=TinyExtractor(channels=8), num_classes=3).eval()
    return model, [(torch.rand(3, 64, 64), {}) for _ in range(4)]


BENCH = {
    "warmup": 0,
    "num_images": 4,
    "enabled": {"throughput": False, "flops": False, "memory": False, "roofline": False},
}


def test_a_new_metric_needs_only_its_probe_and_the_schema(p95_metric, toy, tmp_path):
    model, dataset = toy
    # The probe writes it into the job's result ...
    out = measure(model, dataset, BENCH, CPU, input_spec=InputSpec("square", 64), out_dir=tmp_path)
    samples = json.loads((tmp_path / SAMPLES_FILE).read_text())["end_to_end_ms"]
    assert out["latency_ms_p95"] == pytest.approx(np.percentile(samples, 95))
    # ... and it is null, not missing, when its measurement is off.
    off = {**BENCH, "enabled": {**BENCH["enabled"], "latency": False}}
    assert "latency_ms_p95" in (
        quiet := measure(model, dataset, off, CPU, input_spec=InputSpec("square", 64))
    )
    assert quiet["latency_ms_p95"] is None

    sweep = tmp_path / "sweep"
    for meta, p95 in (("ssd", 12.34), ("rfcn", 56.78)):
        write_job(sweep, meta, {**fake_result(meta, "resnet101", 300), "latency_ms_p95": p95})
    write_report(sweep)
    table = pd.read_csv(sweep / "results.csv").set_index("job")
    assert table.loc["ssd", "latency_ms_p95"] == 12.34  # a results.csv column
    page = (sweep / "report.html").read_text()
    assert ">p95 (ms)</th>" in page and 'data-v="56.78">56.8</td>' in page  # the table
    assert label("latency_ms_p95") == "Latency per image, batch 1, end to end (ms, p95)"
    # A declared cost is a frontier axis of detbench-report at once.
    assert report_cli([str(sweep), "--cost", "latency_ms_p95", "--out", str(tmp_path / "r")]) == 0
    front = pd.read_csv(tmp_path / "r" / "frontier.csv")
    assert set(front["cost_column"]) == {"latency_ms_p95"}
    assert (tmp_path / "r" / "pareto_latency_ms_p95.png").is_file()
