"""Writing and reading ``result.json``: atomically, so a killed job never leaves half a file.

:func:`atomic_write` is the one way detbench replaces a file (results, latency samples, the
roofline cache, checkpoints, report files): a uniquely named temporary file in the same folder,
fsync, rename. Two processes writing the same path never share a temporary file, and the file
gets the permissions of any other new file (``0o666`` minus the umask; ``tempfile.mkstemp``
would make it private, 0600, and a shared results folder unreadable to colleagues).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import IO, Any

RESULT_FILE = "result.json"


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become null; tensors and numpy scalars become numbers."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _create_unique(path: Path) -> tuple[int, Path]:
    """Create a new empty temporary file beside ``path``; ``(fd, its path)``.

    ``O_EXCL`` with a name holding the pid and a random token: never another process's file.
    Mode ``0o666`` is filtered by the umask, as for ``open(path, "w")``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 2^-32 per attempt: try another token
            continue


def atomic_write(path: str | Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Replace ``path`` with what ``write(file)`` writes, atomically.

    Args:
        path: the file to (re)place; its folder is created.
        write: called with the open temporary file (text, UTF-8, or ``binary``).
        binary: open the temporary file in binary mode (``torch.save``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_unique(path)
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8), atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON (NaN/inf as null) to ``path`` atomically (see :func:`atomic_write`)."""

    def dump(f: IO) -> None:
        json.dump(_jsonable(data), f, indent=2, sort_keys=False)
        f.write("\n")

    atomic_write(path, dump)


def read_result(job_dir: str | Path) -> dict | None:
    """The job's result, or None when it has none or it cannot be parsed."""
    path = Path(job_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@cache
def git_sha() -> str | None:
    """The commit of the detbench checkout this code runs from, when it is one.

    Code shipped to a Ray worker (``sweeps/hydra/launcher/ray_cluster.yaml``) is a copy
    without ``.git``: there ``DETBENCH_GIT_SHA``, set by the preset to the submitting
    checkout's commit, names the commit the copy came from.
    """
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return os.environ.get("DETBENCH_GIT_SHA") or None
