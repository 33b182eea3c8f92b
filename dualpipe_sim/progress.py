"""Progress of library calls that can take seconds: the library reports, the CLI draws.

A function that may run long (compare's schedules, ``--repeat``'s seeds, the
steps and files of a run) takes ``progress``: a :data:`Progress` callable,
called as ``progress(done, total, what)`` after each step, or None.  The
library never prints; the CLI turns the calls into a bar on stderr, shown
only when stderr is a terminal and the work outlasts a second.
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[int, int, str], None]


def report(progress: Optional[Progress], done: int, total: int, what: str) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(done, total, what)


def each_file(writers: dict, progress: Optional[Progress]) -> dict:
    """The same file writers (outputs.write_all), each reporting its file to ``progress``."""
    if progress is None:
        return writers
    names = list(writers)

    def step(i: int, name: str):
        def write(path):
            progress(i, len(names), f"writing {name}")
            writers[name](path)
            progress(i + 1, len(names), f"wrote {name}")

        return write

    return {name: step(i, name) for i, name in enumerate(names)}
