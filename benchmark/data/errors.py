"""The one error the data pipeline raises for data it cannot use."""


class DatasetError(ValueError):
    """A dataset that cannot be used as configured.

    The message always names the offending file (or folder, or config key) and the
    problem, e.g. ``"/data/ann.json: malformed JSON: Expecting value: line 1 column 1"``.
    Raised up front by :func:`benchmark.data.build_data` (before any training starts),
    and at load time for an image that exists but cannot be decoded.
    """
