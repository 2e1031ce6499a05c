"""Every image of a split decoded once before training, with a cache so a re-run does not pay twice.

A broken file must stop a job before its first training step, not when the sampler happens to
reach it (a crash mid-run) or never (a training image that is not sampled in a short run), and
not after training (a validation image). So :func:`check_images` decodes every image of a
split, and compares its size with the annotation and its mode with what
:func:`benchmark.data.images.to_rgb` converts.

Cache: what the decode found out about a file (pixel size and mode) is stored under
``<cache_dir or $DETBENCH_CACHE or ~/.cache/detbench>/image_checks/<hash of the split's
source>.json``, keyed by the file's absolute path, byte size and modification time (ns), the
same base folder as the synthetic data and the roofline cache. A file changed in any of these
is decoded again; files that do not decode are never cached, so a broken file is reported on
every run until it is fixed. Size and mode are compared with the annotation on every run, so
an edited annotation is checked even when its images come from the cache. Cache files whose
source (annotation file or list) no longer exists are deleted when another one is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmark.data.errors import DatasetError
from benchmark.data.images import decode, mode_problem, size_problem
from benchmark.data.records import ImageRecord

logger = logging.getLogger(__name__)

# Bump when what a cache entry vouches for changes (e.g. a stricter decode).
CACHE_VERSION = 1
_MAX_SHOWN = 5  # problems quoted in the error message


def cache_file(source: str, cache_dir: str | None = None) -> Path:
    """The cache file of the split whose annotation file (or list) is ``source``."""
    base = cache_dir or os.environ.get("DETBENCH_CACHE") or os.path.join("~", ".cache", "detbench")
    digest = hashlib.sha256(os.path.abspath(source).encode()).hexdigest()[:16]
    return Path(base).expanduser() / "image_checks" / f"{digest}.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def _write(path: Path, data: dict) -> None:
    """Atomic (temp file + rename): concurrent jobs on one dataset leave one whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune(folder: Path, keep: Path) -> None:
    """Delete cache files of sources that no longer exist (e.g. test datasets in /tmp)."""
    for other in folder.glob("*.json"):
        source = _read(other).get("source")
        if other != keep and (not source or not os.path.exists(source)):
            other.unlink(missing_ok=True)


def _probe(path: str) -> tuple[list | None, str | None]:
    """``([width, height, mode], None)`` from a full decode, or ``(None, problem)``."""
    try:
        image = decode(path)
    except DatasetError as e:
        return None, str(e)
    return [image.width, image.height, image.mode], None


def check_images(
    records: Sequence[ImageRecord],
    *,
    split: str,
    source: str,
    cache_dir: str | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, int]:
    """Decode every image of a split (unless cached) and check it against its record.

    Args:
        records: The split's images (path, annotated width and height).
        split: ``"train"`` or ``"val"`` (for messages).
        source: The split's annotation file or list: named in the error, and the cache key.
        cache_dir: Base folder of the cache (None: ``$DETBENCH_CACHE`` or ``~/.cache/detbench``).
        progress: Show a tqdm bar while decoding.
        workers: Decoding threads (Pillow releases the GIL while decoding); None: torch's
            intra-op thread count, i.e. the job's ``num_threads``.

    Returns:
        ``{"decoded": files decoded now, "cached": files whose check came from the cache}``.

    Raises:
        DatasetError: Names ``source``, how many images cannot be used, and for the first few
            the file and its problem (unreadable, size differs from the annotation, mode).
    """
    path = cache_file(source, cache_dir)
    cached = _read(path).get("images", {})
    facts: dict[str, list] = {}
    problems: dict[str, str] = {}
    todo: list[tuple[str, list[int]]] = []
    for rec in records:
        try:
            st = os.stat(rec.path)
        except OSError as e:
            problems[rec.path] = f"{rec.path}: image file is missing or unreadable: {e}"
            continue
        key = [st.st_size, st.st_mtime_ns]
        entry = cached.get(rec.path)
        if entry is not None and entry[:2] == key:
            facts[rec.path] = entry
        else:
            todo.append((rec.path, key))

    start = time.perf_counter()
    if todo:
        workers = max(1, workers or torch.get_num_threads())
        with ThreadPoolExecutor(workers) as pool:
            found = pool.map(_probe, [p for p, _ in todo])
            bar = tqdm(
                found, total=len(todo), desc=f"checking {split} images", unit="img",
                disable=not progress, leave=False,
            )  # fmt: skip
            for (p, key), (info, problem) in zip(todo, bar, strict=True):
                if problem is not None:
                    problems[p] = problem
                else:
                    facts[p] = key + info
    for rec in records:
        if rec.path in problems:
            continue
        width, height, mode = facts[rec.path][2:]
        if (width, height) != (rec.width, rec.height):
            problems[rec.path] = size_problem(rec.path, (width, height), (rec.width, rec.height))
        elif (problem := mode_problem(mode)) is not None:
            problems[rec.path] = f"{rec.path}: {problem}"

    if todo and facts:
        # A read-only home only costs decoding again next time.
        with contextlib.suppress(OSError):
            _write(
                path,
                {"version": CACHE_VERSION, "source": os.path.abspath(source), "images": facts},
            )
            _prune(path.parent, keep=path)
    logger.info(
        "%s (%s): checked %d images (%d decoded in %.1f s, %d from the cache)",
        source, split, len(records), len(todo), time.perf_counter() - start,
        len(records) - len(todo),
    )  # fmt: skip
    if problems:
        shown = "; ".join(list(problems.values())[:_MAX_SHOWN])
        more = f"; and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
        raise DatasetError(
            f"{source}: {len(problems)} of {len(records)} {split} images cannot be used: "
            f"{shown}{more}"
        )
    return {"decoded": len(todo), "cached": len(records) - len(todo)}
