"""Exclusive timing: concurrent jobs on one machine measure one at a time per device.

Jobs of a sweep may run in parallel on one machine (``hydra/launcher=submitit_local``,
joblib, Ray on one node, or two shells). Their training can overlap, but two latency
measurements sharing the cores or the GPU would each report the other's load. The
measurement phase of a job therefore holds an exclusive ``fcntl.flock`` on a lock file per
machine and device (the GPU's UUID, or ``cpu`` for all CPU jobs, which share the cores).
The kernel releases a flock when its process dies, so a killed job never leaves the lock
held. The folder is machine-local by default (the per-user cache), never shared between
machines: jobs on different machines do not disturb each other.

Config (sweeps/config.yaml): ``timing_lock`` (true) and ``timing_lock_dir`` (null: the
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


def lock_path(device: Device, lock_dir: str | Path | None = None) -> Path:
    """The lock file of ``device`` on this machine (host name in the name, so a lock folder
    that happens to be shared between machines still serializes only per machine)."""
    name = f"measure-{socket.gethostname()}-{device.lock_key}.lock"
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
    """

    exclusive: bool = False
    wait_seconds: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    path: str | None = None

    def result_keys(self) -> dict[str, Any]:
        """The result.json keys (documented in results/README.md)."""
        return {
            "timing_exclusive": self.exclusive,
            "timing_lock_wait_s": self.wait_seconds,
            "measure_started_at": self.started_at,
            "measure_ended_at": self.ended_at,
        }


@contextlib.contextmanager
def exclusive_device(
    device: Device, lock_dir: str | Path | None = None, *, enabled: bool = True
) -> Iterator[TimingLock]:
    """Hold the device's timing lock for the block (blocking until it is free).

    Args:
        device: the device measured.
        lock_dir: folder of the lock files (None: :func:`default_lock_dir`).
        enabled: False runs the block without a lock (``timing_exclusive: false``).

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
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the timing lock %s (another job is measuring)", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        info.exclusive = True
        info.wait_seconds = time.perf_counter() - t0
        info.path = str(path)
        info.started_at = time.time()
        try:
            yield info
        finally:
            info.ended_at = time.time()
            fcntl.flock(f, fcntl.LOCK_UN)


def timing_lock(device: Device, cfg) -> contextlib.AbstractContextManager[TimingLock]:
    """:func:`exclusive_device` configured from the job config (``timing_lock``,
    ``timing_lock_dir``; both default when absent)."""
    get = cfg.get if cfg is not None else (lambda key, default=None: default)
    return exclusive_device(
        device, get("timing_lock_dir", None), enabled=bool(get("timing_lock", True))
    )
