"""``plan``: Ctrl-C keeps the finished candidates, ``--resume`` simulates only the others and gives the
same outputs, byte for byte, as an uninterrupted run; the same outputs on a Dask cluster.

The small model of tests/test_plan.py (4 layers, 4 GPUs, global batch 8 x 2048, 1f1b and dualpipev):
116 candidates survive pruning and all are simulated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.plan import JOURNAL, Interrupted, PlanError
from test_sigterm import alive, children, default_signals

TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip
REQUEST = dict(hardware="H100", schedules=["1f1b", "dualpipev"], top=3)
SIMULATED = 116  # tests/test_plan.py counts them by hand (84 before s20l kept ZeRO 0 and 1, 8 fewer since s20o)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def whole(config, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of an uninterrupted run (one process)."""
    out = tmp_path_factory.mktemp("whole") / "plan"
    ds_plan.write(ds_plan(config, 4, 8, 2048, jobs=1, out=out, **REQUEST), out)
    return _files(out)


class StopAfter:
    """A progress callback that presses Ctrl-C once ``k`` candidates are simulated."""

    def __init__(self, k: int) -> None:
        self.k, self.totals = k, []

    def __call__(self, done: int, total: int, what: str) -> None:
        if what == "simulating":
            self.totals.append(total)
            if done >= self.k:
                raise KeyboardInterrupt


class Count:
    def __init__(self) -> None:
        self.totals = []

    def __call__(self, done: int, total: int, what: str) -> None:
        if what == "simulating":
            self.totals.append(total)


def _journal_lines(out: Path) -> int:
    return len((out / JOURNAL).read_text().splitlines())


def test_an_interrupt_just_after_a_line_is_written_is_counted(config, tmp_path, monkeypatch):
    """A signal can land between the journal's write and the plan's count (SIGTERM under load did): the
    message must say what the file holds, as --resume will find it."""
    from dualpipe_sim.plan.journal import Journal

    real, calls = Journal.append, []

    def append_then_signal(self, overrides, fields):
        real(self, overrides, fields)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after the third line is on disk, before the loop counts it

    monkeypatch.setattr(Journal, "append", append_then_signal)
    out = tmp_path / "plan"
    with pytest.raises(Interrupted) as info:
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, **REQUEST)
    assert _journal_lines(out) == 3
    assert (info.value.finished, info.value.left) == (3, SIMULATED - 3)


@pytest.mark.parametrize("k", [1, 37])
def test_interrupted_plan_keeps_finished_candidates_and_resume_gives_the_same_bytes(config, tmp_path, whole, k):
    out = tmp_path / "plan"
    with pytest.raises(Interrupted) as info:
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, progress=StopAfter(k), **REQUEST)
    assert (info.value.finished, info.value.left) == (k, SIMULATED - k)
    assert isinstance(info.value.signal, KeyboardInterrupt)
    assert [p.name for p in out.iterdir()] == [JOURNAL]  # nothing half-done: no plan.csv, no TOMLs
    assert _journal_lines(out) == k
    # without --resume the journal is not overwritten
    with pytest.raises(PlanError, match="resume: .* holds the finished candidates of an interrupted plan"):
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, **REQUEST)
    count = Count()
    result = ds_plan(config, 4, 8, 2048, jobs=1, out=out, resume=True, progress=count, **REQUEST)
    assert count.totals and set(count.totals) == {SIMULATED - k}  # only what was left is simulated
    ds_plan.write(result, out)
    assert _files(out) == whole  # and the journal is gone


def test_interrupted_twice_with_worker_processes(config, tmp_path, whole):
    # Two processes finish candidates in any order; two interruptions, then a resume: the same bytes.
    out = tmp_path / "plan"
    for k in (9, 20):
        with pytest.raises(Interrupted):
            ds_plan(config, 4, 8, 2048, jobs=2, out=out, resume=True, progress=StopAfter(k), **REQUEST)
    kept = _journal_lines(out)
    assert kept >= 29
    count = Count()
    ds_plan.write(ds_plan(config, 4, 8, 2048, jobs=2, out=out, resume=True, progress=count, **REQUEST), out)
    assert set(count.totals) == {SIMULATED - kept}
    assert _files(out) == whole


def _resumed_after(config, tmp_path, stop: int, damage) -> tuple[set, dict[str, bytes]]:
    """Interrupted after ``stop`` candidates, the journal then changed by ``damage`` (its path), and resumed: the
    totals the resume reported simulating, and its outputs."""
    out = tmp_path / "plan"
    with pytest.raises(Interrupted):
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, progress=StopAfter(stop), **REQUEST)
    damage(out / JOURNAL)
    count = Count()
    ds_plan.write(ds_plan(config, 4, 8, 2048, jobs=1, out=out, resume=True, progress=count, **REQUEST), out)
    return set(count.totals), _files(out)


def test_a_line_cut_short_is_simulated_again(config, tmp_path, whole):
    def cut(path: Path) -> None:  # a kill in the middle of the fifth line
        path.write_text(path.read_text()[:-40])

    assert _resumed_after(config, tmp_path, 5, cut) == ({SIMULATED - 4}, whole)


def test_resume_refuses_another_plans_journal(config, tmp_path):
    out = tmp_path / "plan"
    with pytest.raises(Interrupted):
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, progress=StopAfter(2), **REQUEST)
    calls = []
    with pytest.raises(PlanError, match="resume: .* holds candidates of another plan"):
        ds_plan(config, 4, 8, 4096, jobs=1, out=out, resume=True, progress=lambda *a: calls.append(a), **REQUEST)
    assert calls == []  # refused before any estimating
    assert _journal_lines(out) == 2  # left as it was


# Each option that sets the candidates or which of them are simulated, changed on resume (s19d): refused naming it
# (the library keyword; the CLI its flag), before any estimating, the journal left as it was.
@pytest.mark.parametrize("option, value", [("gpus", 8), ("global_batch", 16), ("schedules", ["1f1b"]),
                                           ("budget", 50), ("search_expert_tensor", True)])  # fmt: skip
def test_resume_refuses_other_search_options_naming_the_option(config, tmp_path, option, value):
    out = tmp_path / "plan"
    with pytest.raises(Interrupted):
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, progress=StopAfter(2), **REQUEST)
    before = (out / JOURNAL).read_bytes()
    args = {"gpus": 4, "global_batch": 8, "seq": 2048, **REQUEST, option: value}
    calls = []
    with pytest.raises(PlanError, match="differs from the interrupted plan's") as err:
        ds_plan(config, jobs=1, out=out, resume=True, progress=lambda *a: calls.append(a), **args)
    assert err.value.field == option and str(err.value).startswith(f"{option}: ")
    assert calls == [] and (out / JOURNAL).read_bytes() == before and [p.name for p in out.iterdir()] == [JOURNAL]


def test_resume_with_other_jobs_or_top_is_the_same_search(config, tmp_path, whole):
    # --jobs says how the candidates run, --top how many are written: neither changes a figure, so a resume may differ
    out = tmp_path / "plan"
    with pytest.raises(Interrupted):
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, progress=StopAfter(5), **REQUEST)
    count = Count()
    ds_plan.write(ds_plan(config, 4, 8, 2048, jobs=2, out=out, resume=True, progress=count, **REQUEST), out)
    assert set(count.totals) == {SIMULATED - 5}
    assert _files(out) == whole


def test_a_line_without_its_search_options_is_simulated_again(config, tmp_path, whole):
    # a journal line of a plan from before the options were kept cannot be matched to this search: dropped, not reused
    def unkept(path: Path) -> None:
        lines = path.read_text().splitlines()
        old = json.loads(lines[0])
        del old["search"]
        path.write_text("\n".join([json.dumps(old), *lines[1:]]) + "\n")

    assert _resumed_after(config, tmp_path, 3, unkept) == ({SIMULATED - 2}, whole)


def test_cli_resume_with_another_flag_is_one_line_exit_2(config, tmp_path):
    out = tmp_path / "plan"
    with pytest.raises(Interrupted):
        ds_plan(config, 4, 8, 2048, jobs=1, out=out, progress=StopAfter(2), **REQUEST)
    before = (out / JOURNAL).read_bytes()
    proc = _cli(*_plan_args(config, out), "--resume", "--search-expert-tensor")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --search-expert-tensor: differs from the interrupted plan's")
    assert "it had False, this one True" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert (out / JOURNAL).read_bytes() == before and [p.name for p in out.iterdir()] == [JOURNAL]


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dualpipe_sim", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)  # fmt: skip


def _plan_args(config, out, global_batch=8):
    return ["plan", config, "--gpus", 4, "--hardware", "H100", "--global-batch", global_batch, "--seq", 2048,
            "--schedules", "1f1b,dualpipev", "--top", 3, "--out", out, "--jobs", 1]  # fmt: skip


def _start(args) -> subprocess.Popen:
    # default SIGINT/SIGTERM handlers in the child, whatever pytest runs with (tests/test_sigterm.py)
    return subprocess.Popen([sys.executable, "-m", "dualpipe_sim", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)  # fmt: skip


def _wait_for_lines(proc, out: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / JOURNAL).exists() and _journal_lines(out) >= n:
            return
        time.sleep(0.005)


# The CLI run by a hook that holds the plan in its second simulation until a signal ends it: once the first
# candidate is in the journal, the hook writes HELD and sleeps inside the simulation (as a long candidate would), so
# the Ctrl-C always lands while the plan simulates, however loaded the machine (s19d: the plan could finish first).
HOLD = """
import sys, time, runpy
from pathlib import Path
from dualpipe_sim.plan import simulate

held, run, calls = Path(sys.argv.pop(1)), simulate.run_candidate, []

def holding(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        held.write_text("held")
        time.sleep(600)
    return run(*args, **kwargs)

simulate.run_candidate = holding
sys.argv[0] = "dualpipe_sim"
runpy.run_module("dualpipe_sim", run_name="__main__")
"""


def test_sigint_on_the_cli_then_resume(config, tmp_path, whole):
    out, held = tmp_path / "plan", tmp_path / "HELD"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, held, *map(str, _plan_args(config, out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)  # fmt: skip
    deadline = time.monotonic() + 120
    while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert held.exists() and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "not held"
    os.kill(proc.pid, signal.SIGINT)  # the plan is in its second simulation, the first one's line written
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert f"rerun with --resume to simulate the other {SIMULATED - 1}" in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert [p.name for p in out.iterdir()] == [JOURNAL]
    assert _journal_lines(out) == 1
    # an existing journal without --resume: one line, exit 2, the journal untouched
    again = _cli(*_plan_args(config, out))
    assert again.returncode == 2 and again.stderr.startswith("error: --out") and "--resume" in again.stderr
    assert _journal_lines(out) == 1
    done = _cli(*_plan_args(config, out), "--resume")
    assert done.returncode == 0, done.stderr
    assert _files(out) == whole


def test_sigterm_stops_the_workers_keeps_the_journal_and_resume_finishes(config, tmp_path, whole):
    out = tmp_path / "plan"
    proc = _start([*_plan_args(config, out)[:-1], 2])  # --jobs 2
    _wait_for_lines(proc, out, 1)
    workers = children(proc.pid)
    assert proc.poll() is None and workers, "no worker processes to stop: give it more work"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.startswith("terminated: ") and stderr.count("\n") == 1 and "--resume" in stderr
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a plan worker outlived its parent"
    kept = _journal_lines(out)
    assert f"terminated: {kept} finished candidates are in {out / JOURNAL}" in stderr
    assert [p.name for p in out.iterdir()] == [JOURNAL]
    done = _cli(*_plan_args(config, out), "--resume")
    assert done.returncode == 0, done.stderr
    assert _files(out) == whole


def test_dask_cluster_gives_the_same_outputs(config, tmp_path, whole):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:  # fmt: skip
        out = tmp_path / "plan"
        ds_plan.write(ds_plan(config, 4, 8, 2048, out=out, dask_scheduler=cluster.scheduler_address, **REQUEST),
                      out)  # fmt: skip
        assert _files(out) == whole
        # interrupted on the cluster, resumed on the cluster
        out2 = tmp_path / "plan2"
        with pytest.raises(Interrupted):
            ds_plan(config, 4, 8, 2048, out=out2, dask_scheduler=cluster.scheduler_address, progress=StopAfter(10),
                    **REQUEST)  # fmt: skip
        ds_plan.write(ds_plan(config, 4, 8, 2048, out=out2, dask_scheduler=cluster.scheduler_address, resume=True,
                              **REQUEST), out2)  # fmt: skip
        assert _files(out2) == whole


@pytest.mark.parametrize("extra, words", [
    (["--dask-scheduler", "foo"], "error: --dask-scheduler: foo: not a scheduler address"),
    (["--dask-scheduler", "tcp://127.0.0.1:1"], "error: --dask-scheduler: tcp://127.0.0.1:1: cannot connect"),
    (["--dask-scheduler", " "], "error: --dask-scheduler: empty address"),
    (["--dask-scheduler", "tcp://127.0.0.1:1", "--jobs", "2"], "error: --jobs: does not apply with --dask-scheduler"),
])  # fmt: skip
def test_cli_dask_errors_as_sweep_words_them(config, tmp_path, extra, words):
    pytest.importorskip("distributed")
    out = tmp_path / "plan"
    args = [a for a in _plan_args(config, out) if a not in ("--jobs", 1)]
    proc = _cli(*args, *extra)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(words) and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
