"""Settings are checked when a job starts, before any data is built: every bad value is named
by its key, and every configuration the project ships passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from job_toys import tiny_cfg

from benchmark.config_checks import (
    CHECKS,
    SettingsError,
    check_settings,
    integer,
    settings_problems,
)
from benchmark.job import run_job
from benchmark.results import read_result

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.fixture(scope="module", autouse=True)
def hydra_sweeps():
    with initialize_config_module("sweeps", version_base="1.3"):
        yield


def _cfg(*overrides: str):
    return compose("config", overrides=list(overrides))


# (overrides, the message expected, written by hand from the rule in docs/bad_input.md)
BAD = [
    (["data.image_size=-64"], "data.image_size must be >= 32, got -64"),
    (["data.image_size=16"], "data.image_size must be >= 32, got 16"),
    (["data.image_size=abc"], "data.image_size must be an integer >= 32, got 'abc'"),
    (["data.max_size=40"], "data.max_size must be >= data.image_size (128), got 40"),
    (["train.max_iters=-1"], "train.max_iters must be >= 0, got -1"),
    (["train.max_iters=2.5"], "train.max_iters must be an integer >= 0, got 2.5"),
    (["train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
    (["train.optimizer.lr=0"], "train.optimizer.lr must be > 0, got 0"),
    (["train.optimizer.lr=-0.1"], "train.optimizer.lr must be > 0, got -0.1"),
    (["train.optimizer.lr=nan"], "train.optimizer.lr must be a finite number, got nan"),
    (["train.warmup_iters=-5"], "train.warmup_iters must be >= 0, got -5"),
    (["train.warmup_factor=2"], "train.warmup_factor must be <= 1, got 2"),
    (
        ["train.schedule=linear"],
        "train.schedule must be one of constant, cosine, step, exponential, got 'linear'",
    ),
    (
        ["meta_arch=faster_rcnn", "meta_arch.num_proposals=0"],
        "meta_arch.num_proposals must be >= 1, got 0",
    ),
    (["meta_arch.nms_threshold=1.5"], "meta_arch.nms_threshold must be <= 1, got 1.5"),
    (["meta_arch.score_threshold=-0.1"], "meta_arch.score_threshold must be >= 0, got -0.1"),
    (
        [
            "meta_arch=faster_rcnn",
            "+meta_arch.rpn.pos_threshold=0.2",
            "+meta_arch.rpn.neg_threshold=0.3",
        ],
        "meta_arch.rpn.pos_threshold must be >= meta_arch.rpn.neg_threshold (0.3), got 0.2",
    ),
    (
        ["meta_arch=faster_rcnn", "meta_arch.box_head.positive_fraction=1.5"],
        "meta_arch.box_head.positive_fraction must be <= 1, got 1.5",
    ),
    (["eval_batch_size=0"], "eval_batch_size must be >= 1, got 0"),
    (["num_threads=0"], "num_threads must be >= 1, got 0"),
    (["device=gpu"], "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["bench.num_images=0"], "bench.num_images must be >= 1, got 0"),
    (["bench.warmup=-1"], "bench.warmup must be >= 0, got -1"),
    (["bench.precision=fp8"], "bench.precision must be one of fp32, fp16, bf16, got 'fp8'"),
    (["bench.throughput_batch_size=0"], "bench.throughput_batch_size must be >= 1, got 0"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[b[1].split()[0] for b in BAD])
def test_a_bad_setting_is_named_with_its_range(overrides, message):
    cfg = _cfg(*overrides)
    assert settings_problems(cfg) == [message]
    with pytest.raises(SettingsError) as raised:
        check_settings(cfg)
    assert str(raised.value) == message


def test_every_problem_is_reported_at_once():
    problems = settings_problems(_cfg("data.image_size=-64", "train.max_iters=-1"))
    assert problems == [
        "data.image_size must be >= 32, got -64",
        "train.max_iters must be >= 0, got -1",
    ]


def test_the_table_is_extensible():
    cfg = _cfg("train.max_iters=300")
    assert settings_problems(cfg) == []
    extra = (*CHECKS, ("train.max_iters", integer(0, 100)))
    assert settings_problems(cfg, extra) == ["train.max_iters must be <= 100, got 300"]


def _shipped() -> list[list[str]]:
    """One configuration per meta-architecture, paper preset and sweep preset (first job)."""
    configs = [[f"meta_arch={p.stem}"] for p in sorted((SWEEPS / "meta_arch").glob("*.yaml"))]
    configs += [[f"+preset={p.stem}"] for p in sorted((SWEEPS / "preset").glob("*.yaml"))]
    configs += [[f"train/optimizer={p.stem}"] for p in (SWEEPS / "train" / "optimizer").glob("*")]
    configs += [[f"+sweep={p.stem}"] for p in sorted((SWEEPS / "sweep").glob("*.yaml"))]
    return configs


@pytest.mark.parametrize("overrides", _shipped(), ids=lambda o: o[0])
def test_every_shipped_configuration_passes(overrides):
    """No false alarm: the defaults, presets and sweeps of the project are valid."""
    assert settings_problems(_cfg(*overrides)) == []


def test_a_bad_setting_fails_the_job_before_data_is_built(tmp_path):
    data_root = tmp_path / "data"
    out = tmp_path / "job"
    result = run_job(tiny_cfg(data_root, "data.image_size=-64"), out, progress=False)
    assert result["status"] == "failed"
    assert result["error"] == "SettingsError: data.image_size must be >= 32, got -64"
    assert read_result(out) == result  # recorded like any failure
    assert not data_root.exists()  # the synthetic set was never generated
    assert result["image_size"] == -64 and result["config"]["data"]["image_size"] == -64


@pytest.mark.parametrize(
    "overrides",
    [["train.max_iters=-1"], ["meta_arch=faster_rcnn", "meta_arch.num_proposals=0"]],
    ids=["max_iters=-1", "num_proposals=0"],
)
def test_issue_cases_that_ended_ok_now_fail(tmp_path, overrides):
    """``train.max_iters=-1`` ran as a profile-only job and ``num_proposals=0`` measured a
    detector without proposals; both said ok."""
    result = run_job(tiny_cfg(tmp_path / "data", *overrides), tmp_path / "job", progress=False)
    assert result["status"] == "failed" and result["error"].startswith("SettingsError: ")
    assert not (tmp_path / "data").exists()
