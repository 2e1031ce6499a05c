"""OmegaConf resolvers the config tree (``sweeps/config.yaml``) uses.

Registered on import. ``benchmark/__init__.py`` and ``sweeps/__init__.py`` import this module,
so whatever composes the config (the ``detbench`` app, ``hydra.compose`` in tools, tests and
notebooks) has them, without importing the Hydra app for its side effect.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_DIR_NAME = 200  # bytes; most file systems allow 255


def job_dir_name(override_dirname: str) -> str:
    """A folder name from the job's overrides: stable across re-runs, no timestamps.

    ``meta_arch=ssd,extractor=resnet18`` stays readable; path separators are replaced so an
    override like ``data.root=/a/b`` does not create nested folders. Names longer than
    file systems allow (255 bytes) keep their first 180 characters plus a digest of the whole,
    so they stay unique and stable.
    """
    name = re.sub(r"[/\\]+", "_", override_dirname).strip("_")
    if len(name.encode()) > MAX_DIR_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name.encode()[:180].decode(errors='ignore')}...{digest}"
    return name or "default"


def register() -> None:
    """Register the resolvers (idempotent)."""
    OmegaConf.register_new_resolver("detbench_job_dir", job_dir_name, replace=True)


register()
