"""``python -m dualpipe_sim`` and the ``dualpipe-sim`` command.

Kept free of imports until :func:`main` runs, so that Ctrl-C while the
libraries load (numpy, pydantic, matplotlib take a second or more on a busy
machine) ends with ``interrupted`` and exit status 130, not a traceback; SIGTERM
the same with ``terminated`` and 143 (signals.py).
"""

import sys

from .signals import stop_on_sigterm, stopped  # standard library only


def main() -> int:
    stop_on_sigterm()  # SIGTERM ends like Ctrl-C, with 143 (signals.py)
    try:
        from .cli import leave, main as cli_main
    except KeyboardInterrupt as exc:
        word, code = stopped(exc)
        print(word, file=sys.stderr)
        return code
    try:
        code = cli_main()
    except KeyboardInterrupt as exc:  # pragma: no cover - cli.main handles it; this is the last net
        word, code = stopped(exc)
        print(word, file=sys.stderr)
        return code
    leave(code)  # without the interpreter's teardown (cli.leave says why)


if __name__ == "__main__":
    sys.exit(main())
