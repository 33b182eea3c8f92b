"""SIGTERM is handled like Ctrl-C (issue 25): one line ``terminated``, exit 143 (128 + 15),
outputs as they were, and a sweep keeps its finished rows and leaves no worker process behind.

Real processes, signalled once past their imports.  Each child starts with the default
SIGINT/SIGTERM handlers restored (preexec_fn), so the tests hold when pytest itself runs with a
signal ignored (a child inherits SIG_IGN, and Python then leaves SIGINT ignored)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_robust import LONG, QUICK, wait_until_working

SWEEP = ["sweep", QUICK, "--grid", "pipeline.microbatches=4000,4002,4004,4006,4008,4010", "--set",
         "pipeline.stages=16", "--jobs", "2"]  # fmt: skip


def default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(args, out: Path, cwd: Path, entry=("-m", "dualpipe_sim")) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *entry, *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, preexec_fn=default_signals)  # fmt: skip


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc), zombies aside."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.mark.parametrize("verb,entry", [("run", ("-m", "dualpipe_sim")), ("compare", ("-m", "dualpipe_sim.cli"))])
def test_sigterm_run_and_compare_exit_143_with_a_line(verb, entry, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier run")
    args = {"run": ["run", QUICK, *LONG], "compare": ["compare", QUICK, *LONG, "--schedules", "1f1b,zb-h1,dualpipe"]}
    proc = start(args[verb], out, tmp_path, entry)
    wait_until_working(proc, out, verb)
    assert proc.poll() is None, "finished before it could be stopped: give it more work"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err == "terminated\n", err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_sigterm_sweep_stops_its_workers_and_keeps_finished_rows(tmp_path):
    out = tmp_path / "out"
    proc = start(SWEEP, out, tmp_path)
    wait_until_working(proc, out, "sweep")
    workers = children(proc.pid)
    assert proc.poll() is None and workers, "no worker processes to stop: give it more work"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.startswith("terminated: ") and "rerun with --resume" in err and err.count("\n") == 1, err
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a sweep worker outlived its parent"
    with (out / "results.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert len(rows) < 6 and all(len(r) == len(header) and r[header.index("status")] == "ok" for r in rows)
    # The line counts what results.csv holds.
    assert f"terminated: {len(rows)} finished rows are in {out / 'results.csv'}" in err


class _Loading(type(sys)):
    """A dualpipe_sim.cli still loading: reading the names __main__ imports from it is the signal arriving."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__("dualpipe_sim.cli")
        self.exc = exc

    def __getattr__(self, name):
        if name in ("leave", "main"):
            raise self.exc
        raise AttributeError(name)  # anything else (pytest's report reads __file__) is simply not there yet


@pytest.mark.parametrize("exc, word, code", [(KeyboardInterrupt(), "interrupted", 130), (None, "terminated", 143)])
def test_a_stop_while_the_libraries_load_is_one_line_and_128_plus_the_signal(monkeypatch, capsys, exc, word, code):
    """Ctrl-C (SIGINT = 2) or SIGTERM (15) before the CLI is imported: __main__ prints the word and returns 128 + the
    signal's number, as a shell reports it, not 0 (which says the command ran)."""
    import dualpipe_sim.__main__ as entry
    from dualpipe_sim.signals import Terminated

    monkeypatch.setitem(sys.modules, "dualpipe_sim.cli", _Loading(exc if exc is not None else Terminated()))
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert entry.main() == code == 128 + (signal.SIGINT if word == "interrupted" else signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)  # main() installs the entry point's handler
    assert capsys.readouterr().err == f"{word}\n"
