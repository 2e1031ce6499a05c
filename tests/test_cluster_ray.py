"""The ``smoke`` sweep on a real Ray cluster, started here (``tests/local_ray.py``).

One module-scoped fixture starts a one-node Ray cluster (2 CPUs, its own temporary folder and
ports) whose workers do not get this test's ``PYTHONPATH``, and runs, as a user does, from a
different folder than the cluster's::

    detbench -m +sweep=smoke hydra/launcher=ray_cluster num_threads=1    # RAY_ADDRESS set

three times into one sweep folder: (1) the whole sweep, two jobs at a time on the two CPUs;
(2) with ``meta_arch=ssd extractor.weights_path=/missing/weights.pt,null``: one job fails on
its worker (the file is missing there, found only when the model is built), the other
ends ok; (3) that command again: the ok job is skipped, the failed one runs again. Then it
stops the cluster (its own processes only) and the tests check what each run left behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from local_ray import LocalRay, ray_cli

from benchmark.results import git_sha

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(3600)]

META_ARCHS = ["ssd", "dssd", "refinedet", "faster_rcnn", "rfcn"]
SMOKE_JOBS = {f"extractor=mobilenet_v3_small,meta_arch={m},num_threads=1" for m in META_ARCHS}
# A runtime failure with a traceback (a bad *setting* such as lr=-1 fails before anything runs)
FAILING = ["meta_arch=ssd", "extractor.weights_path=/missing/weights.pt,null"]
BAD, GOOD = "weights_path=_missing", "weights_path=null"  # in the job folder names
SWEEP_TIMEOUT = 1800  # s per command: the 2 cores are shared; an idle machine needs ~3 min


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    pid: int


@dataclass
class RaySweep:
    cluster: LocalRay
    sweep: Path
    start_seconds: float
    full: Run
    full_results: dict[str, dict]  # job -> result.json after the full run
    after_full: dict[str, float]  # job -> result.json mtime
    failing: Run
    after_failing: dict[str, float]
    rerun: Run
    after_rerun: dict[str, float]
    leftover: list[int]  # processes of the cluster still alive after its stop
    killed: list[int]  # processes that needed SIGKILL


def _results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}


def _mtimes(sweep: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/result.json")}


def _detbench(root: Path, env: dict[str, str], *overrides: str) -> Run:
    command = [sys.executable, "-m", "benchmark", "-m", "+sweep=smoke"]
    command += ["hydra/launcher=ray_cluster", "num_threads=1", *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=SWEEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()  # the driver; the cluster's stop ends its tasks
        pytest.fail(f"{' '.join(command)}: no end after {SWEEP_TIMEOUT} s\n{proc.communicate()[0]}")
    return Run(proc.returncode, output, time.perf_counter() - start, proc.pid)


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory) -> RaySweep:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install -e '.[cluster]'")
    if ray_cli() is None:
        pytest.skip("no `ray` command next to this Python: pip install -e '.[cluster]'")
    root = tmp_path_factory.mktemp("ray")
    cache = str(root / "cache")  # synthetic data and timing locks, shared by all jobs here
    # The nodes' environment: no PYTHONPATH, so the workers can only run this checkout's code
    # if the preset ships it (a node's own detbench install may be another version).
    node_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    node_env["DETBENCH_CACHE"] = cache
    cluster = LocalRay(num_cpus=2, env=node_env, cwd=tmp_path_factory.mktemp("ray_node"))
    try:
        t0 = time.perf_counter()
        try:
            address = cluster.start()
            start_seconds = time.perf_counter() - t0
            env = {**os.environ, "RAY_ADDRESS": address, "DETBENCH_CACHE": cache}
            env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
            sweep = root / "results" / "smoke"  # results_root=results, relative to the driver
            full = _detbench(root, env)
            full_results, after_full = _results(sweep), _mtimes(sweep)
            failing = _detbench(root, env, *FAILING)
            after_failing = _mtimes(sweep)
            rerun = _detbench(root, env, *FAILING)
            after_rerun = _mtimes(sweep)
        finally:
            killed = cluster.stop()
            leftover = cluster.processes()
        yield RaySweep(
            cluster, sweep, start_seconds, full, full_results, after_full,
            failing, after_failing, rerun, after_rerun, leftover, killed,
        )  # fmt: skip
    finally:
        cluster.remove()


def test_sweep_runs_on_the_ray_workers(ray_sweep):
    run = ray_sweep.full
    print(
        f"ray start: {ray_sweep.start_seconds:.0f} s ({ray_sweep.cluster.attempts} attempt(s)); "
        f"smoke sweep: {run.seconds:.0f} s"
    )
    assert run.returncode == 0, run.output[-5000:]
    assert "Ray Launcher is launching 5 jobs" in run.output
    assert "Connecting to existing Ray cluster" in run.output  # not a throw-away local Ray
    results = ray_sweep.full_results
    assert set(results) == SMOKE_JOBS
    assert {r["status"] for r in results.values()} == {"ok"}, {
        job: r["error"] for job, r in results.items()
    }
    # Every job logged its summary line from a worker of this cluster (never the driver):
    # Ray writes each worker's output to logs/worker-<id>-<job>-<pid>.out in our session.
    logs = {
        p: p.read_text(errors="replace") for p in ray_sweep.cluster.session_logs().glob("worker-*")
    }
    for r in results.values():  # the job's last line: "SSD w/ mobilenet_v3_small: ok: AP ..."
        line = f"{r['meta_arch_name']} w/ mobilenet_v3_small: ok: "
        writers = [p for p, text in logs.items() if line in text]
        assert writers, f"no worker of the cluster logged {line!r}"
        assert all(not p.stem.endswith(f"-{run.pid}") for p in writers)
    assert "detbench: sweep smoke: 5 jobs: 5 ok" in run.output


def test_workers_run_the_submitting_checkout(ray_sweep):
    """The preset ships this checkout to the workers (runtime_env.py_modules)."""
    failed = [job for job in _results(ray_sweep.sweep) if BAD in job]
    assert len(failed) == 1
    trace = (ray_sweep.sweep / failed[0] / "traceback.txt").read_text()
    frames = re.findall(r'File "([^"]+)"', trace)
    ours = [f for f in frames if re.search(r"/(benchmark|models)/[^/]+\.py$", f)]
    assert ours, trace
    # Extracted into this cluster's session folder, not imported from a node's install.
    shipped = str(ray_sweep.cluster.temp_dir)
    assert all(f.startswith(shipped) and "py_modules_files" in f for f in ours), ours
    sha = git_sha()  # the submitting checkout's commit; the copy has no .git of its own
    if sha is not None:
        assert {r["git_sha"] for r in _results(ray_sweep.sweep).values()} == {sha}


def test_measurements_never_overlap_across_workers(ray_sweep):
    results = [r for r in _results(ray_sweep.sweep).values() if r["status"] == "ok"]
    assert len(results) == 6  # 5 smoke jobs + the good job of the failing run
    assert all(r["timing_exclusive"] is True for r in results)
    spans = sorted((r["measure_started_at"], r["measure_ended_at"]) for r in results)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, spans
    # Not vacuous: jobs did run side by side (2 CPUs, one per job), so the lock had work.
    # A job runs from its result.json's write time minus job_seconds to that write time.
    runs = sorted(
        (ray_sweep.after_full[job] / 1e9 - r["job_seconds"], ray_sweep.after_full[job] / 1e9)
        for job, r in ray_sweep.full_results.items()
    )
    assert any(a[1] > b[0] for a, b in zip(runs, runs[1:], strict=False)), runs


def test_failing_job_is_recorded_like_a_local_one(ray_sweep):
    run = ray_sweep.failing
    assert run.returncode == 1, run.output[-5000:]
    results = _results(ray_sweep.sweep)
    failed = [j for j in results if BAD in j]
    finished = [j for j in results if GOOD in j]
    assert len(failed) == 1 and len(finished) == 1, sorted(results)
    bad = results[failed[0]]
    assert bad["status"] == "failed" and "/missing/weights.pt" in bad["error"]
    assert results[finished[0]]["status"] == "ok"
    assert "1 job(s) failed in this run" in run.output
    table = pd.read_csv(ray_sweep.sweep / "results.csv")
    assert len(table) == 7 and (table["status"] == "failed").sum() == 1
    assert (ray_sweep.sweep / "report.html").is_file()
    assert failed[0] in (ray_sweep.sweep / "report.html").read_text()


def test_rerun_skips_ok_jobs_and_runs_failed_ones_again(ray_sweep):
    run = ray_sweep.rerun
    print(f"failing run: {ray_sweep.failing.seconds:.0f} s; re-run: {run.seconds:.0f} s")
    assert run.returncode == 1, run.output[-5000:]  # the bad job failed again
    before, after = ray_sweep.after_failing, ray_sweep.after_rerun
    (ok,) = [j for j in after if GOOD in j]
    (bad,) = [j for j in after if BAD in j]
    assert after[ok] == before[ok], "the ok job ran again"
    assert after[bad] != before[bad], "the failed job was not run again"
    for job in SMOKE_JOBS:  # not part of this command, untouched
        assert after[job] == ray_sweep.after_full[job]
    assert "1 job(s) failed in this run" in run.output


def test_only_the_started_cluster_was_stopped(ray_sweep):
    assert ray_sweep.leftover == [], (
        f"processes of the test cluster still alive: {ray_sweep.leftover}"
    )
    assert ray_sweep.killed == [], f"needed SIGKILL: {ray_sweep.killed}"
