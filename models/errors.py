"""Errors the model code raises on purpose, so the job runner can tell them apart."""


class IncompatibleConfigError(ValueError):
    """A combination of pieces that cannot work together, known before any work starts.

    Example: R-FCN over an extractor that cannot split off its last stage. The job
    runner records such a job as ``status: skipped`` with this message as the reason,
    instead of a failure.
    """
