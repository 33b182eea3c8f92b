"""Issue 16: misuse that is not a broken scenario file (those are in tests/hostile/).

Each case: one line ``error: ...`` naming the flag or key and the rule, exit 2,
no traceback, and nothing already written replaced.  Also the legal-but-odd
inputs that warn, the hints, and Ctrl-C (a real process sent SIGINT).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from dualpipe_sim import compare, simulation
from dualpipe_sim.outputs import files as outputs
from dualpipe_sim.schedules import registry
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main
from dualpipe_sim.schedules.ir import ScheduleError
from dualpipe_sim.outputs.plots.gantt import gantt_title

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
SMALL = ["--set", "pipeline.stages=4", "--set", "pipeline.microbatches=8"]


def one_error_line(capsys, *fragments) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


# -- one size guard for every verb that builds a schedule --------------------------------------
def test_schedule_verb_refuses_what_run_refuses_before_building(monkeypatch, capsys):
    family = registry.get("1f1b")

    def must_not_generate(*a, **k):
        raise AssertionError("generated a schedule that had to be refused")

    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY,
                                                "1f1b": family.__class__(**{**family.__dict__,
                                                                            "generate": must_not_generate})})
    assert main(["schedule", "1f1b", "--stages", "4096", "--microbatches", "100000"]) == 2
    # 3 x 4096 x 100000 ops x 768 B = 9.437e11 bytes (no chart boxes: 100000 micro-batches draw bands)
    one_error_line(capsys, "--stages 4096 x --microbatches 100000 is up to 1,228,800,000 ops", "944 GB")
    assert main(["run", QUICK, "--set", "pipeline.schedule=1f1b", "--set", "pipeline.stages=4096",
                 "--set", "pipeline.microbatches=100000"]) == 2
    one_error_line(capsys, "limits.max_memory: 4096 stages x 100000 micro-batches is up to 1,228,800,000 ops")


def test_schedule_verb_refusal_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "dualpipe_sim", "schedule", "1f1b", "--stages", "4096",
                           "--microbatches", "100000"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --stages 4096 x --microbatches 100000") and proc.stderr.count("\n") == 1


def test_the_library_builder_holds_to_the_same_guard():
    with pytest.raises(ScheduleError, match=r"^limits.max_memory: 4096 stages x 100000 micro-batches"):
        registry.build("1f1b", 4096, 100000)
    # 3 x 2 x 2 = 12 ops at 768 B, each a chart box at 10 KiB, on a 4,950 x 792 px picture (45 in x 7.2 in,
    # 4 B a pixel): exactly fits
    fits = 12 * 768 + 12 * 10 * 1024 + 4950 * 792 * 4
    assert registry.build("1f1b", 2, 2, max_memory=fits).stages == 2
    with pytest.raises(ScheduleError, match=r"^limits.max_memory: 2 stages x 2 micro-batches is up to 12 ops"):
        registry.build("1f1b", 2, 2, max_memory=fits - 1)


def test_an_option_the_schedule_does_not_take_is_refused(capsys):
    assert main(["schedule", "1f1b", "--stages", "4", "--microbatches", "4", "--chunks-per-rank", "3"]) == 2
    one_error_line(capsys, "--chunks-per-rank: schedule 1f1b does not take it (only interleaved-1f1b")
    assert main(["compare", QUICK, "--set", "pipeline.chunks_per_rank=2", "--schedules", "1f1b,dualpipe"]) == 2
    one_error_line(capsys, "pipeline.chunks_per_rank: 1f1b, dualpipe do not take it")


def test_a_sweep_over_schedules_takes_the_option_when_one_of_them_does(tmp_path, capsys):
    grid = ["--grid", "pipeline.schedule=1f1b,interleaved-1f1b", "--set", "pipeline.chunks_per_rank=2"]
    assert main(["sweep", QUICK, *grid, *SMALL, "--jobs", "1", "--out", str(tmp_path / "o")]) == 0
    assert main(["sweep", QUICK, "--grid", "pipeline.stages=4,8", "--set", "pipeline.chunks_per_rank=2",
                 "--out", str(tmp_path / "p")]) == 2
    one_error_line(capsys, "pipeline.chunks_per_rank: dualpipe does not take it")
    assert not (tmp_path / "p").exists()


# -- output paths: checked before any work, all-or-nothing -------------------------------------
VERBS = {
    "run": ["run", QUICK, *SMALL],
    "compare": ["compare", QUICK, *SMALL, "--schedules", "1f1b"],
    "sweep": ["sweep", QUICK, *SMALL, "--grid", "pipeline.schedule=1f1b", "--jobs", "1"],
}
FILE_OF = {"run": "gantt.png", "compare": "compare.png", "sweep": "summary.md"}


@pytest.fixture
def no_work(monkeypatch):
    """Output problems must be found before anything is simulated."""

    def refuse(*a, **k):
        raise AssertionError("simulated before checking the output folder")

    monkeypatch.setattr(simulation, "run", refuse)
    monkeypatch.setattr(compare, "compare", refuse)
    import dualpipe_sim.sweep as sweep

    monkeypatch.setattr(sweep, "run_sweep", refuse)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_out_naming_a_file(verb, tmp_path, capsys, no_work):
    target = tmp_path / "afile"
    target.write_text("keep me")
    assert main([*VERBS[verb], "--out", str(target)]) == 2
    one_error_line(capsys, f"error: --out: {target} is a file, not a folder")
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_out_under_a_file(verb, tmp_path, capsys, no_work):
    (tmp_path / "afile").write_text("keep me")
    assert main([*VERBS[verb], "--out", str(tmp_path / "afile" / "x")]) == 2
    one_error_line(capsys, f"{tmp_path / 'afile'} is a file, not a folder")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_out_where_nothing_can_be_written(verb, capsys, no_work):
    # /proc takes no new folders, even for root (a chmod'ed folder would not stop root).
    assert main([*VERBS[verb], "--out", "/proc/dualpipe-sim-out"]) == 2
    one_error_line(capsys, "error: --out: /proc/dualpipe-sim-out: cannot write in /proc")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_folder_where_an_output_file_goes(verb, tmp_path, capsys, no_work):
    out = tmp_path / "D"
    (out / FILE_OF[verb]).mkdir(parents=True)
    (out / "metrics.json").write_text("earlier run")
    assert main([*VERBS[verb], "--out", str(out)]) == 2
    one_error_line(capsys, f"{out / FILE_OF[verb]} is a folder where the file {FILE_OF[verb]} goes")
    assert (out / "metrics.json").read_text() == "earlier run"
    assert sorted(p.name for p in out.iterdir()) == sorted([FILE_OF[verb], "metrics.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]  # no staging folder left


def test_write_all_puts_back_what_it_replaced_when_a_move_fails(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    for name in ("a.txt", "b.txt"):
        (out / name).write_text(f"old {name}")
    real = os.replace

    def fail_on_b(src, dst):
        if Path(dst) == out / "b.txt" and "old" not in Path(src).read_text():
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", fail_on_b)
    # An OSError on the way is one OutputError naming the file (issue 25), after the rollback.
    with pytest.raises(outputs.OutputError, match=r"cannot write .*b\.txt: No space left on device"):
        outputs.write_all(out, {"a.txt": outputs.write_text("new a"), "b.txt": outputs.write_text("new b"),
                                "c.txt": outputs.write_text("new c")})
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "old a.txt", "b.txt": "old b.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# -- overflow ---------------------------------------------------------------------------------
def raw(**costs):
    return {"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8},
            "costs": {"forward": 1.0, "backward": 2.0, **costs}}


@pytest.mark.parametrize("schedule", ["1f1b", "dualpipe", "zb-h1"])
def test_forward_1e308_is_a_clear_error_without_warnings(schedule):
    data = raw(forward=1e308, overlapped=1e308)
    data["pipeline"]["schedule"] = schedule
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail here
        with pytest.raises(scenario.ScenarioError, match=r"^costs: durations too large to simulate: makespan"):
            simulation.run(scenario.from_dict(data))


def test_huge_but_summable_durations_give_a_clean_result():
    # F = F&B = 1e300: DualPipe's 4 stages x 8 micro-batches add up to ~1e302, far from the limit.
    # The pair's F/B split once computed total * F first (1e600 = inf).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = simulation.run(scenario.from_dict(raw(forward=1e300, overlapped=1e300))).metrics
    assert math.isfinite(m.makespan) and m.makespan > 1e300
    outputs.metrics_json(m)  # valid JSON: every number finite


# -- Ctrl-C -----------------------------------------------------------------------------------
# about 10 s of CPU for `run` (~0.7 s of it imports): still working when signalled, however fast the engine gets and
# however long a loaded machine keeps this test from running between its check and the signal (10,000
# micro-batches finished first once, under load)
LONG = ["--set", "pipeline.stages=16", "--set", "pipeline.microbatches=30000"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until_working(proc, out: Path, verb: str) -> None:
    """Past the imports (about 1 s of CPU) and into the work, however loaded the machine is."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if verb == "sweep" and (out / "results.csv").exists():  # the workers are running points
            time.sleep(0.5)
            return
        if verb != "sweep" and cpu_seconds(proc.pid) >= 1.8:
            return
        time.sleep(0.05)


@pytest.mark.parametrize("verb", ["run", "compare", "sweep"])
def test_ctrl_c_exits_130_without_traceback_and_leaves_outputs_as_they_were(verb, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier run")
    args = {
        "run": ["run", QUICK, *LONG],
        "compare": ["compare", QUICK, *LONG, "--schedules", "1f1b,zb-h1,dualpipe"],
        "sweep": ["sweep", QUICK, "--grid", "pipeline.microbatches=4000,4002,4004,4006,4008,4010", "--set",
                  "pipeline.stages=16", "--jobs", "2"],
    }[verb]
    # The child starts with SIGINT's default handler: with SIGINT ignored in pytest (a CI runner's
    # background job) it would inherit SIG_IGN, and Python leaves an ignored SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "dualpipe_sim", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    wait_until_working(proc, out, verb)
    assert proc.poll() is None, "finished before it could be interrupted: give it more work"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.startswith("interrupted"), err
    assert (out / "metrics.json").read_text() == "earlier run"
    left = sorted(p.name for p in out.iterdir())
    if verb == "sweep":  # finished rows are kept, and only whole rows
        assert left == ["metrics.json", "results.csv"]
        with (out / "results.csv").open(newline="") as f:
            header, *rows = list(csv.reader(f))
        assert len(rows) < 6 and all(len(r) == len(header) and r[header.index("status")] == "ok" for r in rows)
    else:
        assert left == ["metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


# -- Dask teardown ----------------------------------------------------------------------------
def test_a_malformed_dask_address_is_one_line_without_teardown_noise(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dualpipe_sim", "sweep", QUICK, "--grid", "pipeline.stages=4", "--dask-scheduler",
         "foo", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --dask-scheduler: foo: not a scheduler address (missing port number")
    assert proc.stderr.count("\n") == 1 and "Exception ignored" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


# -- numbers for people -----------------------------------------------------------------------
def test_compare_and_titles_use_fixed_notation_and_say_what_is_summed():
    s = scenario.load(QUICK, ["costs.forward=1000", "costs.backward=2000", "costs.weight=1000",
                              "costs.overlapped=2500", "pipeline.stages=4", "pipeline.microbatches=8"])
    result = compare.compare(s, ["1f1b", "dualpipe"])
    text = compare.report(result) + compare.markdown(result, "`q`")
    assert "e+" not in text
    assert "exposed comm, sum over ranks (ms)" in text and "sum over ranks" in compare.markdown(result, "`q`")
    # 1F1B, S = 4, M = 8, F = 1000, B = 2000, p2p 0.05: (M + S - 1)(F + B) plus the P2P hops.
    m = result.results[0].metrics
    assert 33_000 < m.makespan < 33_001 and " 33,001 " in compare.report(result)
    assert gantt_title(m).endswith(f"makespan {m.makespan:,.0f} ms")
    assert " 8 GB " in compare.report(result)  # 1F1B rank 0 holds S = 4 activations of 2e9 bytes, decimal GB


def test_run_table_has_no_python_exponents(tmp_path, capsys):
    assert main(["run", QUICK, "--set", "costs.forward=1e4", "--set", "costs.backward=2e4", "--set",
                 "costs.weight=1e4", "--set", "costs.overlapped=2.5e4", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "e+" not in out and "makespan " in out and " ms" in out


# -- warnings, not errors ---------------------------------------------------------------------
def test_a_pair_faster_than_either_half_warns_and_runs(tmp_path, capsys):
    assert main(["run", QUICK, "--set", "costs.overlapped=0.1", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: costs.overlapped: 0.1 at stage 0 is less than the longer half alone, "
                          "max(F, B) = 2") and err.count("\n") == 1, err
    assert (tmp_path / "o" / "metrics.json").exists()


def test_shipped_scenarios_raise_no_warning():
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        assert scenario.oddities(scenario.load(path)) == [], path


def test_repeat_without_jitter_warns_and_json_carries_the_percentiles(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", QUICK, "--repeat", "3", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("warning: --repeat 3: the scenario has no costs.jitter (or its cv is 0), so every seed "
                            "gives the same result\n")
    doc = json.loads(captured.out)
    first = json.loads((out / "metrics.json").read_text())
    assert "repeat" not in first and {k: v for k, v in doc.items() if k != "repeat"} == first
    assert doc["repeat"]["summary"]["makespan"]["p50"] == first["makespan"] == doc["repeat"]["summary"]["makespan"]["max"]
    assert doc["repeat"] == json.loads((out / "repeat.json").read_text())


def test_repeat_with_jitter_does_not_warn(tmp_path, capsys):
    assert main(["run", QUICK, "--repeat", "2", "--set", 'costs.jitter={distribution="lognormal",cv=0.1}',
                 "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""


# -- hints ------------------------------------------------------------------------------------
def test_a_byte_order_mark_reads(tmp_path):
    plain = Path(QUICK).read_text()
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.encode())
    assert scenario.load(bom) == scenario.load(QUICK)


@pytest.mark.parametrize("key,hint", [("pipeline.microbatch", "pipeline.microbatches"),
                                      ("pipeline.chunks", "pipeline.chunks_per_rank"),
                                      ("costs.overlaped", "costs.overlapped"),
                                      ("comm.p2pmode", "comm.p2p_mode")])
def test_a_near_miss_key_gets_did_you_mean(key, hint, capsys):
    assert main(["run", QUICK, "--set", f"{key}=3"]) == 2
    one_error_line(capsys, f"error: {key}: unknown key; did you mean {hint}?")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    from dualpipe_sim import __version__

    assert capsys.readouterr().out == f"dualpipe-sim {__version__}\n"


def test_a_pair_slower_than_its_halves_one_after_the_other_warns_and_runs(tmp_path, capsys):
    # quickstart: F = 1, B = 2 per stage, so F + B = 3; a pair of 3 is legal and quiet, 3.5 is odd.
    assert main(["run", QUICK, "--set", "costs.overlapped=3", "--out", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["run", QUICK, "--set", "costs.overlapped=3.5", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert err == ("warning: costs.overlapped: 3.5 at stage 0 is more than F + B = 3, the two halves one after the "
                   "other: overlapping them would slow the pair down (expected between max(F, B) = 2 and F + B)\n")
