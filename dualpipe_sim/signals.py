"""SIGTERM handled like Ctrl-C (SIGINT): the same clean stop, its own exit status.

A process entry point (``dualpipe-sim``, ``python -m dualpipe_sim[.cli]``) calls
:func:`stop_on_sigterm` first; SIGTERM then raises :class:`Terminated`, a
``KeyboardInterrupt``, so every path that already ends Ctrl-C cleanly (write_all
putting the output folder back, the sweep keeping its finished rows) ends a
SIGTERM the same way.  The CLI prints one line and exits 128 + the signal's number,
as shells report it: 130 for SIGINT, 143 for SIGTERM.  Nothing but the standard
library is imported here (it runs before the slow imports).
"""

from __future__ import annotations

import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised in the main thread by the handler :func:`stop_on_sigterm` installs)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def stop_on_sigterm() -> None:
    """From now on, SIGTERM raises Terminated in the main thread.  Entry points only: the
    library and the tests' in-process ``cli.main`` leave the process's handlers alone."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def stopped(exc: BaseException) -> tuple[str, int]:
    """(the word the CLI prints, the exit status) for a Ctrl-C or a SIGTERM."""
    if isinstance(exc, Terminated):
        return "terminated", 128 + signal.SIGTERM
    return "interrupted", 128 + signal.SIGINT


def worker_ignores_stop_signals() -> None:
    """In a sweep worker process: Ctrl-C reaches the whole process group and SIGTERM may, but
    only the parent decides (it keeps the finished rows, then stops the workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
