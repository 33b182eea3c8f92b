"""The one error a sweep raises for bad input outside the scenario itself."""


class SweepError(ValueError):
    """Bad sweep input (output folder, resume file, memory limit, Dask address); one line naming the flag."""
