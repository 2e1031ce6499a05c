"""OmegaConf resolvers the config tree (``sweeps/config.yaml``) uses.

Registered on import. ``benchmark/__init__.py`` and ``sweeps/__init__.py`` import this module,
so whatever composes the config (the ``detbench`` app, ``hydra.compose`` in tools, tests and
notebooks, a launcher's job process unpickling its task) has them, without importing the
Hydra app for its side effect.

* ``${detbench_job_dir:OVERRIDES}``: a job's folder name (:func:`job_dir_name`).

Hydra's launchers run a sweep's jobs in other processes, possibly on other machines
(docs/scale_out.md): a SLURM job starts in the submission folder, but a Ray worker starts in
the folder its node's ``ray start`` ran in, with the code its node has installed. Three
resolvers keep such jobs tied to the command that launched them:

* ``${detbench_abspath:PATH,CWD}``: PATH made absolute against CWD, the folder the
  ``detbench`` command was started in (``hydra.runtime.cwd``, recorded by the submitting
  process and shipped with every job's config). ``sweeps/config.yaml`` builds the run and
  sweep folders with it, so a relative ``results_root`` means the same folder for every job
  whatever its working directory.
* ``${detbench_package_dir:NAME}``: the folder of the package NAME as imported by the process
  composing the config. The Ray presets hand these folders to Ray's ``runtime_env.py_modules``
  so the workers import exactly the code the sweep was started with (a checkout, a worktree,
  an editable install), not whatever each node has installed.
* ``${detbench_git_sha:}``: the commit of this process's checkout ("" outside one), passed
  to those workers as ``DETBENCH_GIT_SHA`` because the shipped copy has no ``.git``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path

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


def abspath(path: str, cwd: str) -> str:
    """``path`` (``~`` expanded) as an absolute path, relative ones taken from ``cwd``."""
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(str(path))))


def package_dir(name: str) -> str:
    """The folder of the importable package ``name`` (e.g. ``benchmark``) in this process."""
    module = importlib.import_module(name)
    if getattr(module, "__file__", None) is None:  # a namespace package has no __init__.py
        raise ValueError(f"detbench_package_dir: {name!r} is not a regular package")
    return str(Path(module.__file__).resolve().parent)


def checkout_sha() -> str:
    """:func:`benchmark.results.git_sha` of this process, "" when unknown (env values are str)."""
    from benchmark.results import git_sha  # lazy: composing a config needs no results code

    return git_sha() or ""


def register() -> None:
    """Register the resolvers (idempotent)."""
    OmegaConf.register_new_resolver("detbench_job_dir", job_dir_name, replace=True)
    OmegaConf.register_new_resolver("detbench_abspath", abspath, replace=True)
    OmegaConf.register_new_resolver("detbench_package_dir", package_dir, replace=True)
    OmegaConf.register_new_resolver("detbench_git_sha", checkout_sha, replace=True)


register()
