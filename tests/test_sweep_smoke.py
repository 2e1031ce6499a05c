"""The real ``smoke`` sweep end to end, in subprocesses, as a user runs it.

One module-scoped fixture drives four ``detbench -m +sweep=smoke`` runs into one temporary
results folder, and the tests check what each left behind:

1. interrupted: killed (SIGKILL of its process group) as soon as the first job finished;
2. resumed: the same command completes the sweep without re-running the finished job;
3. re-run: everything is done, so every job is skipped and nothing is re-written;
4. failing: ``train.optimizer.lr=-1,0.05`` on one detector: the first job fails inside the
   job (its settings check names the learning rate), the second still trains, and the
   command exits 1 with a summary line naming the failure, after the report is written.

Then the table, every report file, the schema documentation and the notebook are checked
on the result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.report import FIGURES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
META_ARCHS = ["ssd", "dssd", "refinedet", "faster_rcnn", "rfcn"]
# Job folders as Hydra names them: the overrides, sorted, without +sweep= and results_root=.
SMOKE_JOBS = {f"extractor=mobilenet_v3_small,meta_arch={m}" for m in META_ARCHS}
ALWAYS_FILES = [
    "results.csv",
    "frontier.csv",
    "report.html",
    "pareto_latency.png",
    "pareto_gmacs.png",
    "pareto_memory.png",
]


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float


@dataclass
class Smoke:
    sweep: Path
    interrupted: Run
    finished_first: dict[str, float]  # job -> result.json mtime when the first run was killed
    resumed: Run
    after_resume: dict[str, float]
    rerun: Run
    after_rerun: dict[str, float]
    failing: Run


def _command(root: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmark",
        "-m",
        "+sweep=smoke",
        f"results_root={root / 'results'}",
        *overrides,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}


def _run(root: Path, *overrides: str, timeout: float = 600) -> Run:
    start = time.perf_counter()
    done = subprocess.run(
        _command(root, *overrides),
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout + done.stderr, time.perf_counter() - start)


def _results(sweep: Path) -> dict[str, dict]:
    out = {}
    for path in sweep.glob("*/result.json"):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being replaced right now: writes are atomic renames
    return out


def _mtimes(sweep: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/result.json")}


def _interrupt_after_first_job(root: Path, sweep: Path) -> Run:
    """Start the sweep and SIGKILL its whole process group once one job has finished ok."""
    start = time.perf_counter()
    log = root / "interrupted.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _command(root),
            cwd=root,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if any(r.get("status") == "ok" for r in _results(sweep).values()):
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # our own child's group, nothing else
            proc.wait(timeout=60)
    return Run(proc.returncode, log.read_text(), time.perf_counter() - start)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Smoke:
    root = tmp_path_factory.mktemp("smoke")
    sweep = root / "results" / "smoke"
    interrupted = _interrupt_after_first_job(root, sweep)
    finished_first = _mtimes(sweep)
    resumed = _run(root)
    after_resume = _mtimes(sweep)
    rerun = _run(root)
    after_rerun = _mtimes(sweep)
    failing = _run(root, "meta_arch=ssd", "train.optimizer.lr=-1,0.05")
    return Smoke(
        sweep, interrupted, finished_first, resumed, after_resume, rerun, after_rerun, failing
    )


def test_interrupted_sweep_keeps_finished_jobs(smoke):
    assert smoke.interrupted.returncode == -signal.SIGKILL, smoke.interrupted.output[-3000:]
    assert smoke.finished_first, "no job had finished when the sweep was killed"
    assert set(smoke.finished_first) < SMOKE_JOBS, "the sweep ended before it could be killed"


def test_resumed_sweep_completes_without_redoing_finished_jobs(smoke):
    assert smoke.resumed.returncode == 0, smoke.resumed.output[-5000:]
    assert set(smoke.after_resume) == SMOKE_JOBS
    for job, mtime in smoke.finished_first.items():
        assert smoke.after_resume[job] == mtime, f"{job} was run again"
    assert smoke.resumed.output.count("already has an ok result") == len(smoke.finished_first)
    # mobilenet_v3_small works under every meta-architecture: each of the five must train,
    # evaluate and measure (a skipped or failed two-stage job is a broken config, not a pass).
    statuses = {job: r["status"] for job, r in _results(smoke.sweep).items() if job in SMOKE_JOBS}
    assert statuses == dict.fromkeys(SMOKE_JOBS, "ok"), {
        job: r["error"] for job, r in _results(smoke.sweep).items() if r["status"] != "ok"
    }


def test_rerun_skips_every_finished_job(smoke):
    assert smoke.rerun.returncode == 0, smoke.rerun.output[-5000:]
    ok = [j for j, r in _results(smoke.sweep).items() if j in SMOKE_JOBS and r["status"] == "ok"]
    # No finished job was re-written (skipped jobs are cheap and are re-checked).
    assert {j: smoke.after_rerun[j] for j in ok} == {j: smoke.after_resume[j] for j in ok}
    assert smoke.rerun.output.count("already has an ok result") == len(ok)
    assert re.search(r"detbench: sweep smoke: \d+ jobs: \d+ ok", smoke.rerun.output)


def test_failing_job_is_recorded_and_the_others_finish(smoke):
    run = smoke.failing
    assert run.returncode == 1, run.output[-5000:]
    results = _results(smoke.sweep)
    failed = [j for j in results if "lr=-1" in j]
    finished = [j for j in results if "lr=0.05" in j]
    assert len(failed) == 1 and len(finished) == 1, sorted(results)
    bad = results[failed[0]]
    assert bad["status"] == "failed"
    assert bad["error"] == "SettingsError: train.optimizer.lr must be > 0, got -1"
    assert results[finished[0]]["status"] == "ok"
    # The summary line comes after every job ran and the report was written.
    assert "1 job(s) failed in this run" in run.output
    assert run.output.rindex("1 job(s) failed") > run.output.rindex("lr=0.05")
    page = (smoke.sweep / "report.html").read_text()
    assert failed[0] in page and "SettingsError: train.optimizer.lr" in page


def test_results_table_and_report_files(smoke):
    for name in ALWAYS_FILES:
        assert (smoke.sweep / name).is_file(), name
    for name in FIGURES:  # whatever figures apply are valid PNGs
        path = smoke.sweep / name
        assert not path.exists() or path.read_bytes().startswith(b"\x89PNG"), name
    table = pd.read_csv(smoke.sweep / "results.csv")
    assert len(table) == len(SMOKE_JOBS) + 2  # + the failing run's two jobs
    assert set(table["job"]) >= SMOKE_JOBS
    ok = table[table["status"] == "ok"]
    assert set(ok.loc[ok["job"].isin(SMOKE_JOBS), "meta_arch"]) == set(META_ARCHS)
    for column in ("map", "map_50", "latency_ms", "gmacs", "peak_mem_mb", "params"):
        assert ok[column].notna().all(), column
    assert (ok["latency_ms"] > 0).all() and (ok["gmacs"] > 0).all()
    parts = ok[["gmacs_extractor", "gmacs_neck", "gmacs_head"]].sum(axis=1)
    assert (ok["gmacs_extractor"] > 0).all() and np.allclose(parts, ok["gmacs"], rtol=1e-9)
    page = (smoke.sweep / "report.html").read_text()
    assert '<h2 id="extractors">Feature extractors</h2>' in page  # the extractor view
    assert 'id="frontier-latency"' in page  # the interactive frontier (plotly.js inline)
    assert (smoke.sweep / "pareto_latency.svg").is_file()
    assert (smoke.sweep / "pareto_latency.pdf").is_file()
    two_stage = ok[ok["meta_arch"].isin(["faster_rcnn", "rfcn"])]
    assert two_stage["num_proposals"].notna().all()
    frontier = pd.read_csv(smoke.sweep / "frontier.csv")
    assert set(frontier["axis"]) == {"latency", "gmacs", "memory"}
    assert set(frontier["job"]) <= set(ok["job"])


def test_every_result_key_is_documented(smoke):
    readme = (REPO / "results" / "README.md").read_text()
    first_cells = re.findall(r"^\|([^|]*)\|", readme, re.M)  # a row may name several keys
    documented = {k for cell in first_cells for k in re.findall(r"`([a-z0-9_]+)`", cell)}
    keys = set()
    for result in _results(smoke.sweep).values():
        keys |= set(result)
    keys |= set(pd.read_csv(smoke.sweep / "results.csv").columns)
    assert not keys - documented, f"undocumented keys: {sorted(keys - documented)}"


def test_report_cli_console_script(smoke, tmp_path):
    script = Path(sys.executable).with_name("detbench-report")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "benchmark.report.cli"]
    done = subprocess.run(
        [*command, str(smoke.sweep), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "jobs:" in done.stdout and (tmp_path / "report.html").is_file()


def test_notebook_runs_on_the_smoke_sweep(smoke, monkeypatch, tmp_path):
    """From a working directory outside the repository (the notebook finds its paths from
    the package); its extractor cell pairs like for like (the smoke sweep has one extractor:
    nothing to pair, and it says so rather than averaging)."""
    import nbclient  # dev extras (pyproject.toml): a missing one is a failure, not a skip
    import nbformat

    notebook = nbformat.read(REPO / "notebooks" / "tradeoffs.ipynb", as_version=4)
    monkeypatch.setenv("DETBENCH_SWEEP", str(smoke.sweep))  # the kernel inherits it
    nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "No setting of this sweep has two extractors: nothing to pair" in printed
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the three frontiers
