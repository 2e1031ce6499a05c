"""Hydra callback: write the sweep's report when a multirun ends and count its failures.

Configured in ``sweeps/config.yaml`` under ``hydra.callbacks.report`` (remove it with
``~hydra.callbacks.report`` to skip the report). Hydra calls ``on_multirun_end`` in the
launching process after every job has run, whatever the launcher, so the report always
covers the whole sweep folder (earlier runs of the same sweep included).

Jobs never raise (``benchmark.job.run_job`` records failures in result.json), so Hydra itself
would exit 0 after a sweep with failed jobs. The callback counts the failed result.json files
written during this multirun (by modification time: a finished job from an earlier run is
not re-written, a failed one is re-run and re-written), and the jobs refused because their
folder holds another configuration's work (they write no result.json, only ``refused.json``
beside the folder's own files), and ``benchmark.app.main`` turns that count into the exit
status, after the report is on disk. Files work whatever the launcher (jobs may run in other
processes or on other machines).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from benchmark.results import read_result

log = logging.getLogger("detbench")


class SweepReport(Callback):
    """Writes ``<sweep dir>/report.html`` and friends at the end of every multirun.

    Attributes:
        last_failed: failed and refused jobs of the latest multirun in this process (None
            before one ended); ``-1`` when the report itself could not be written.
    """

    last_failed: int | None = None

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Some filesystems keep mtimes at 1-2 s resolution: never count a job as older than
        # the run that wrote it.
        self._start = time.time() - 2.0
        type(self).last_failed = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed_now = failed_since(sweep_dir, self._start)
        refused_now = refused_since(sweep_dir, self._start)
        type(self).last_failed = len(failed_now) + len(refused_now)
        if self.enabled:
            from benchmark.report.writer import write_report  # matplotlib only when needed

            try:
                summary = write_report(sweep_dir)
                log.info("detbench: sweep %s: %s", sweep_dir.name, summary.line())
            except Exception:  # the results are safe on disk; say so and fail the command
                log.exception(
                    "detbench: the report of %s could not be written; the results "
                    "are intact (retry with: detbench-report %s)",
                    sweep_dir,
                    sweep_dir,
                )
                type(self).last_failed = -1
        if failed_now:
            log.error(
                "detbench: %d job(s) failed in this run (status failed, see their "
                "result.json and traceback.txt): %s",
                len(failed_now),
                ", ".join(str(p.relative_to(sweep_dir)) for p in failed_now),
            )
        if refused_now:
            log.error(
                "detbench: %d job(s) refused in this run: their folder holds another "
                "configuration's result or checkpoint (see refused.json in each; force=true "
                "replaces it): %s",
                len(refused_now),
                ", ".join(str(p.relative_to(sweep_dir)) for p in refused_now),
            )


def failed_since(sweep_dir: Path, since: float) -> list[Path]:
    """Job folders under ``sweep_dir`` whose result.json says failed and was written after
    ``since`` (a ``time.time()`` value)."""
    from benchmark.report.table import find_results

    failed = []
    for path in find_results(sweep_dir) if sweep_dir.is_dir() else []:
        try:
            fresh = path.stat().st_mtime >= since
        except OSError:
            continue
        if fresh and (read_result(path.parent) or {}).get("status") == "failed":
            failed.append(path.parent)
    return failed


def refused_since(sweep_dir: Path, since: float) -> list[Path]:
    """Job folders under ``sweep_dir`` where a job was refused (``refused.json``, see
    ``benchmark.job_folder``) after ``since`` (a ``time.time()`` value)."""
    from benchmark.job_folder import REFUSED_FILE

    refused = []
    for path in sorted(sweep_dir.rglob(REFUSED_FILE)) if sweep_dir.is_dir() else []:
        if any(part.startswith(".") for part in path.relative_to(sweep_dir).parts[:-1]):
            continue
        try:
            if path.stat().st_mtime >= since:
                refused.append(path.parent)
        except OSError:
            continue
    return refused
