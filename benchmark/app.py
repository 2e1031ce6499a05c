"""The Hydra entry point: ``detbench`` (also ``python -m benchmark``).

``run`` is the Hydra task (one job). ``main`` wraps it for the console script: after a
multirun, whose jobs never raise, it exits non-zero when jobs failed, once every job has run
and the report is written (``benchmark.report.callback.SweepReport`` counts them).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from benchmark import launch  # noqa: F401 (registers the resolvers the launchers need)
from benchmark.job import run_job

log = logging.getLogger("detbench")
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


OmegaConf.register_new_resolver("detbench_job_dir", job_dir_name, replace=True)


@hydra.main(version_base="1.3", config_path="pkg://sweeps", config_name="config")
def run(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    result = run_job(cfg, hc.runtime.output_dir, progress=bool(cfg.get("progress", True)))
    status = result.get("status")
    summary = ", ".join(
        f"{k}={result[k]:.3f}" if isinstance(result.get(k), float) else f"{k}={result.get(k)}"
        for k in ("map", "map_50", "train_seconds")
    )
    log.info(
        "%s/%s: %s (%s) -> %s",
        result.get("meta_arch"),
        result.get("extractor"),
        status,
        summary,
        hc.runtime.output_dir,
    )
    if status != "ok":
        log.error("%s: %s", status, result.get("error"))
    if hc.mode == RunMode.RUN and status == "failed":
        sys.exit(1)
    return result


def main() -> None:
    """Console entry point: Hydra (single run or ``-m`` multirun), then the exit status.

    Exit status: 0 when every job of the run ended ok or skipped; 1 when a single run failed
    (raised inside ``run``), when jobs of a multirun failed, or when its report could not
    be written.
    """
    from benchmark.report.callback import SweepReport

    run()
    if SweepReport.last_failed:  # None (no multirun) and 0 are success
        sys.exit(1)


if __name__ == "__main__":
    main()
