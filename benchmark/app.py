"""The Hydra entry point: ``detbench`` (also ``python -m benchmark``).

``run`` is the Hydra task (one job); it returns the job's result dict, or, under the frontier
search sweeper (``+search=frontier``, whose config names an accuracy and a cost), the job's
objectives (``benchmark.search.objectives``): None when the job is not ``ok`` or a value is
missing, which the sweeper records as a failed trial. ``main`` wraps it for the console script: after a multirun, whose jobs
never raise, it exits non-zero when jobs failed or were refused, once every job has run and
the report is written (``benchmark.report.callback.SweepReport`` counts them).

Hydra's own ``.hydra/`` files (config, hydra config, overrides) are written by the job, not by
Hydra (``hydra.output_subdir: null`` in ``sweeps/config.yaml``), and only once the job is
going to run in its folder: a job refused because its folder holds another configuration's
result leaves that folder's ``.hydra/`` describing the result it holds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from benchmark.job import REFUSED, run_job
from benchmark.results import write_text_atomic
from benchmark.schema.format import job_line
from benchmark.search.objectives import Objectives, objective_spec, objectives_of

log = logging.getLogger("detbench")
HYDRA_SUBDIR = ".hydra"


def save_hydra_files(out_dir: str | Path, cfg: DictConfig) -> None:
    """Write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra would.

    Args:
        out_dir: the job folder.
        cfg: the task config (Hydra's node removed), as the task received it.
    """
    folder = Path(out_dir) / HYDRA_SUBDIR
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...} of this job
    files = {
        "config.yaml": cfg,
        "hydra.yaml": hydra_cfg,
        "overrides.yaml": hydra_cfg.hydra.overrides.task,
    }
    for name, node in files.items():
        write_text_atomic(folder / name, OmegaConf.to_yaml(node))


def search_columns(hydra_cfg: DictConfig) -> list[str] | None:
    """The objective columns of the search sweeper running this job, or None (any other
    sweeper: the job returns its result dict)."""
    accuracy = OmegaConf.select(hydra_cfg, "sweeper.accuracy", default=None)
    cost = OmegaConf.select(hydra_cfg, "sweeper.cost", default=None)
    if accuracy is None or cost is None:
        return None
    return objective_spec(str(accuracy), str(cost))[0]


@hydra.main(version_base="1.3", config_path="pkg://sweeps", config_name="config")
def run(cfg: DictConfig) -> dict | Objectives | None:
    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    result = run_job(
        cfg,
        out_dir,
        progress=bool(cfg.get("progress", True)),
        on_start=lambda: save_hydra_files(out_dir, cfg),
    )
    status = result.get("status")
    columns = search_columns(hc) if hc.mode == RunMode.MULTIRUN else None
    if status == REFUSED:  # logged in full by run_job; the folder holds another result
        if hc.mode == RunMode.RUN:
            sys.exit(1)
        return result if columns is None else None
    # The job's last line: accuracy, latency, GMACs, memory (as the schema formats them), or
    # the reason it failed or was skipped, and where its result.json is.
    level = {"ok": logging.INFO, "skipped": logging.WARNING}.get(status, logging.ERROR)
    log.log(level, "%s", job_line(result, out_dir))
    if hc.mode == RunMode.RUN and status == "failed":
        sys.exit(1)
    if columns is not None:  # the search sweeper: its objectives, None = a failed trial
        return objectives_of(result, columns)
    return result


def main() -> None:
    """Console entry point: Hydra (single run or ``-m`` multirun), then the exit status.

    Exit status: 0 when every job of the run ended ok or skipped; 1 when a single run failed
    or was refused (raised inside ``run``), when jobs of a multirun failed or were refused, or
    when its report could not be written.
    """
    from benchmark.report.callback import SweepReport

    run()
    if SweepReport.last_failed:  # None (no multirun) and 0 are success
        sys.exit(1)


if __name__ == "__main__":
    main()
