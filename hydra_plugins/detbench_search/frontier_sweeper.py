"""``FrontierSweeper``: Hydra's Optuna sweeper over the grid's axes, resumable, one job per
configuration (``benchmark.search.sweeper``; config ``sweeps/hydra/sweeper/frontier.yaml``)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class FrontierSweeper(Sweeper):
    """Delegates to ``benchmark.search.sweeper.FrontierSearch`` (see its docstring).

    Takes hydra-optuna-sweeper's arguments (sampler, storage, study_name, n_trials, n_jobs,
    params...) plus ``accuracy``, ``cost``, ``conditional``, ``max_duplicates`` and ``grid``.
    """

    def __init__(self, **kwargs: Any) -> None:
        from benchmark.search.sweeper import FrontierSearch

        kwargs.pop("direction", None)  # derived from the objectives
        kwargs.setdefault("search_space", None)
        kwargs.setdefault("custom_search_space", None)
        kwargs.setdefault("max_failure_rate", 1.0)
        self.search = FrontierSearch(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.search.sweep(arguments)
