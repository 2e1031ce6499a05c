"""Hydra callback: where a multirun stands, logged before each job.

``detbench: job 4/10 (3 done: 2 ok, 1 skipped; elapsed 6m12s, about 14m left):
meta_arch=rfcn,extractor=resnet18``. Configured in ``sweeps/config.yaml`` under
``hydra.callbacks.progress``.

The total comes from the sweep's overrides, expanded the way Hydra's basic sweeper expands
them (other sweepers: no total, no estimate). The estimate is the mean time of the jobs that
ran in this multirun times the jobs left: jobs that were already done (an ``ok`` result, so
they return at once) are counted as done but not timed, so resuming a sweep does not make
the estimate optimistic. With a launcher that runs jobs in other processes (submitit, Ray)
the counts live in the launching process, which does not see the jobs start: nothing is
logged there and the jobs run as without this callback.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from benchmark.results import RESULT_FILE, read_result

log = logging.getLogger("detbench")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_size(config: DictConfig) -> int | None:
    """Jobs of the multirun ``config`` describes, or None when it cannot be known (a sweeper
    other than Hydra's basic one, or overrides only the sweeper itself can expand)."""
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.select(config, "hydra.overrides.task") or [])
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception as e:  # e.g. glob() needs the config loader: no total then
        log.debug("sweep size unknown: %s", e)
        return None


def duration(seconds: float) -> str:
    """``42s``, ``6m12s``, ``2h05m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class SweepProgress(Callback):
    """Counts the jobs of a multirun and logs jobs done / total, elapsed time and an estimate
    of the time left before each job."""

    def __init__(self) -> None:
        self._pid: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pid = os.getpid()
        self._start = time.monotonic()
        self._total = sweep_size(config)
        self._counts: Counter[str] = Counter()
        self._timed: list[float] = []
        self._job: tuple[float, Path, int | None] | None = None

    def _active(self) -> bool:
        # Only in the process that started the multirun (basic launcher): a copy of this
        # object in a submitit or Ray worker has no counts to report.
        return self._pid is not None and self._pid == os.getpid()

    def status(self) -> str:
        """``3 done: 2 ok, 1 skipped; elapsed 6m12s, about 14m left``."""
        done = sum(self._counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self._counts.items()))
        text = f"{done} done" + (f": {parts}" if parts else "")
        text += f"; elapsed {duration(time.monotonic() - self._start)}"
        if self._total is not None and self._timed and self._total > done:
            left = (self._total - done) * sum(self._timed) / len(self._timed)
            text += f", about {duration(left)} left"
        return text

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._active():
            return
        result = Path(str(config.hydra.runtime.output_dir)) / RESULT_FILE
        self._job = (time.monotonic(), result, _mtime(result))
        number = sum(self._counts.values()) + 1
        of = f"/{self._total}" if self._total is not None else ""
        name = OmegaConf.select(config, "hydra.job.override_dirname") or "default"
        log.info("detbench: job %d%s (%s): %s", number, of, self.status(), name)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self._active() or self._job is None:
            return
        started, result, before = self._job
        value = getattr(job_return, "_return_value", None)
        value = getattr(value, "result", value)  # the search sweeper's objectives carry it
        status = value.get("status") if isinstance(value, dict) else None
        if status is None and _mtime(result) not in (None, before):  # None from a search job
            status = (read_result(result.parent) or {}).get("status")
        self._counts[str(status or "failed")] += 1
        after = _mtime(result)
        if after is not None and after != before:  # the job wrote its result: it really ran
            self._timed.append(time.monotonic() - started)
        self._job = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._active():
            log.info("detbench: all jobs ran (%s)", self.status())
