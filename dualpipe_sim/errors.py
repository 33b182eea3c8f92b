"""The error a scenario raises, in a module of its own so that every layer
(scenario, cost model, variability, simulation) can raise it without importing
the others."""


class ScenarioError(ValueError):
    """A scenario or override breaks a rule; the message names the scenario key."""


SHOWN_WHOLE = 80  # characters of repr an error line echoes whole
SHOWN_CUT = 60  # characters kept of a longer one


def cut(text: str) -> str:
    """Text an error line echoes from a user, cut past SHOWN_WHOLE characters to its first
    SHOWN_CUT and its length, so that a hostile value cannot turn the one error line into a page."""
    if len(text) > SHOWN_WHOLE:
        return text[:SHOWN_CUT] + f"... ({len(text)} characters)"
    return text


def shown(value) -> str:
    """A user's value as an error line echoes it: its repr, cut (``cut``)."""
    return cut(repr(value))
