"""Job identity through the ``detbench`` command, as a user runs it (subprocesses).

* ``num_threads=1,2`` in one multirun gives two folders and two ok rows;
* a job run into a folder holding another configuration's ok result exits 1 and leaves the
  folder (result.json, checkpoint, ``.hydra/``) as it was; in a multirun it fails the command;
* two processes started on one folder: one trains, the other waits and skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# A profile-only SSD over MobileNetV3-Small at 64 px, nothing timed: seconds per job.
PROFILE = [
    "meta_arch=ssd",
    "extractor=mobilenet_v3_small",
    "data=synthetic",
    "data.num_train=8",
    "data.num_val=4",
    "data.gen_size=64",
    "data.image_size=64",
    "train.max_iters=0",
    "progress=false",
    "timing_lock=false",
    *(
        f"bench.enabled.{k}=false"
        for k in ("latency", "throughput", "flops", "memory", "train_memory", "roofline")
    ),
]


def _detbench(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".log"  # Hydra's job log appends every run's lines
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``detbench -m ... num_threads=1,2`` once; ``(root, its sweep folder, the process)``."""
    root = tmp_path_factory.mktemp("cli")
    args = ["-m", *PROFILE, f"data.root={root / 'data'}", f"results_root={root}", "sweep_name=s"]
    done = _detbench(root, *args, "num_threads=1,2")
    return root, root / "s", done, args


def test_the_threads_axis_keeps_both_jobs(sweep):
    root, folder, done, _ = sweep
    assert done.returncode == 0, done.stderr[-4000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/result.json")}
    assert len(results) == 2, sorted(results)
    threads = {}
    for name, result in results.items():
        assert result["status"] == "ok", result["error"]
        threads[result["num_threads"]] = name  # (a long name ends in a digest of the whole)
        overrides = (folder / name / ".hydra" / "overrides.yaml").read_text()
        assert f"num_threads={result['num_threads']}" in overrides  # written by the job
    assert set(threads) == {1, 2}
    assert len({r["config_fingerprint"] for r in results.values()}) == 2


def test_a_multirun_with_a_refused_job_exits_1_and_keeps_the_folder(sweep):
    root, folder, done, args = sweep
    assert done.returncode == 0
    job = next(
        p.parent for p in folder.glob("*/result.json") if b'"num_threads": 1,' in p.read_bytes()
    )
    result = json.loads((job / "result.json").read_text())
    result["config_fingerprint"] = "0" * 64  # as if another configuration had written it
    (job / "result.json").write_text(json.dumps(result))
    before = _files(job)
    again = _detbench(root, *args, "num_threads=1,2")
    assert again.returncode == 1, again.stderr[-4000:]
    log = again.stdout + again.stderr
    assert "refusing to run into" in log and "1 job(s) refused in this run" in log
    assert log.count("already has an ok result; skipping") == 1  # the other job
    after = _files(job)
    assert json.loads(after.pop("refused.json"))["status"] == "refused"
    assert after == before


def test_a_single_run_into_another_configurations_folder_exits_1(tmp_path):
    out = tmp_path / "job"
    data = f"data.root={tmp_path / 'data'}"
    first = _detbench(tmp_path, *PROFILE, data, f"hydra.run.dir={out}")
    assert first.returncode == 0, first.stderr[-4000:]
    before = _files(out)
    assert ".hydra/overrides.yaml" in before and "result.json" in before
    other = _detbench(tmp_path, *PROFILE, data, "num_threads=1", f"hydra.run.dir={out}")
    assert other.returncode == 1
    log = other.stdout + other.stderr
    assert f"refusing to run into {out}" in log and "num_threads: null -> 1" in log
    after = _files(out)
    assert json.loads(after.pop("refused.json"))["status"] == "refused"
    assert after == before  # .hydra/ still describes the result the folder holds


def test_two_processes_on_one_folder_train_once(tmp_path):
    """Started together on one folder: one trains; the other waits for it, then finds its ok
    result and skips; no traceback, one consistent folder."""
    out = tmp_path / "job"
    command = [
        sys.executable,
        "-m",
        "benchmark",
        *PROFILE,
        "train.max_iters=2",
        "train.batch_size=2",
        "num_threads=1",
        f"data.root={tmp_path / 'data'}",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    skipped = [i for i, log in enumerate(logs) if "already has an ok result; skipping" in log]
    assert len(skipped) == 1, logs
    waiter, trainer = skipped[0], 1 - skipped[0]
    assert f"(pid {procs[trainer].pid} on " in logs[waiter]  # it waited, naming the holder
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["train_iters"] == 2
    assert not (out / "traceback.txt").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
