"""``python -m dualpipe_sim`` and the ``dualpipe-sim`` command.

Kept free of imports until :func:`main` runs, so that Ctrl-C while the
libraries load (numpy, pydantic, matplotlib take a second or more on a busy
machine) ends with ``interrupted`` and exit status 130, not a traceback.
"""

import sys


def main() -> int:
    try:
        from .cli import EXIT_INTERRUPTED, leave, main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    try:
        code = cli_main()
    except KeyboardInterrupt:  # pragma: no cover - cli.main handles it; this is the last net
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    leave(code)  # without the interpreter's teardown (cli.leave says why)


if __name__ == "__main__":
    sys.exit(main())
