"""detbench's Hydra sweeper plugin: the frontier search (``hydra/sweeper=frontier``).

Hydra finds sweepers only in the ``hydra_plugins`` namespace package, so the plugin class
lives here; its work is ``benchmark.search.sweeper`` (imported when a search starts, so
detbench's start-up never imports Optuna).
"""
