"""The Hydra config tree of detbench (``pkg://sweeps``).

Importing the package (Hydra does, to read the YAML files) registers the OmegaConf resolvers
the config uses (``${detbench_job_dir:...}``), so composing works from any tool or test.
"""

import benchmark.resolvers  # noqa: F401
