"""Writing and reading ``result.json``: atomically, so a killed job never leaves half a file."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

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


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(data), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
