"""The frontier search end to end on the built-in data: profile-only jobs (no training), a
budget of a few jobs, SIGKILL in the middle, resume without repeating a finished job."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILE_ONLY = [
    "train.max_iters=0",  # no training, no evaluation: the accuracy keys stay null
    "extractor=mobilenet_v3_small",
    "data.image_size=64",
    "num_threads=1",
    "progress=false",
    *(f"bench.enabled.{p}=false" for p in ("latency", "throughput", "memory", "roofline")),
]


def _command(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "benchmark", "-m", "+search=frontier", f"results_root={root}",
        "meta_arch=ssd,rfcn", *PROFILE_ONLY, *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _trials(sweep: Path) -> list[dict[str, str]]:
    path = sweep / "search_trials.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _jobs(rows: list[dict[str, str]]) -> list[str]:
    return [r["job"] for r in rows if r["launched"] == "True" and r["interrupted"] == "False"]


def _finished_jobs(sweep: Path) -> list[str]:
    """Job folders of the study's finished, launched trials, in trial order."""
    import optuna

    study = optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'study.db'}")
    return [
        t.user_attrs["job"]
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.user_attrs.get("launched")
        and not t.user_attrs.get("interrupted")
    ]  # fmt: skip


@pytest.mark.slow
def test_search_resumes_after_sigkill_without_repeating_finished_jobs(tmp_path):
    # params (maximized) against GMACs (minimized): both measured by profile-only jobs
    cmd = _command(
        tmp_path,
        "hydra.sweeper.accuracy=params",
        "hydra.sweeper.cost=gmacs",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.sampler.seed=1",
    )
    sweep = tmp_path / "frontier"
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while len([r for r in _trials(sweep) if r["state"] == "COMPLETE" and r["job"]]) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no two trials finished"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished_jobs(sweep)  # from the study: the CSV may lag it by one trial
    assert len(before) >= 2
    mtimes = {job: (sweep / job / "result.json").stat().st_mtime_ns for job in before}

    done = subprocess.run(
        cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:]
    rows = _trials(sweep)
    jobs = _jobs(rows)
    assert len(jobs) == 5 and len(set(jobs)) == 5  # the budget, each configuration once
    assert jobs[: len(before)] == before
    assert f"{len(before)} of 5 jobs done" in done.stdout
    for job, mtime in mtimes.items():  # finished jobs were not run again
        assert (sweep / job / "result.json").stat().st_mtime_ns == mtime
    assert {r["state"] for r in rows} <= {"COMPLETE", "FAIL"}  # none left RUNNING
    results = [p.parent.name for p in sweep.glob("*/result.json")]
    assert sorted(results) == sorted(jobs)
    for row in rows:  # a two-stage job has proposals, a single-shot one a neck: never both
        if not row["overrides"]:  # killed while being asked: interrupted, nothing composed
            assert row["state"] == "FAIL" and row["interrupted"] == "True", row
            continue
        two_stage = "meta_arch=rfcn" in row["overrides"]
        assert ("meta_arch.num_proposals=" in row["overrides"]) == two_stage, row
        assert ("neck=" in row["overrides"]) != two_stage, row
    assert "Frontier search" in (sweep / "report.html").read_text()
    assert (sweep / "search_hypervolume.png").stat().st_size > 0
    with (sweep / "search.csv").open() as f:
        curve = [float(r["hypervolume"]) for r in csv.DictReader(f)]
    assert len(curve) == 5 and curve == sorted(curve) and curve[-1] > 0

    again = subprocess.run(
        cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert again.returncode == 0, again.stdout[-3000:]
    assert "5 of 5 jobs done" in again.stdout
    assert _jobs(_trials(sweep)) == jobs  # nothing launched
