"""The one error a sweep raises for bad input outside the scenario itself."""


class SweepError(ValueError):
    """Bad sweep input (output folder, resume file, memory limit, workers, Dask address).

    ``param`` is the :func:`run_sweep` parameter at fault (``out``, ``resume``,
    ``jobs``, ``memory_limit``, ``dask_scheduler``); the message starts with it,
    and the CLI shows the matching flag instead."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.message = param, message
