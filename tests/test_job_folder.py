"""One writer per job folder, temporary files that never collide, outputs that honour the umask."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from job_toys import tiny_cfg

from benchmark.job import run_job
from benchmark.report.writer import _write_text
from benchmark.results import read_result, write_json_atomic, write_text_atomic
from benchmark.train import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from benchmark.job_folder import folder_lock
folder, ready, release = map(Path, sys.argv[1:4])
with folder_lock(folder):
    ready.write_text("held")
    while not release.exists():
        time.sleep(0.05)
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the lock holder never started"
        time.sleep(0.05)


def test_a_second_process_waits_for_the_folder_and_names_the_holder(tmp_path, caplog):
    """Another process holds the job folder: the job waits (saying who holds it), and only
    writes its result once the holder is done."""
    folder, ready, release = tmp_path / "job", tmp_path / "ready", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(ready), str(release)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(ready, holder)
        # A bad setting: once the job gets the folder it fails at once, without data.
        cfg = tiny_cfg(tmp_path / "data", "data.image_size=-64")
        caplog.set_level(logging.INFO, logger="detbench")
        job = threading.Thread(target=run_job, args=(cfg, folder), kwargs={"progress": False})
        job.start()
        time.sleep(2.0)
        assert job.is_alive() and read_result(folder) is None  # waiting, nothing written
        waiting = [r.getMessage() for r in caplog.records if "in use by another" in r.getMessage()]
        assert len(waiting) == 1 and f"(pid {holder.pid} on " in waiting[0]
        assert str(folder) in waiting[0]
        release.write_text("go")
        job.join(timeout=120)
        assert not job.is_alive()
    finally:
        release.write_text("go")
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert read_result(folder)["error"].startswith("SettingsError: data.image_size")


def _save_many(path: str, n: int, start: multiprocessing.Event) -> None:
    """Save ``n`` checkpoints of a 4 MB model to ``path`` (a process of the collision test)."""
    model = torch.nn.Linear(1000, 1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    start.wait()
    for i in range(n):
        save_checkpoint(Path(path), model, opt, sched, i)


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    """Two processes saving one checkpoint path (each its own temporary file, then rename):
    neither fails and the file left is a whole checkpoint."""
    # spawn, not fork: a child forked after torch started its thread pool can deadlock
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    path = tmp_path / "checkpoint.pt"
    procs = [ctx.Process(target=_save_many, args=(str(path), 15, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=300)
    for p in procs:  # a hung child must not outlive the test (it would hold CI's output open)
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert load_checkpoint(path)["iter"] == 14
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@pytest.fixture
def umask():
    """Set the process umask for a test (restored after)."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(
    ("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"]
)
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    write_json_atomic(tmp_path / "result.json", {"a": 1})
    write_text_atomic(tmp_path / "notes.txt", "x")
    save_checkpoint(tmp_path / "checkpoint.pt", model, opt, sched, 1)
    _write_text(tmp_path / "report.html", "<html></html>")  # results.csv, report.html ...
    (tmp_path / "plain.txt").write_text("x")  # what any other file gets
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, mode), modes
    write_json_atomic(tmp_path / "result.json", {"a": 2})  # replacing keeps the rule
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == mode
