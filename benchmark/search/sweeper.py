"""The frontier search's study loop: hydra-optuna-sweeper's, made resumable and one job per
configuration.

``hydra_plugins.detbench_search.FrontierSweeper`` (the Hydra plugin, ``hydra/sweeper=frontier``)
delegates here. What it changes in ``OptunaSweeperImpl.sweep``, and why:

* **Objectives.** Two, named in the sweeper config (``accuracy`` maximized, ``cost``
  minimized); the job returns them (``benchmark.app.run``) or None. None, a job that raised,
  or values of the wrong length make the trial FAILED (Optuna ignores failed trials when it
  samples), never a zero.
* **Budget in jobs, across resumes.** ``n_trials`` is the number of jobs the study runs in
  all: trials finished in an earlier run (read from the SQLite storage in the sweep folder)
  count, so a killed search started again runs only the rest. A trial left RUNNING by a
  killed run is marked FAILED (``interrupted``) and its configuration asked again first
  (``enqueue_trial``): its job resumes from its folder (checkpoint, identity rule).
* **No repeated jobs.** A sampler may propose a configuration the study has already run
  (small categorical spaces, NSGA-II's crossover). Such a trial is not launched: it is told
  the values (or the failure) of the earlier trial and does not count as a job. After
  ``max_duplicates`` such proposals in a row the space counts as exhausted and the search ends.
* **Conditional axes** (``benchmark.search.space``): suggested only when their condition holds.
* **A record for the report.** After every batch ``search_trials.csv`` (one row per trial:
  state, job folder, launched or duplicate, values) and ``search.json`` (objectives,
  sampler, budget) are written into the sweep folder; the report draws the hypervolume of the
  found frontier against the number of jobs from them (``benchmark.report.search``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from benchmark.results import write_text_atomic
from benchmark.search.objectives import objective_spec
from benchmark.search.space import conditional_axes, suggest_conditional, without_conditional

log = logging.getLogger("detbench")
STUDY_FILE = "study.db"
TRIALS_FILE = "search_trials.csv"  # benchmark.report.search reads both
SEARCH_FILE = "search.json"
TRIAL_COLUMNS = [
    "trial", "state", "job", "launched", "duplicate_of", "interrupted", "accuracy", "cost",
    "overrides",
]  # fmt: skip
FINISHED = (TrialState.COMPLETE, TrialState.FAIL)


def _key(overrides: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(overrides))


class FrontierSearch(OptunaSweeperImpl):
    """``OptunaSweeperImpl`` with the changes of the module docstring.

    Args (besides the Optuna sweeper's): accuracy, cost: the objectives
    (``benchmark.search.objectives.objective_spec``); conditional: the conditional axes;
    max_duplicates: proposals of known configurations in a row that end the search;
    grid: a folder holding a grid run of the same space, for the report (or None).
    """

    def __init__(
        self,
        *,
        accuracy: str,
        cost: str,
        conditional: DictConfig | None,
        max_duplicates: int,
        grid: str | None,
        **optuna_kwargs: Any,
    ) -> None:
        self.columns, directions = objective_spec(accuracy, cost)
        super().__init__(direction=directions, **optuna_kwargs)
        self.conditional = OmegaConf.to_container(conditional) if conditional else {}
        self.max_duplicates = int(max_duplicates)
        self.grid = str(Path(grid).resolve()) if grid else None  # Hydra does not chdir

    # -- the study --------------------------------------------------------------------------
    def _storage(self) -> str:
        return self.storage or f"sqlite:///{Path(self.sweep_dir).resolve() / STUDY_FILE}"

    def _study_name(self) -> str:
        return self.study_name or Path(self.sweep_dir).name

    def _recover(self, study: optuna.Study) -> None:
        """Mark trials a killed run left RUNNING as failed and ask their configuration again."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(dict(t.params))
            log.warning(
                "detbench: search: trial %d was interrupted (%s); its job runs again first",
                t.number,
                t.user_attrs.get("job", "job not started"),
            )

    @staticmethod
    def _known(study: optuna.Study) -> dict[tuple[str, ...], optuna.trial.FrozenTrial]:
        """Finished configurations of the study: override key -> the trial that ran it."""
        known = {}
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            if t.user_attrs.get("launched") and not t.user_attrs.get("interrupted"):
                known.setdefault(_key(tuple(t.user_attrs["overrides"])), t)
        return known

    # -- one batch ----------------------------------------------------------------------------
    def _overrides(self, trial: optuna.Trial, distributions: dict, fixed: dict) -> tuple:
        for name, distribution in distributions.items():
            trial._suggest(name, distribution)  # as OptunaSweeperImpl does
        values = {name: text.split("=", 1)[1] for name, text in fixed.items()}
        suggest_conditional(trial, self.axes, values)
        # Fixed overrides as typed (``x=false``, not Optuna's ``x=False``): the job folder is
        # then the one ``detbench -m`` with the same overrides uses.
        overrides = tuple(f"{n}={v}" for n, v in trial.params.items()) + tuple(fixed.values())
        trial.set_user_attr("overrides", list(overrides))
        return overrides

    def _values(self, ret: Any) -> list[float] | None:
        """The trial's values from a job's return, or None (a failed trial)."""
        try:
            value = ret.return_value  # re-raises what the job raised
        except Exception as e:  # the job crashed outside run_job: a failed trial
            log.warning("detbench: search: job raised: %s", e)
            return None
        if value is None:
            return None
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            log.warning("detbench: search: not a list of numbers: %r", value)
            return None
        return values if len(values) == len(self.columns) else None

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        self.axes = conditional_axes(self.conditional, params_conf)
        distributions, fixed = create_params_from_overrides(
            without_conditional(params_conf, self.axes)
        )
        for name in fixed:
            distributions.pop(name, None)
        fixed = {
            name: text
            for text in without_conditional(params_conf, self.axes)
            for name in [text.split("=", 1)[0]]
            if name in fixed
        }
        directions = self._get_directions()
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self._study_name(),
            storage=self._storage(),
            sampler=self.sampler,
            directions=directions,
            load_if_exists=True,
        )
        self._recover(study)
        known = self._known(study)
        done = len(known)
        log.info(
            "detbench: search %s (%s): %d of %d jobs done; objectives %s %s; storage %s",
            study.study_name,
            type(self.sampler).__name__,
            done,
            self.n_trials,
            self.columns,
            directions,
            self._storage(),
        )
        self._write_record(study)
        duplicates = 0
        while done < self.n_trials and duplicates < self.max_duplicates:
            trials, batch, launch = [], {}, []
            while len(launch) < min(self.n_jobs, self.n_trials - done):
                trial = study.ask()
                overrides = self._overrides(trial, distributions, fixed)
                key = _key(overrides)
                trials.append((trial, key))
                if key in known:
                    earlier = known[key]
                    trial.set_user_attr("duplicate_of", earlier.number)
                    study.tell(trial, values=earlier.values, state=earlier.state)
                    trials.pop()
                    duplicates += 1
                    if duplicates >= self.max_duplicates:
                        break
                    continue
                duplicates = 0
                if key not in batch:
                    batch[key] = overrides
                    launch.append(overrides)
            if not launch:
                break
            returns = self.launcher.launch(launch, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            outcome = {}
            for overrides, ret in zip(launch, returns, strict=True):
                # the job's folder (working_dir is where Hydra was started: no chdir)
                job = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)).resolve()
                outcome[_key(overrides)] = (self._values(ret), job)
            for trial, key in trials:
                values, job = outcome[key]
                first = trial.number == min(t.number for t, k in trials if k == key)
                trial.set_user_attr("launched", first)
                trial.set_user_attr("job", self._relative(job))
                if not first:
                    trial.set_user_attr("duplicate_of", known_number(trials, key))
                if values is None:
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, values=values)
            known = self._known(study)
            done = len(known)
            self._write_record(study)
        if duplicates >= self.max_duplicates:
            log.info(
                "detbench: search: %d proposals in a row repeated finished configurations: "
                "the space looks exhausted after %d jobs",
                duplicates,
                done,
            )
        self._write_record(study, final=True)

    # -- the record -----------------------------------------------------------------------------
    def _relative(self, job: Path) -> str:
        try:
            return str(job.relative_to(Path(self.sweep_dir).resolve()))
        except ValueError:
            return str(job)

    def _write_record(self, study: optuna.Study, final: bool = False) -> None:
        folder = Path(self.sweep_dir)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for t in study.get_trials(deepcopy=False):
            values = t.values if t.state == TrialState.COMPLETE and t.values else [None, None]
            writer.writerow(
                {
                    "trial": t.number,
                    "state": t.state.name,
                    "job": t.user_attrs.get("job", ""),
                    "launched": bool(t.user_attrs.get("launched", False)),
                    "duplicate_of": t.user_attrs.get("duplicate_of", ""),
                    "interrupted": bool(t.user_attrs.get("interrupted", False)),
                    "accuracy": values[0],
                    "cost": values[1],
                    "overrides": " ".join(t.user_attrs.get("overrides", [])),
                }
            )
        write_text_atomic(folder / TRIALS_FILE, out.getvalue())
        record = {
            "study_name": study.study_name,
            "storage": self._storage(),
            "sampler": type(self.sampler).__name__,
            "accuracy": self.columns[0],
            "cost": self.columns[1],
            "directions": self._get_directions(),
            "n_trials": self.n_trials,
            "grid": self.grid,
            "finished": final,
        }
        write_text_atomic(folder / SEARCH_FILE, json.dumps(record, indent=2) + "\n")


def known_number(trials: list[tuple[Any, tuple]], key: tuple) -> int:
    """Number of the batch's first trial with configuration ``key``."""
    return min(t.number for t, k in trials if k == key)
