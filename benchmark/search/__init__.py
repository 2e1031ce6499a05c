"""Frontier search: Hydra's Optuna sweeper over the grid's axes (issue 18, docs/sweeps.md).

``objectives``: what a job returns to the sweeper; ``space``: the conditional search space;
``sweeper``: the study loop (resumable, one job per distinct configuration);
``hypervolume``: the 2-D hypervolume of a frontier. Optuna is imported by ``sweeper`` only
(the ``search`` extra); the rest works without it (the report reads ``search_trials.csv``).
"""
