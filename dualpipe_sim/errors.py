"""The errors a user's input raises, in a module of its own so that every layer
(scenario, cost model, variability, simulation, schedules) can raise them without
importing the others."""


class InputError(ValueError):
    """A user's input breaks a rule; ``str()`` is the one error line the CLI prints.

    Raised with its parts, ``InputError(field=..., rule=..., by=...)``, the line is
    ``<field>: [<by> ]<rule>``: ``field`` the key at fault (``pipeline.microbatches``), ``rule``
    what it breaks (``needs >= 2 * pipeline.stages = 8, got 4``), ``by`` the schedule family whose
    rule it is (``dualpipe``), else None.  Raised with a whole line, ``InputError(message)``: field
    and by are None and rule is the line.  Readers that reword an error (compare's skip lines)
    use the parts, never the text."""

    def __init__(self, message: str | None = None, *, field: str | None = None, rule: str | None = None,
                 by: str | None = None):
        if message is None:
            message = f"{field}: {by} {rule}" if by else f"{field}: {rule}"
        else:
            field, rule, by = None, message, None
        super().__init__(message)
        self.field, self.rule, self.by = field, rule, by


class ScenarioError(InputError):
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


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1 ("1 MTP module", "2 stages")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
