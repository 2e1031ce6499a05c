"""detbench: train, evaluate and time object detectors (see README.md)."""

from benchmark import resolvers as _resolvers  # noqa: F401  (the config's OmegaConf resolvers)
