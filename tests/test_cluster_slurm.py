"""The ``smoke`` sweep on a real SLURM cluster, started here (``tests/local_slurm.py``).

A module-scoped fixture brings up a one-node SLURM cluster on this machine (munged,
slurmctld, slurmd; root and Debian's ``slurm-wlm`` + ``munge`` needed, skipped with the
reason otherwise), then submits, as a user does::

    detbench -m +sweep=smoke hydra/launcher=slurm_1gpu hydra.launcher.partition=detbench \\
             hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 \\
             hydra.launcher.mem_gb=1 num_threads=1

(``slurm_1gpu`` with its GPU request switched off and sized for this machine). submitit puts
the five jobs in one job array and waits for it; the report is written when it ends. The
fixture then tears the cluster down (its own daemons and jobs only).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from local_slurm import PARTITION, LocalSlurm, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(3600)]

META_ARCHS = ["ssd", "dssd", "refinedet", "faster_rcnn", "rfcn"]
SMOKE_JOBS = {f"extractor=mobilenet_v3_small,meta_arch={m},num_threads=1" for m in META_ARCHS}
SWEEP_TIMEOUT = 1800  # s: the 2 cores are shared; an idle machine needs ~2 min


@dataclass
class SlurmSweep:
    cluster: LocalSlurm
    sweep: Path
    start_seconds: float
    returncode: int
    output: str
    seconds: float
    ctld_log: str
    leftover: list[int]  # processes of the cluster's jobs still alive after its stop


@pytest.fixture(scope="module")
def slurm_sweep(tmp_path_factory) -> SlurmSweep:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[dev]'")
    reason = unavailable()
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    root = tmp_path_factory.mktemp("slurm")
    cluster = LocalSlurm()
    try:
        t0 = time.perf_counter()
        try:
            cluster.start()  # a failure here fails the test, with the daemons' logs
            start_seconds = time.perf_counter() - t0
            env = {**cluster.env, "DETBENCH_CACHE": str(root / "cache")}
            env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
            command = [sys.executable, "-m", "benchmark", "-m", "+sweep=smoke"]
            command += ["hydra/launcher=slurm_1gpu", f"hydra.launcher.partition={PARTITION}"]
            command += ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1"]
            command += ["hydra.launcher.mem_gb=1", "num_threads=1"]
            t1 = time.perf_counter()
            done = subprocess.run(
                command,
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=SWEEP_TIMEOUT,
                check=False,
            )
            seconds = time.perf_counter() - t1
        finally:
            leftover = cluster.stop()
        ctld_log = (cluster.root / "slurmctld.log").read_text(errors="replace")
        yield SlurmSweep(
            cluster, root / "results" / "smoke", start_seconds, done.returncode,
            done.stdout + done.stderr, seconds, ctld_log, leftover,
        )  # fmt: skip
    finally:
        cluster.remove()


def _results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}


def test_sweep_runs_as_a_slurm_job_array(slurm_sweep):
    s = slurm_sweep
    print(f"cluster start: {s.start_seconds:.0f} s; smoke sweep: {s.seconds:.0f} s")
    assert s.returncode == 0, s.output[-5000:]
    results = _results(s.sweep)
    assert set(results) == SMOKE_JOBS
    assert {r["status"] for r in results.values()} == {"ok"}, {
        job: r["error"] for job, r in results.items()
    }
    # Five tasks of one array, scheduled and completed by this cluster's controller.
    done = re.findall(r"_job_complete: JobId=(\d+)_(\d+)\(\d+\) WEXITSTATUS 0", s.ctld_log)
    assert len({job for job, _ in done}) == 1 and {int(t) for _, t in done} == set(range(5))
    # submitit's batch script: our partition, no GPU request, one CPU per job.
    # (one per array, linked from every task's folder)
    (script,) = {p.resolve() for p in (s.sweep / ".submitit").glob("*/*_submission.sh")}
    text = script.read_text()
    assert f"#SBATCH --partition={PARTITION}" in text and "#SBATCH --cpus-per-task=1" in text
    assert not re.search(r"^#SBATCH --(gpus|gres)", text, re.M), text
    logs = "".join(p.read_text() for p in (s.sweep / ".submitit").glob("*/*_log.out"))
    for r in _results(s.sweep).values():  # each job's last line, logged inside the SLURM job
        assert f"{r['meta_arch_name']} w/ mobilenet_v3_small: ok: " in logs


def test_measurements_never_overlap(slurm_sweep):
    results = list(_results(slurm_sweep.sweep).values())
    assert all(r["timing_exclusive"] is True for r in results)
    spans = sorted((r["measure_started_at"], r["measure_ended_at"]) for r in results)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, spans
    # Not vacuous: two jobs at a time on the node's two CPUs (one CPU per job).
    runs = sorted(
        (p.stat().st_mtime - json.loads(p.read_text())["job_seconds"], p.stat().st_mtime)
        for p in slurm_sweep.sweep.glob("*/result.json")
    )
    assert any(a[1] > b[0] for a, b in zip(runs, runs[1:], strict=False)), runs


def test_report_covers_the_sweep(slurm_sweep):
    assert "detbench: sweep smoke: 5 jobs: 5 ok" in slurm_sweep.output
    assert (slurm_sweep.sweep / "report.html").is_file()
    table = pd.read_csv(slurm_sweep.sweep / "results.csv")
    assert set(table["job"]) == SMOKE_JOBS and set(table["status"]) == {"ok"}


def test_cluster_torn_down(slurm_sweep):
    assert slurm_sweep.leftover == [], f"processes of the test cluster left: {slurm_sweep.leftover}"
    procs = slurm_sweep.cluster.procs
    assert set(procs) == {"munged", "slurmctld", "slurmd"}
    assert all(proc.poll() is not None for proc in procs.values())
