"""The error a scenario raises, in a module of its own so that every layer
(scenario, cost model, variability, simulation) can raise it without importing
the others."""


class ScenarioError(ValueError):
    """A scenario or override breaks a rule; the message names the scenario key."""
