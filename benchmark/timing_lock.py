"""Exclusive timing: concurrent jobs on one machine measure one at a time per device, and
nothing of theirs trains or evaluates while one measures.

Jobs of a sweep may run in parallel on one machine (``hydra/launcher=submitit_local``,
joblib, Ray on one node, or two shells). Their training can overlap, but two latency
measurements sharing the cores or the GPU would each report the other's load. The
measurement phase of a job therefore holds an exclusive ``fcntl.flock`` on a lock file per
machine and device (the GPU's UUID, or ``cpu`` for all CPU jobs, which share the cores).
The kernel releases a flock when its process dies, so a killed job never leaves the lock
held. The folder is machine-local by default (the per-user cache), never shared between
machines: jobs on different machines do not disturb each other.

A second lock file per device pauses the other jobs' work: training steps and evaluation
batches run inside :meth:`WorkGate.unit`, which holds a *shared* lock on the ``work`` file
(any number of jobs work at once) after checking that nobody measures. A measurement takes
the ``measure`` lock exclusively first (new work units now wait), then the ``work`` lock
exclusively, which waits for the units in flight (one training step at most) to end. Two
files rather than one because ``flock`` has no writer preference: a measurement waiting for
an exclusive lock on a file that trainers keep re-locking shared could wait for a whole
training run. A measurer never holds a work lock and a worker never holds the work lock
while waiting for the measure lock, so there is no cycle to deadlock on.

Config (sweeps/config.yaml): ``timing_lock`` (true), ``timing_pause_work`` (true: the work
gate above; false: only measurements are serialized) and ``timing_lock_dir`` (null: the
``locks`` folder of ``$DETBENCH_CACHE``, default ``~/.cache/detbench``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.device import Device

log = logging.getLogger(__name__)


def default_lock_dir() -> Path:
    """``$DETBENCH_CACHE/locks`` (default ``~/.cache/detbench/locks``): machine-local."""
    return Path(os.environ.get("DETBENCH_CACHE") or "~/.cache/detbench").expanduser() / "locks"


def lock_path(device: Device, lock_dir: str | Path | None = None, kind: str = "measure") -> Path:
    """The lock file of ``device`` on this machine (host name in the name, so a lock folder
    that happens to be shared between machines still serializes only per machine).

    Args:
        kind: ``measure`` (held exclusively by a measurement) or ``work`` (held shared by
            training steps and evaluation batches, exclusively by a measurement).
    """
    name = f"{kind}-{socket.gethostname()}-{device.lock_key}.lock"
    name = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
    return Path(lock_dir or default_lock_dir()) / name


@dataclass
class TimingLock:
    """What a job records about its measurement phase.

    Attributes:
        exclusive: the phase ran holding the device's lock.
        wait_seconds: time spent waiting for the lock.
        started_at / ended_at: ``time.time()`` of the phase's start and end (after the wait):
            intervals of concurrent jobs on one device never overlap.
        path: the lock file.
        work_paused: the phase also held the device's work lock exclusively: no training
            step or evaluation batch of another detbench job on this machine ran meanwhile.
    """

    exclusive: bool = False
    work_paused: bool = False
    wait_seconds: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    path: str | None = None

    def result_keys(self) -> dict[str, Any]:
        """The result.json keys (documented in results/README.md)."""
        return {
            "timing_exclusive": self.exclusive,
            "timing_work_paused": self.work_paused,
            "timing_lock_wait_s": self.wait_seconds,
            "measure_started_at": self.started_at,
            "measure_ended_at": self.ended_at,
        }


@contextlib.contextmanager
def exclusive_device(
    device: Device,
    lock_dir: str | Path | None = None,
    *,
    enabled: bool = True,
    pause_work: bool = True,
) -> Iterator[TimingLock]:
    """Hold the device's timing lock for the block (blocking until it is free).

    Args:
        device: the device measured.
        lock_dir: folder of the lock files (None: :func:`default_lock_dir`).
        enabled: False runs the block without a lock (``timing_exclusive: false``).
        pause_work: also take the work lock exclusively (after the timing lock), so the
            work units (:class:`WorkGate`) of other jobs pause for the block.

    Yields:
        A :class:`TimingLock`, filled in (``ended_at`` on exit).
    """
    info = TimingLock()
    if not enabled:
        info.started_at = time.time()
        try:
            yield info
        finally:
            info.ended_at = time.time()
        return
    path = lock_path(device, lock_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(path, "a") as f, contextlib.ExitStack() as stack:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the timing lock %s (another job is measuring)", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        stack.callback(fcntl.flock, f, fcntl.LOCK_UN)
        if pause_work:
            # New work units now wait at the measure lock; this waits for those in flight.
            w = stack.enter_context(open(lock_path(device, lock_dir, "work"), "a"))
            fcntl.flock(w, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, w, fcntl.LOCK_UN)
            info.work_paused = True
        info.exclusive = True
        info.wait_seconds = time.perf_counter() - t0
        info.path = str(path)
        info.started_at = time.time()
        try:
            yield info
        finally:
            info.ended_at = time.time()


class WorkGate:
    """The worker side: run each training step or evaluation batch as a work unit that never
    overlaps another job's measurement on this machine and device.

    Args:
        device: the device worked on.
        lock_dir: folder of the lock files (None: :func:`default_lock_dir`).
        enabled: False makes :meth:`unit` a no-op.

    Attributes:
        paused_seconds: time this gate's units spent waiting for measurements so far.
    """

    def __init__(
        self, device: Device, lock_dir: str | Path | None = None, *, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.paused_seconds = 0.0
        self._files = None
        if enabled:
            measure, work = (lock_path(device, lock_dir, k) for k in ("measure", "work"))
            measure.parent.mkdir(parents=True, exist_ok=True)
            self._files = (open(measure, "a"), open(work, "a"))  # noqa: SIM115 (closed in close)

    @contextlib.contextmanager
    def unit(self) -> Iterator[None]:
        """One unit of work: waits while another job measures, then holds the work lock
        shared (so a measurement that starts meanwhile waits for this unit to end)."""
        if self._files is None:
            yield
            return
        measure, work = self._files
        try:
            fcntl.flock(measure, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            t0 = time.perf_counter()
            fcntl.flock(measure, fcntl.LOCK_SH)
            self.paused_seconds += time.perf_counter() - t0
        fcntl.flock(measure, fcntl.LOCK_UN)
        fcntl.flock(work, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(work, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None

    def __enter__(self) -> WorkGate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NO_GATE = WorkGate(Device.from_spec("cpu"), enabled=False)


def _getter(cfg):
    return cfg.get if cfg is not None else (lambda key, default=None: default)


def timing_lock(device: Device, cfg) -> contextlib.AbstractContextManager[TimingLock]:
    """:func:`exclusive_device` configured from the job config (``timing_lock``,
    ``timing_pause_work``, ``timing_lock_dir``; all default when absent)."""
    get = _getter(cfg)
    return exclusive_device(
        device,
        get("timing_lock_dir", None),
        enabled=bool(get("timing_lock", True)),
        pause_work=bool(get("timing_pause_work", True)),
    )


def work_gate(device: Device, cfg) -> WorkGate:
    """:class:`WorkGate` configured from the job config: enabled when both ``timing_lock``
    and ``timing_pause_work`` are (the defaults)."""
    get = _getter(cfg)
    enabled = bool(get("timing_lock", True)) and bool(get("timing_pause_work", True))
    return WorkGate(device, get("timing_lock_dir", None), enabled=enabled)
