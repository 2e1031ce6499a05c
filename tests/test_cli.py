"""The command line: ``detbench --help``, a job's last line, sweep progress, and
``detbench-report --metric/--cost/--where`` with its errors."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict
from report_fakes import fake_result, write_job

import benchmark.app  # noqa: F401  (registers the resolvers the config uses)
import sweeps
from benchmark import progress
from benchmark.report.cli import main as report_cli

SWEEPS = Path(sweeps.__file__).parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _detbench(*args: str, cwd: Path | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_describes_groups_and_examples():
    done = _detbench("--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "speed/accuracy benchmarking of object detectors" in text
    for group in ("meta_arch", "extractor", "neck", "data", "sweep", "preset"):
        options = sorted(p.stem for p in (SWEEPS / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in text  # listed from the folders
    examples = text.split("== Examples ==")[1].split("== More ==")[0]
    commands = [line for line in examples.splitlines() if line.strip().startswith("detbench")]
    assert len(commands) >= 5
    assert "--hydra-help" in text and "_target_" not in text  # no config dump
    hydra_help = _detbench("--hydra-help")
    assert hydra_help.returncode == 0 and "== Flags ==" in hydra_help.stdout


def test_a_jobs_last_line_says_what_it_measured(tmp_path):
    out = tmp_path / "job"
    done = _detbench(
        "meta_arch=ssd",
        "extractor=mobilenet_v3_small",
        "data.num_train=8",
        "data.num_val=4",
        "data.image_size=64",
        "train.max_iters=0",
        "bench.warmup=1",
        "bench.num_images=2",
        "bench.enabled.throughput=false",
        "bench.enabled.train_memory=false",
        "bench.memory_fresh_process=false",
        "bench.roofline_seconds=0.05",
        "progress=false",
        "num_threads=1",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "[detbench]" in ln]
    last = lines[-1]
    assert re.search(
        r"SSD w/ mobilenet_v3_small: ok: AP n/a, AP50 n/a, "
        r"latency [\d.]+ ms( \[[\d.]+, [\d.]+\])?, "  # the median's interval, when timed enough
        r"multiply-adds [\d.]+ GMACs, peak memory [\d.]+ MiB -> ",
        last,
    ), last
    assert last.endswith(str(out / "result.json"))


# -- progress of a multirun --------------------------------------------------------------


@pytest.fixture(scope="module")
def hydra_sweeps():
    with initialize_config_module("sweeps", version_base="1.3"):
        yield


@pytest.mark.parametrize(
    ("overrides", "jobs"),
    [
        (["+sweep=smoke"], 5),  # five meta-architectures x one extractor
        (["+sweep=smoke", "meta_arch=ssd", "train.optimizer.lr=-1,0.05"], 2),
        (["meta_arch=ssd,rfcn", "extractor=resnet18,mobilenet_v2,vgg16", "seed=0,1"], 12),
        (["meta_arch=ssd"], 1),
    ],
)
def test_sweep_size_expands_like_the_basic_sweeper(hydra_sweeps, overrides, jobs):
    # The multirun's config: composed with the sweep preset (the sweeper's params), and the
    # command line as Hydra records it (compose itself refuses sweep values).
    preset = [o for o in overrides if o.startswith("+sweep=")]
    config = compose("config", overrides=preset, return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = overrides
    assert progress.sweep_size(config) == jobs


def test_sweep_size_is_unknown_for_other_sweepers():
    config = OmegaConf.create({"hydra": {"sweeper": {"_target_": "some.OptunaSweeper"}}})
    assert progress.sweep_size(config) is None


def test_durations():
    assert [progress.duration(s) for s in (0, 42.4, 372, 7500)] == ["0s", "42s", "6m12s", "2h05m"]


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class _Return:
    def __init__(self, value):
        self._return_value = value


def test_progress_counts_jobs_and_estimates_from_jobs_that_ran(tmp_path, monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    sweep = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": progress.BASIC_SWEEPER, "params": {"a": "1,2"}},
                "overrides": {"task": ["b=x,y"]},
            }
        }
    )
    callback = progress.SweepProgress()
    callback.on_multirun_start(sweep)

    def job(name: str):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        return OmegaConf.create(
            {"hydra": {"runtime": {"output_dir": str(folder)}, "job": {"override_dirname": name}}}
        )

    caplog.set_level(logging.INFO, logger="detbench")
    first = job("a=1,b=x")
    callback.on_job_start(first)
    clock.now = 100.0  # ran for 100 s and wrote its result
    (tmp_path / "a=1,b=x" / "result.json").write_text('{"status": "ok"}')
    callback.on_job_end(first, _Return({"status": "ok"}))

    second = job("a=1,b=y")  # already done in an earlier run: returns at once, writes nothing
    (tmp_path / "a=1,b=y" / "result.json").write_text('{"status": "ok"}')
    callback.on_job_start(second)
    clock.now = 101.0
    callback.on_job_end(second, _Return({"status": "ok"}))

    callback.on_job_start(job("a=2,b=x"))
    # 2 of 4 done; the one job that ran took 100 s: 2 x 100 s left.
    assert caplog.messages[-1] == (
        "detbench: job 3/4 (2 done: 2 ok; elapsed 1m41s, about 3m20s left): a=2,b=x"
    )
    assert caplog.messages[0] == "detbench: job 1/4 (0 done; elapsed 0s): a=1,b=x"


def test_progress_stays_quiet_in_another_process(tmp_path, monkeypatch, caplog):
    """A copy of the callback in a submitit/Ray worker has no counts: it logs nothing."""
    callback = progress.SweepProgress()
    callback.on_multirun_start(OmegaConf.create({"hydra": {}}))
    monkeypatch.setattr(progress.os, "getpid", lambda: -1)
    config = OmegaConf.create(
        {"hydra": {"runtime": {"output_dir": str(tmp_path)}, "job": {"override_dirname": "x"}}}
    )
    caplog.set_level(logging.INFO, logger="detbench")
    callback.on_job_start(config)
    callback.on_job_end(config, _Return({"status": "ok"}))
    assert not caplog.messages


# -- detbench-report: metric, cost, subset --------------------------------------------------

# Four configurations with hand-made accuracies: on latency, the mAP frontier of ssd+rfcn is
# {A, B} and the mAP@.5 frontier is {A, C} (B is slower than A and worse at IoU 0.5; C is
# slower than B and worse in mAP). D would dominate everything but is not selected.
JOBS = {
    "A": ("ssd", "resnet101", 10.0, 0.20, 0.40),
    "B": ("ssd", "inception_v3", 20.0, 0.30, 0.35),
    "C": ("rfcn", "resnet101", 30.0, 0.25, 0.50),
    "D": ("faster_rcnn", "resnet101", 5.0, 0.90, 0.95),
}


@pytest.fixture
def hand_sweep(tmp_path):
    for job, (meta, extractor, latency, m, m50) in JOBS.items():
        result = fake_result(meta, extractor, 300, 300 if meta != "ssd" else None)
        write_job(tmp_path, job, {**result, "latency_ms": latency, "map": m, "map_50": m50})
    return tmp_path


def _frontier(out: Path) -> list[str]:
    return sorted(pd.read_csv(out / "frontier.csv")["job"])


def test_report_metric_cost_and_subset(hand_sweep, tmp_path):
    out = tmp_path / "map50"
    args = [str(hand_sweep), "--out", str(out), "--where", "meta_arch=ssd,rfcn"]
    assert report_cli([*args, "--metric", "map_50", "--cost", "latency_ms"]) == 0
    front = pd.read_csv(out / "frontier.csv")
    assert set(front["axis"]) == {"latency"} and sorted(front["job"]) == ["A", "C"]
    assert sorted(pd.read_csv(out / "results.csv")["job"]) == ["A", "B", "C"]
    assert not (out / "pareto_gmacs.png").exists() and (out / "pareto_latency.png").is_file()
    page = (out / "report.html").read_text()
    assert "meta_arch in ssd, rfcn" in page and "maximizing mAP@.5." in page
    assert report_cli([*args, "--out", str(tmp_path / "map"), "--cost", "latency_ms"]) == 0
    assert _frontier(tmp_path / "map") == ["A", "B"]
    numeric = [str(hand_sweep), "--out", str(tmp_path / "numeric"), "--cost", "latency_ms"]
    numeric += ["--where", "image_size=300.0", "--where", "family=two-stage"]  # 300.0 == 300
    assert report_cli(numeric) == 0
    assert sorted(pd.read_csv(tmp_path / "numeric" / "results.csv")["job"]) == ["C", "D"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "latency_ms"], r"unknown accuracy metric 'latency_ms'; valid: map, map_50"),
        (["--metric", "map50"], r"did you mean map_50"),
        (["--cost", "map"], r"unknown cost axis 'map'; valid: latency_ms, "),
        (["--where", "nosuch=1"], r"unknown column 'nosuch'; valid: .*meta_arch"),
        (["--where", "meta_arch"], r"expected column=value"),
        (["--where", "image_size=big"], r"image_size is numeric"),
    ],
)
def test_report_errors_list_the_valid_choices(hand_sweep, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert report_cli([str(hand_sweep), "--out", str(out), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # nothing written


def test_report_help_lists_metrics_and_costs(capsys):
    with pytest.raises(SystemExit) as exit_:
        report_cli(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--metric" in text and "--where" in text and "detbench-report results/quick" in text
    assert re.search(r"map_50\s+mAP@\.5\n", text)
    assert re.search(r"peak_mem_mb\s+Peak inference memory", text)
