"""Bring your own schedule: PyTorch action strings <-> Schedule, and replaying files.

The files in tests/data/ were written by hand; the timings asserted for them were
worked out by hand (F = 1, B = 2, an overlapped pair 2.5, no communication) and
are spelled out next to each test.
"""

import json
from pathlib import Path

import pytest

from dualpipe_sim.schedules import registry
from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.actions import detect_format, format_actions, parse_actions
from dualpipe_sim.cli import main
from dualpipe_sim.schedules.ir import FB, Op, ScheduleError
from dualpipe_sim.outputs.files import metrics_json

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")  # F = 1, B = 2, W = 1, overlapped pair 2.5
DATA = ROOT / "tests" / "data"

# Shapes tried for every registered family; each family keeps the ones its check accepts.
SHAPES = [(s, m) for s in (1, 2, 3, 4, 6, 8) for m in (1, 2, 4, 6, 8, 12, 16, 24)]


def registered_schedules():
    for name in registry.families():
        options = {"chunks_per_rank": 2} if "chunks_per_rank" in registry.get(name).options else {}
        for variant in ([{}, options, {"chunks_per_rank": 3}] if options else [{}]):
            for stages, microbatches in SHAPES:
                try:
                    yield name, registry.build(name, stages, microbatches, **variant)
                except ScheduleError:
                    continue  # a shape this family does not take


def test_round_trip_every_registered_schedule():
    built: dict[str, int] = {}
    for name, schedule in registered_schedules():
        text = format_actions(schedule)
        back = parse_actions(text)
        assert back == schedule, name  # Schedule -> actions -> Schedule (name, shape and every rank's order)
        assert format_actions(back) == text, name  # actions -> Schedule -> actions
        assert len(text.splitlines()) == 1 + schedule.num_ranks  # header + one line per rank
        # The `schedule --format text` form (with "rank k:" prefixes) reads too.
        assert parse_actions(schedule.to_text()).ranks == schedule.ranks
        built[name] = built.get(name, 0) + 1
    assert set(built) == set(registry.families())
    assert all(n >= 3 for n in built.values()), built  # several shapes each


def test_pytorch_spelling_of_ops_and_pairs():
    s = parse_actions("0F0 1F0 0I0 0W0 (0F7;3B2)OVERLAP_F_B 2B1@1 (1F4@1;2I3)OVERLAP_F_B")
    assert s.ranks[0] == (
        Op("F", 0, 0), Op("F", 0, 1), Op("I", 0, 0), Op("W", 0, 0),
        FB(Op("F", 7, 0), Op("B", 2, 3)), Op("B", 1, 2, 1), FB(Op("F", 4, 1, 1), Op("I", 3, 2)),
    )
    # No header: name "custom", stages and micro-batches 1 + the largest ids seen.
    assert (s.name, s.stages, s.microbatches) == ("custom", 4, 8)


def test_csv_cells_idle_steps_and_comm_actions_are_skipped():
    # PyTorch's _dump_csv writes commas and empty cells for idle steps; a lowered
    # (compute + comms) schedule also carries SEND/RECV/UNSHARD/... actions.
    s = parse_actions("0UNSHARD,0F0,0SEND_F0,,0RECV_B0,0B0,None,0REDUCE_GRAD\n1RECV_F0 1F0 1B0 1SEND_B0\n")
    assert s.ranks == ((Op("F", 0, 0), Op("B", 0, 0)), (Op("F", 0, 1), Op("B", 0, 1)))
    assert s.meta["ignored"] == {"UNSHARD": 1, "SEND_F": 1, "RECV_B": 1, "REDUCE_GRAD": 1, "RECV_F": 1, "SEND_B": 1}


def test_detect_format_by_content():
    assert detect_format('  {"ranks": []}') == "json"
    assert detect_format("[1, 2]") == "json"
    assert detect_format("# a comment\n0F0 0B0\n") == "actions"
    assert detect_format("rank 0: 0F0 0B0") == "actions"


def run_file(tmp_path, capsys, path, stages, *extra):
    out = tmp_path / "out"
    args = ["run", QUICK, "--set", f"pipeline.stages={stages}", "--set", "comm.p2p=0",
            "--schedule-file", str(path), "--out", str(out), *extra]
    assert main(args) == 0
    capsys.readouterr()
    return json.loads((out / "metrics.json").read_text())


def column(metrics, key):
    return [r[key] for r in metrics["per_rank"]]


def test_hand_written_1f1b_replays(tmp_path, capsys):
    # Rank 0: F0 0-1, F1 1-2, B0 4-6 (gradient from rank 1 at 4), F2 6-7, B1 7-9, B2 10-12.
    # Rank 1: F0 1-2, B0 2-4, F1 4-5, B1 5-7, F2 7-8, B2 8-10.  Makespan 12 = (m + p - 1)(F + B).
    path = DATA / "1f1b-2ranks.txt"
    m = run_file(tmp_path, capsys, path, 2)
    assert (m["schedule"], m["stages"], m["microbatches"], m["ranks"]) == ("custom", 2, 3, 2)
    assert m["makespan"] == 12
    assert column(m, "busy") == [9, 9] and column(m, "idle") == [3, 3]
    assert column(m, "peak_activation") == [2, 1]
    # The hand-written order is textbook 1F1B, so it equals the generator's.
    assert parse_actions(path.read_text()).ranks == registry.build("1f1b", 2, 3).ranks


def test_hand_written_v_layout_replays(tmp_path, capsys):
    # Rank 0 holds stages 0 and 3, rank 1 stages 1 and 2 (read off where the ops are).
    # Rank 0: 0F0 0-1, 0F1 1-2, 3F0 4-5, 3B0 5-7, 3F1 7-8, 3B1 8-10, 0B0 11-13, 0B1 15-17.
    # Rank 1: 1F0 1-2, 1F1 2-3, 2F0 3-4, 2F1 4-5, 2B0 7-9, 1B0 9-11, 2B1 11-13, 1B1 13-15.
    path = DATA / "v-4stages-2ranks.txt"
    assert parse_actions(path.read_text()).stages_on_rank() == [[0, 3], [1, 2]]
    m = run_file(tmp_path, capsys, path, 4)
    assert (m["schedule"], m["stages"], m["microbatches"], m["ranks"]) == ("hand-v", 4, 2, 2)
    assert m["makespan"] == 17
    assert column(m, "busy") == [12, 12] and column(m, "idle") == [5, 5]
    assert column(m, "parameter_copies") == [2, 2]
    assert column(m, "peak_activation") == [3, 4]


def test_hand_written_overlapped_pair_replays(tmp_path, capsys):
    # Rank 1: 1F0 1-2, (1F1;1B0) 2-4.5 (waits for 0F1 at 2), 1B1 4.5-6.5.
    # Rank 0: 0F0 0-1, 0F1 1-2, 0B0 4.5-6.5, 0B1 6.5-8.5.
    path = DATA / "overlap-2ranks.txt"
    assert parse_actions(path.read_text()).ranks[1][1] == FB(Op("F", 1, 1), Op("B", 0, 1))
    m = run_file(tmp_path, capsys, path, 2)
    assert m["makespan"] == 8.5
    assert column(m, "busy") == [6, 5.5]


def test_direction_suffix_replays(tmp_path, capsys):
    # Micro-batch 0 enters at rank 0, micro-batch 1 (@1) at rank 1; stage ids are
    # positions along each micro-batch's own path.  Both ranks: F 0-1, F 1-2, B 2-4,
    # then the other direction's B 4-6 once its gradient arrives.  Makespan 6.
    path = tmp_path / "bidi.txt"
    path.write_text("0F0 1F1@1 1B1@1 0B0\n0F1@1 1F0 1B0 0B1@1\n")
    assert parse_actions(path.read_text()).placement() == {(0, 0): 0, (1, 1): 0, (1, 0): 1, (0, 1): 1}
    m = run_file(tmp_path, capsys, path, 2)
    assert m["makespan"] == 6 and column(m, "busy") == [6, 6]


@pytest.mark.parametrize("name,stages,microbatches", [("dualpipe", 4, 8), ("zbv", 4, 4), ("chimera", 4, 8)])
def test_schedule_format_actions_replays_like_the_registry(tmp_path, capsys, name, stages, microbatches):
    shape = ["--stages", str(stages), "--microbatches", str(microbatches)]
    assert main(["schedule", name, *shape, "--format", "actions"]) == 0
    path = tmp_path / "printed.sched"  # no telling extension: the content decides
    path.write_text(capsys.readouterr().out)
    own = run_file(tmp_path, capsys, path, stages)
    overrides = [f"pipeline.schedule={name}", f"pipeline.stages={stages}", f"pipeline.microbatches={microbatches}"]
    reg = json.loads(metrics_json(simulation.run(scenario.load(QUICK, [*overrides, "comm.p2p=0"])).metrics))
    assert own["schedule"] == name
    assert own["makespan"] == reg["makespan"] and own["per_rank"] == reg["per_rank"]


def test_json_in_a_txt_file_and_actions_in_a_json_file(tmp_path, capsys):
    text = (DATA / "1f1b-2ranks.txt").read_text()
    as_json = tmp_path / "a.txt"
    as_json.write_text(json.dumps(parse_actions(text).to_json()))
    as_actions = tmp_path / "b.json"
    as_actions.write_text(text)
    (tmp_path / "x").mkdir()
    assert run_file(tmp_path / "x", capsys, as_json, 2)["makespan"] == 12
    assert run_file(tmp_path, capsys, as_actions, 2)["makespan"] == 12


def test_comm_actions_give_a_note_on_stderr_only(tmp_path, capsys):
    path = tmp_path / "lowered.txt"
    path.write_text("0F0 0SEND_F0 0RECV_B0 0B0\n1RECV_F0 1F0 1B0 1SEND_B0\n")
    out = tmp_path / "out"
    args = ["run", QUICK, "--set", "pipeline.stages=2", "--schedule-file", str(path), "--out", str(out), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["microbatches"] == 1  # stdout is still exactly metrics.json
    assert captured.err.startswith("note: ") and captured.err.count("\n") == 1
    assert "skipped 4 communication actions" in captured.err and "1 SEND_F" in captured.err


ONE_F_ONE_B = "0F0 0F1 0B0 0B1\n1F0 1B0 1F1 1B1\n"

BAD_FILES = [
    ("0F0 0X1 0B0\n1F0 1B0\n", ["line 1 (rank 0)", "bad token '0X1'", "like 0F1"]),
    ("# comment\n\n0F0 0B0\n1F0 1B0 F1\n", ["line 4 (rank 1)", "bad token 'F1'"]),
    ("0F0 0F1 0B0 0B1\n1F0 (1B0;1F1)OVERLAP_F_B 1B1\n", ["line 2 (rank 1)", "forward first"]),
    ("0F0 0B0@2\n1F0 1B0\n", ["line 1 (rank 0)", "'0B0@2'", "direction must be @0 or @1"]),
    ("0F0 0F1 0B0\n1F0 1B0 1F1 1B1\n", ["missing op 0B1"]),
    ("0F0 0F1 0F1 0B0 0B1\n1F0 1B0 1F1 1B1\n", ["0F1 appears twice"]),
    ("0F0 0B1 0F1 0B0\n1F0 1B0 1F1 1B1\n",
     ["schedule deadlocks", "rank 0 is stuck at 0B1 waiting for 0F1, the gradient from 1B1", "rank 1 is stuck at 1F1"]),
    ("0F0 0B0 0F1 0B1\n1F0 1B0 0F2\n", ["stage 0 (direction 0) appears on rank 0 and on rank 1"]),
    ("# dualpipe-sim: stages=3\n" + ONE_F_ONE_B, ["missing op 2F0"]),
    ("# dualpipe-sim: stages=two\n" + ONE_F_ONE_B, ["line 1", "header stages=two: must be a whole number >= 1"]),
    ("# dualpipe-sim: chunks=2\n" + ONE_F_ONE_B, ["header item 'chunks=2' is not KEY=VALUE"]),
    (ONE_F_ONE_B + "# dualpipe-sim: stages=2\n", ["line 3", "header must come once, before the rank lines"]),
    ("rank 0: 0F0 0F1 0B0 0B1\nrank 2: 1F0 1B0 1F1 1B1\n", ["line 2 (rank 1)", "says 'rank 2:'"]),
    ("# nothing but a comment\n\n", ["no rank lines"]),
    ('{"ranks": [[{"kind": "F"', ["not valid JSON"]),
]


@pytest.mark.parametrize("content,fragments", BAD_FILES)
def test_bad_file_one_line_exit_2_nothing_written(tmp_path, capsys, content, fragments):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    out = tmp_path / "out"
    assert main(["run", QUICK, "--set", "pipeline.stages=2", "--schedule-file", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"error: --schedule-file {path}: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # no output folder, no staging folder


def test_undecodable_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"0F0 \xff\xfe 0B0\n")
    assert main(["run", QUICK, "--schedule-file", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and err.count("\n") == 1
