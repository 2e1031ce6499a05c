"""A job folder has one writer and belongs to one configuration.

* :func:`folder_lock`: a job holds a lock on its folder (``filelock``; the kernel releases it
  when the process dies) from before it reads the folder until its result.json is written. A
  second process on the same folder **waits** for the first, logging which process holds it
  (``.detbench.lock.owner``: pid, host, start time), then finds its result and skips, or runs.
* :func:`other_configuration`: a folder whose ``ok`` result or ``checkpoint.pt`` belongs to
  another configuration (another fingerprint, or none) is never reused: the job is refused with
  a message naming both configurations, the differing keys and the ways out (``force=true``
  replaces the folder's contents, another folder keeps both). Failed and skipped results of
  another configuration hold no numbers and are replaced.
* :data:`REFUSED_FILE` records a refusal in the folder without touching what it holds, so the
  multirun's exit status can count it (``benchmark.report.callback``).

docs/bad_input.md is the user-facing contract.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from benchmark.identity import config_diff, describe, identity_config, result_fingerprint
from benchmark.results import write_json_atomic

log = logging.getLogger("detbench")
LOCK_FILE = ".detbench.lock"
OWNER_FILE = ".detbench.lock.owner"
REFUSED_FILE = "refused.json"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; wait (logging the holder) while another has it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning(
            "%s is in use by another detbench process (%s); waiting for it to finish",
            folder,
            _owner(folder),
        )
        t0 = time.perf_counter()
        lock.acquire()
        log.info("%s: lock acquired after %.1f s", folder, time.perf_counter() - t0)
    owner = folder / OWNER_FILE
    try:
        write_json_atomic(
            owner, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        )
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _owner(folder: Path, wait: float = 2.0) -> str:
    """Who holds the folder, from the file its holder writes right after taking the lock.

    Waits up to ``wait`` seconds for that file: a holder that has just taken the lock may not
    have written it yet.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads((folder / OWNER_FILE).read_text())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
            return f"pid {info['pid']} on {info['host']}, since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "pid unknown"
            time.sleep(0.05)


@dataclass
class Refusal:
    """Why a job may not run in its folder."""

    what: str  # "an ok result" | "a checkpoint.pt"
    their_fingerprint: str | None
    their_identity: dict[str, Any] | None
    their_label: str | None = None  # "ssd/resnet18" when the result says

    def message(self, folder: Path, identity: dict[str, Any], fp: str, label: str) -> str:
        """The refusal: both configurations, the differing keys, the ways out.

        Args:
            label: this job's config-group choices (``ssd/mobilenet_v3_small``).
        """
        theirs = describe(self.their_identity, self.their_fingerprint, self.their_label)
        lines = [
            f"refusing to run into {folder}: it holds {self.what} of another configuration.",
            f"  the folder: {theirs}",
            f"  this job:   {describe(identity, fp, label)}",
        ]
        if self.their_identity is not None:
            lines.append("  differing keys (folder -> this job):")
            lines += [f"    {d}" for d in config_diff(self.their_identity, identity)]
        lines.append(
            "Nothing was changed. To replace the folder's contents run with force=true; to keep "
            "both, give this job another folder (hydra.run.dir=... or another sweep_name)."
        )
        return "\n".join(lines)


def other_configuration(
    folder: Path, previous: dict[str, Any] | None, fp: str, checkpoint_info: dict | None
) -> Refusal | None:
    """A :class:`Refusal` when ``folder`` holds work of another configuration, else None.

    Args:
        previous: the folder's result.json (None when absent).
        fp: this job's fingerprint.
        checkpoint_info: ``{"config_fingerprint", "config"}`` of the folder's checkpoint.pt
            (:func:`benchmark.train.checkpoint_identity`), None when there is none.
    """
    if previous is not None and previous.get("status") == "ok":
        theirs = result_fingerprint(previous)
        if theirs != fp:
            config = previous.get("config")
            return Refusal(
                "an ok result",
                theirs,
                identity_config(config) if isinstance(config, dict) else None,
                "/".join(str(previous.get(k)) for k in ("meta_arch", "extractor")),
            )
    if checkpoint_info is not None and checkpoint_info.get("config_fingerprint") != fp:
        what = "a checkpoint.pt"
        if not checkpoint_info.get("config_fingerprint"):
            what += " without a configuration fingerprint (written before detbench recorded one)"
        return Refusal(
            what, checkpoint_info.get("config_fingerprint"), checkpoint_info.get("config")
        )
    return None


def record_refusal(folder: Path, message: str, identity: dict[str, Any], fp: str) -> None:
    """Write :data:`REFUSED_FILE` (the refused configuration and why); nothing else changes."""
    write_json_atomic(
        folder / REFUSED_FILE,
        {
            "status": "refused",
            "error": message,
            "config_fingerprint": fp,
            "config": identity,
            "refused_at": time.time(),
        },
    )


def clear_stale_outputs(folder: Path, *, checkpoint: bool) -> None:
    """Remove the outputs of an earlier run that a new run of the folder rewrites, so a run
    that fails early never leaves them beside its own result (the traceback of an old failure,
    the detections of another configuration); ``checkpoint.pt`` too when ``checkpoint``."""
    # Imported here: this module stays light for processes that only take the lock.
    from benchmark.evaluate import DETECTIONS_FILE
    from benchmark.measure import SAMPLES_FILE
    from benchmark.train import CHECKPOINT_FILE

    stale = ["traceback.txt", DETECTIONS_FILE, "coco_eval.txt", SAMPLES_FILE, REFUSED_FILE]
    for name in (*stale, *([CHECKPOINT_FILE] if checkpoint else [])):
        (folder / name).unlink(missing_ok=True)
