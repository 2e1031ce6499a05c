"""Exclusive timing (benchmark/timing_lock.py): concurrent jobs never measure at once.

Two levels: the lock itself between processes, and two real ``detbench`` jobs started
together (profile-only, tiny) whose recorded measurement intervals must not overlap. Both are
ordered by events rather than by sleeps: a process (or job) is let go only after it has
reported that it found the lock taken, so they really contend, whatever the machine's speed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from benchmark.device import Device
from benchmark.timing_lock import WorkGate, exclusive_device, lock_path, timing_lock, work_gate

CPU = Device.from_spec("cpu")


def _hold(lock_dir: str, acquired, release, queue) -> None:
    """Take the lock, say so, and keep it until the parent says release."""
    with exclusive_device(CPU, lock_dir) as info:
        acquired.set()
        release.wait(120)
        queue.put(("first", info.wait_seconds, info.started_at, time.time()))


class _OnWaiting(logging.Handler):
    """Sets ``event`` when exclusive_device reports that it found the lock taken."""

    def __init__(self, event):
        super().__init__()
        self.event = event

    def emit(self, record):
        if "waiting for the timing lock" in record.getMessage():
            self.event.set()


def _contend(lock_dir: str, waiting, queue) -> None:
    logger = logging.getLogger("benchmark.timing_lock")
    logger.setLevel(logging.INFO)
    logger.addHandler(_OnWaiting(waiting))
    with exclusive_device(CPU, lock_dir) as info:
        queue.put(("second", info.wait_seconds, info.started_at, time.time()))


def _is_free(path: Path) -> bool:
    """Whether this process could take the flock right now (released at once)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _disjoint(intervals) -> bool:
    intervals = sorted(intervals)
    return all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(intervals))


def test_two_processes_hold_the_lock_one_at_a_time(tmp_path):
    """Ordered by events, not by sleeps: the second process is let go only once it has
    reported that it found the lock taken, so a slow fork cannot make it pass or fail."""
    ctx = multiprocessing.get_context("fork")
    acquired, release, waiting = ctx.Event(), ctx.Event(), ctx.Event()
    queue = ctx.Queue()
    first = ctx.Process(target=_hold, args=(str(tmp_path), acquired, release, queue))
    first.start()
    try:
        assert acquired.wait(60), "the first process never got the lock"
        assert not _is_free(lock_path(CPU, tmp_path))  # held across processes
        second = ctx.Process(target=_contend, args=(str(tmp_path), waiting, queue))
        second.start()
        assert waiting.wait(60), "the second process did not find the lock taken"
        assert queue.empty()  # still blocked: neither has finished its block
    finally:
        release.set()
    got = {name: rest for name, *rest in (queue.get(timeout=60), queue.get(timeout=60))}
    for p in (first, second):
        p.join(timeout=60)
    first_end, (second_wait, second_start) = got["first"][2], got["second"][:2]
    assert second_start >= first_end  # it got in only after the first let go
    assert second_wait > 0
    assert _is_free(lock_path(CPU, tmp_path))


def test_lock_info_and_disabled_lock(tmp_path):
    with exclusive_device(CPU, tmp_path) as info:
        assert info.exclusive and info.wait_seconds >= 0
        assert Path(info.path) == lock_path(CPU, tmp_path) and Path(info.path).exists()
    keys = info.result_keys()
    assert (
        keys["timing_exclusive"] is True and keys["measure_ended_at"] >= keys["measure_started_at"]
    )
    with timing_lock(CPU, {"timing_lock": False}) as off:
        pass
    assert off.result_keys()["timing_exclusive"] is False and off.wait_seconds is None
    assert "cpu" in lock_path(CPU, tmp_path).name


def _unit(lock_dir: str, seconds: float, queue) -> None:
    with WorkGate(CPU, lock_dir) as gate, gate.unit():
        queue.put(("in", time.time()))
        time.sleep(seconds)
        queue.put(("out", time.time()))


def test_a_measurement_waits_for_the_work_unit_in_flight(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_unit, args=(str(tmp_path), 0.6, queue))
    worker.start()
    assert queue.get(timeout=30)[0] == "in"
    with exclusive_device(CPU, tmp_path) as info:
        started = time.time()
    worker.join(timeout=30)
    kind, unit_end = queue.get(timeout=30)
    assert kind == "out" and started >= unit_end  # the training step ended first
    assert info.work_paused and info.result_keys()["timing_work_paused"] is True
    assert info.wait_seconds >= 0.3


def _units_back_to_back(lock_dir: str, seconds: float, offset: float, queue) -> None:
    """A trainer stepping for 3 s, re-entering the gate right after each step."""
    spans = []
    time.sleep(offset)
    with WorkGate(CPU, lock_dir) as gate:
        t_end = time.time() + 3.0
        while time.time() < t_end:
            with gate.unit():
                t0 = time.time()
                time.sleep(seconds)
                spans.append((t0, time.time()))
        queue.put((spans, gate.paused_seconds))


def test_work_pauses_during_a_measurement_and_cannot_starve_it(tmp_path):
    """Two trainers whose steps overlap always hold the shared lock between them: with one
    lock file (flock has no writer preference) a waiting measurement would get in only when
    both stopped training. The gate's measure lock lets it in after at most one step, and
    no step of either trainer overlaps it."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_units_back_to_back, args=(str(tmp_path), 0.1, offset, queue))
        for offset in (0.0, 0.05)
    ]
    for w in workers:
        w.start()
    time.sleep(0.8)  # both trainers are stepping
    with exclusive_device(CPU, tmp_path) as info:
        start = time.time()
        time.sleep(0.5)
        end = time.time()
    got = [queue.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert info.wait_seconds < 1.0  # a step or two, not the rest of the 3 s of training
    for spans, paused in got:
        assert all(e <= start or s >= end for s, e in spans)
        assert any(s >= end for s, _ in spans)  # and training went on after
        assert paused >= 0.3


def test_disabled_gate_and_disabled_pause(tmp_path):
    gate = work_gate(CPU, {"timing_lock": True, "timing_pause_work": False})
    assert not gate.enabled
    with exclusive_device(CPU, tmp_path) as info, gate.unit():  # no lock: no deadlock
        pass
    assert info.work_paused  # the measurement side still pauses gated work by default
    with timing_lock(CPU, {"timing_pause_work": False, "timing_lock_dir": str(tmp_path)}) as i2:
        pass
    assert i2.exclusive and not i2.work_paused


def _job(root: Path, name: str, lock_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmark",
        "meta_arch=ssd",
        "extractor=mobilenet_v3_small",
        "train.max_iters=0",  # profile-only: build and measure
        "data.image_size=64",
        "data.gen_size=64",
        "data.num_train=4",
        "data.num_val=4",
        f"seed={name}",
        "progress=false",
        "num_threads=1",
        f"results_root={root / 'results'}",
        f"timing_lock_dir={lock_dir}",
        "bench.warmup=1",
        "bench.num_images=2",
        "bench.enabled.throughput=false",
        "bench.enabled.roofline=false",
        "bench.enabled.memory=false",
    ]


@pytest.mark.slow
def test_two_concurrent_jobs_never_measure_at_the_same_time(tmp_path):
    lock_dir = tmp_path / "locks"
    env = {**os.environ, "DETBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"job{i}.log" for i in range(2)]
    procs = []
    with exclusive_device(CPU, lock_dir):  # both jobs must queue behind this
        for i, log in enumerate(logs):
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        _job(tmp_path, str(i), lock_dir),
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 120
        while not all("waiting for the timing lock" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
    for p in procs:
        p.wait(timeout=180)
    results = [
        json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")
    ]
    assert len(results) == 2, [log.read_text()[-2000:] for log in logs]
    for r in results:
        assert r["status"] == "ok", r["error"]
        assert r["timing_exclusive"] is True and r["timing_lock_wait_s"] > 0
        assert r["latency_ms"] > 0
    assert _disjoint([(r["measure_started_at"], r["measure_ended_at"]) for r in results])
