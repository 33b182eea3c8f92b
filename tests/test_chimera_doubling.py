"""Chimera with forward doubling (issue 24), and direct concatenation rechecked, against the
authors' per-worker loops (Shigangli/Chimera at 7be5274, main_with_runtime_forward_doubling.py and
main_with_runtime_direct.py under chimera/chimera_bert/bert/) worked by hand.

The loops, on the worker whose down stage is r (h = D/2; P = the direction whose stage on this
worker is < h: down when r < h, up otherwise; Q the other one; a = h - r for r < h, r - h + 1
otherwise; b = h - a; c = b + h).  Each run_forward/run_backward of a direction takes that
direction's next micro-batch (the runtime pops the oldest stashed activation).

    direct, per basic unit u:        doubling, per pair of units t:
      u = 0: a x F_P                   t = 0: a x (F_P F_P)
      u > 0: a x (B_P F_P)             t > 0: a x (B_P F_P F_P)
      b x (F_Q F_P)                    b x (F_Q F_Q F_P F_P)
      a x (F_Q B_Q)                    a x (F_Q F_Q B_Q)
      b x (B_P B_Q)                    c x (B_P B_Q)
    tail: a x B_P                    tail: a x B_P

Notation below: "F3" is a forward of micro-batch 3 going down (direction 0), "f3" going up
(direction 1); B/b backwards.  The stage follows from the worker: down stage r, up stage D-1-r.
Micro-batch ids: unit u holds uD .. uD+h-1 (down) and uD+h .. uD+D-1 (up).
"""

from __future__ import annotations

import json

import pytest

from dualpipe_sim import compare, simulation
from dualpipe_sim.schedules import registry
from dualpipe_sim.cli import main
from dualpipe_sim.schedules.ir import Op, ScheduleError
from dualpipe_sim.inputs.scenario import from_dict


def ops(text: str, rank: int, stages: int) -> tuple[Op, ...]:
    out = []
    for tok in text.replace("|", " ").split():
        d = 0 if tok[0].isupper() else 1
        out.append(Op(tok[0].upper(), int(tok[1:]), rank if d == 0 else stages - 1 - rank, d))
    return tuple(out)


# -- (D, N) = (4, 8), doubling: h = 2, one doubling step; down ids 0 1 4 5, up ids 2 3 6 7 -------
DOUBLING_4_8 = [
    # r0: P = down, a = 2, b = 0, c = 2.  a x FF | (no FFFF) | a x (f f b) | c x (B b) | a x B
    "F0 F1 F4 F5 | f2 f3 b2 f6 f7 b3 | B0 b6 B1 b7 | B4 B5",
    # r1: P = down, a = 1, b = 1, c = 3
    "F0 F1 | f2 f3 F4 F5 | f6 f7 b2 | B0 b3 B1 b6 B4 b7 | B5",
    # r2: P = up, a = 1, b = 1, c = 3 (Q = down)
    "f2 f3 | F0 F1 f6 f7 | F4 F5 B0 | b2 B1 b3 B4 b6 B5 | b7",
    # r3: P = up, a = 2, b = 0, c = 2
    "f2 f3 f6 f7 | F0 F1 B0 F4 F5 B1 | b2 B4 b3 B5 | b6 b7",
]

# -- (8, 16), doubling: h = 4, one step; down ids 0-3, 8-11, up ids 4-7, 12-15 ------------------
DOUBLING_8_16 = [
    # r0: a = 4, b = 0, c = 4
    "F0 F1 F2 F3 F8 F9 F10 F11 | f4 f5 b4 f6 f7 b5 f12 f13 b6 f14 f15 b7 | B0 b12 B1 b13 B2 b14 B3 b15 | B8 B9 B10 B11",
    # r1: a = 3, b = 1, c = 5
    "F0 F1 F2 F3 F8 F9 | f4 f5 F10 F11 | f6 f7 b4 f12 f13 b5 f14 f15 b6 | B0 b7 B1 b12 B2 b13 B3 b14 B8 b15 | B9 B10 B11",
    # r2: a = 2, b = 2, c = 6
    "F0 F1 F2 F3 | f4 f5 F8 F9 f6 f7 F10 F11 | f12 f13 b4 f14 f15 b5 | B0 b6 B1 b7 B2 b12 B3 b13 B8 b14 B9 b15 | B10 B11",
    # r3: a = 1, b = 3, c = 7
    "F0 F1 | f4 f5 F2 F3 f6 f7 F8 F9 f12 f13 F10 F11 | f14 f15 b4 | B0 b5 B1 b6 B2 b7 B3 b12 B8 b13 B9 b14 B10 b15 | B11",
    # r4: P = up, a = 1, b = 3, c = 7
    "f4 f5 | F0 F1 f6 f7 F2 F3 f12 f13 F8 F9 f14 f15 | F10 F11 B0 | b4 B1 b5 B2 b6 B3 b7 B8 b12 B9 b13 B10 b14 B11 | b15",
    # r5: a = 2, b = 2, c = 6
    "f4 f5 f6 f7 | F0 F1 f12 f13 F2 F3 f14 f15 | F8 F9 B0 F10 F11 B1 | b4 B2 b5 B3 b6 B8 b7 B9 b12 B10 b13 B11 | b14 b15",
    # r6: a = 3, b = 1, c = 5
    "f4 f5 f6 f7 f12 f13 | F0 F1 f14 f15 | F2 F3 B0 F8 F9 B1 F10 F11 B2 | b4 B3 b5 B8 b6 B9 b7 B10 b12 B11 | b13 b14 b15",
    # r7: a = 4, b = 0, c = 4
    "f4 f5 f6 f7 f12 f13 f14 f15 | F0 F1 B0 F2 F3 B1 F8 F9 B2 F10 F11 B3 | b4 B8 b5 B9 b6 B10 b7 B11 | b12 b13 b14 b15",
]

# -- direct concatenation, (4, 8): two units; u = 0 | u = 1 | tail -----------------------------
DIRECT_4_8 = [
    "F0 F1 f2 b2 f3 b3 | B0 F4 B1 F5 f6 b6 f7 b7 | B4 B5",  # a = 2, b = 0
    "F0 f2 F1 f3 b2 B0 b3 | B1 F4 f6 F5 f7 b6 B4 b7 | B5",  # a = 1, b = 1
    "f2 F0 f3 F1 B0 b2 B1 | b3 f6 F4 f7 F5 B4 b6 B5 | b7",  # P = up, a = 1, b = 1
    "f2 f3 F0 B0 F1 B1 | b2 f6 b3 f7 F4 B4 F5 B5 | b6 b7",  # P = up, a = 2, b = 0
]

# -- direct concatenation, (8, 16): two units (0-7, 8-15) ---------------------------------------
DIRECT_8_16 = [
    "F0 F1 F2 F3 f4 b4 f5 b5 f6 b6 f7 b7 | B0 F8 B1 F9 B2 F10 B3 F11 f12 b12 f13 b13 f14 b14 f15 b15 | B8 B9 B10 B11",
    "F0 F1 F2 f4 F3 f5 b4 f6 b5 f7 b6 B0 b7 | B1 F8 B2 F9 B3 F10 f12 F11 f13 b12 f14 b13 f15 b14 B8 b15 | B9 B10 B11",
    "F0 F1 f4 F2 f5 F3 f6 b4 f7 b5 B0 b6 B1 b7 | B2 F8 B3 F9 f12 F10 f13 F11 f14 b12 f15 b13 B8 b14 B9 b15 | B10 B11",
    "F0 f4 F1 f5 F2 f6 F3 f7 b4 B0 b5 B1 b6 B2 b7 | B3 F8 f12 F9 f13 F10 f14 F11 f15 b12 B8 b13 B9 b14 B10 b15 | B11",
    "f4 F0 f5 F1 f6 F2 f7 F3 B0 b4 B1 b5 B2 b6 B3 | b7 f12 F8 f13 F9 f14 F10 f15 F11 B8 b12 B9 b13 B10 b14 B11 | b15",
    "f4 f5 F0 f6 F1 f7 F2 B0 F3 B1 b4 B2 b5 B3 | b6 f12 b7 f13 F8 f14 F9 f15 F10 B8 F11 B9 b12 B10 b13 B11 | b14 b15",
    "f4 f5 f6 F0 f7 F1 B0 F2 B1 F3 B2 b4 B3 | b5 f12 b6 f13 b7 f14 F8 f15 F9 B8 F10 B9 F11 B10 b12 B11 | b13 b14 b15",
    "f4 f5 f6 f7 F0 B0 F1 B1 F2 B2 F3 B3 | b4 f12 b5 f13 b6 f14 b7 f15 F8 B8 F9 B9 F10 B10 F11 B11 | b12 b13 b14 b15",
]


@pytest.mark.parametrize(
    "name,D,N,expected",
    [
        ("chimera-doubling", 4, 8, DOUBLING_4_8),
        ("chimera-doubling", 8, 16, DOUBLING_8_16),
        ("chimera", 4, 8, DIRECT_4_8),
        ("chimera", 8, 16, DIRECT_8_16),
    ],
)
def test_every_worker_runs_the_authors_order(name, D, N, expected):
    schedule = registry.build(name, D, N)
    assert len(schedule.ranks) == D
    for r in range(D):
        assert schedule.ranks[r] == ops(expected[r], r, D), f"{name} ({D}, {N}) worker {r}"


def test_later_doubling_steps_open_with_a_backward_per_forward_pair():
    # (4, 16): two doubling steps.  Worker 0 (a = 2, b = 0, c = 2): step 0 as in (4, 8) with down ids
    # 0 1 4 5 and up ids 2 3 6 7; step 1 opens with a x (B F F) on down ids 8 9 12 13, the two
    # backwards still owed from step 0 (B4, B5) going first; the tail then owes B12 B13.
    expected = ("F0 F1 F4 F5 | f2 f3 b2 f6 f7 b3 | B0 b6 B1 b7"
                " | B4 F8 F9 B5 F12 F13 | f10 f11 b10 f14 f15 b11 | B8 b14 B9 b15 | B12 B13")  # fmt: skip
    assert registry.build("chimera-doubling", 4, 16).ranks[0] == ops(expected, 0, 4)


@pytest.mark.parametrize("D,N", [(4, 4), (4, 12), (6, 18), (8, 8), (8, 24)])
def test_microbatches_must_fill_pairs_of_basic_units(D, N):
    with pytest.raises(ScheduleError, match=rf"^pipeline.microbatches: chimera-doubling needs a positive multiple of 2 x the {D} stages"):
        registry.build("chimera-doubling", D, N)


def test_cli_refuses_a_bad_shape_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "scenarios/quickstart.toml", "--set", "pipeline.schedule=chimera-doubling",
            "--set", "pipeline.stages=4", "--set", "pipeline.microbatches=12", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "multiple of 2 x the 4 stages = 8" in err
    assert not out.exists()


def _run(D, N, name="chimera-doubling", **memory):
    data = {"pipeline": {"schedule": name, "stages": D, "microbatches": N},
            "costs": {"forward": 1.0, "backward": 2.0}, "memory": memory}  # fmt: skip
    return simulation.run(from_dict(data))


def test_d4_n8_timeline_worked_by_hand():
    # F = 1, B = 2, no recompute, orders DOUBLING_4_8.  Worked op by op (start-end):
    # r0: F0 0-1 F1 1-2 F4 2-3 F5 3-4 f2 4-5 f3 5-6 b2 6-8 f6 8-9 f7 9-10 b3 10-12 B0 13-15 b6 15-17
    #     B1 17-19 b7 19-21 B4 21-23 B5 25-27
    # r3: f2 0-1 f3 1-2 f6 2-3 f7 3-4 F0 4-5 F1 5-6 B0 6-8 F4 8-9 F5 9-10 B1 10-12 b2 13-15 B4 15-17
    #     b3 17-19 B5 19-21 b6 21-23 b7 25-27
    # r1 and r2 mirror each other and end at 25 (r1: B5 23-25, r2: b7 23-25) after starting at 1.
    # So the makespan is 27 = N(F + B) + (D - 2)(F + B)/2 and every worker idles 27 - 24 = 3.
    m = _run(4, 8, recompute="none").metrics
    assert m.makespan == 27
    assert [r.idle for r in m.per_rank] == [3, 3, 3, 3]
    assert m.analytic.bubble == 3  # the closed form, inside its range (F <= B <= 2F)


def test_activation_memory_per_worker_is_the_hand_count():
    # Allocated at a forward's start, freed at its backward's end.  Walking DOUBLING_4_8:
    # r0 F0 F1 F4 F5 f2 f3 -> 6, b2 -> 5, f6 f7 -> 7 (most); r1 F0 F1 f2 f3 F4 F5 f6 f7 -> 8;
    # r2 mirrors r1 (8), r3 mirrors r0 (7).
    for memory in ({"recompute": "none"}, {}):  # the default recompute keeps the count
        m = _run(4, 8, **memory).metrics
        assert [r.peak_activation for r in m.per_rank] == [7, 8, 8, 7]
        assert m.analytic.peak_activation == 8
    # Bytes, with stage s holding s + 1 bytes per micro-batch: r0 holds down stage 0 (1) and up
    # stage 3 (4): F0 F1 F4 F5 -> 4, f2 f3 -> 12, b2 -> 8, f6 f7 -> 16.  r1 (down 1: 2, up 2: 3):
    # 4 + 6 + 4 + 6 = 20; r2 mirrors r1, r3 mirrors r0.
    m = _run(4, 8, activation=[1.0, 2.0, 3.0, 4.0]).metrics
    assert [r.peak_activation_bytes for r in m.per_rank] == [16, 20, 20, 16]


def test_doubling_beats_direct_concatenation_at_8_by_64():
    # B = 2F, no recompute cost: direct concatenation idles between units, 1F1B pays its
    # (p-1)(F+B) = 21 once; doubling idles (D-2)(F+B)/2 = 9 per worker.
    doubling = _run(8, 64, recompute="none").metrics
    direct = _run(8, 64, "chimera", recompute="none").metrics
    one_f_one_b = _run(8, 64, "1f1b", recompute="none").metrics
    assert doubling.makespan == 64 * 3 + 9
    assert doubling.bubble_ratio == pytest.approx(9 / 201)
    assert doubling.bubble_ratio < direct.bubble_ratio
    assert doubling.bubble_ratio <= one_f_one_b.bubble_ratio


@pytest.mark.parametrize("D,N", [(4, 8), (4, 24), (6, 24), (8, 32)])
@pytest.mark.parametrize("B", [1.0, 1.5, 2.0, 3.0, 4.0])
def test_doubling_is_never_slower_than_direct_at_equal_costs(D, N, B):
    from dualpipe_sim.inputs.costs import CostModel
    from dualpipe_sim.simulation import simulate
    from dualpipe_sim.readers.metrics import compute_metrics

    costs = CostModel.uniform(D, 1.0, B)
    doubling = compute_metrics(simulate(registry.build("chimera-doubling", D, N), costs)).makespan
    direct = compute_metrics(simulate(registry.build("chimera", D, N), costs)).makespan
    assert doubling <= direct + 1e-9
    if B == 1.0:  # both idle (D - 2) F: the same makespan N(F + B) + (D - 2) F
        assert doubling == direct == N * 2 + (D - 2)


def test_default_recompute_is_full_and_costs_a_forward_per_backward():
    # The authors' doubling scripts pass --recompute_step: run_backward re-runs the stage forward.
    costs = {"forward": 1.0, "backward": 2.0}
    for name, policy in (("chimera-doubling", "full"), ("chimera", "none")):
        assert from_dict({"pipeline": {"schedule": name, "stages": 4, "microbatches": 8}, "costs": costs}).recompute() == policy
    default = _run(4, 8)
    assert default.costs.backward == (3.0,) * 4 and default.costs.weight == (1.0,) * 4  # W = typed B / 2
    assert default.metrics.analytic.bubble is None and "B > 2F" in default.metrics.analytic.reason
    # Given by hand, it is what the scenario says, for any schedule.
    assert _run(4, 8, recompute="none").costs.backward == (2.0,) * 4
    assert _run(4, 8, "1f1b", recompute="full").costs.backward == (3.0,) * 4


def test_model_scenarios_derive_memory_with_the_default_policy():
    from dualpipe_sim.model import derive

    base = {"pipeline": {"schedule": "chimera-doubling", "stages": 2, "microbatches": 4},
            "model": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 1000,
                      "num_attention_heads": 4, "intermediate_size": 512, "seq_length": 128},
            "costs": {"forward": 1.0, "backward": 2.0}}  # fmt: skip
    full = from_dict(base)
    none = from_dict({**base, "memory": {"recompute": "none"}})
    assert derive.setup(full).policy == "full" and derive.setup(none).policy == "none"
    # full keeps each layer's input (2 s b h bytes in BF16) instead of its whole activation
    assert full.cost_model().activation_bytes[0] < none.cost_model().activation_bytes[0]


def test_closed_form_range():
    from dualpipe_sim.inputs.costs import CostModel

    for F, B, given in [(1.0, 1.0, True), (1.0, 1.5, True), (1.0, 2.0, True), (1.0, 0.9, False), (1.0, 2.1, False)]:
        a = registry.analytic("chimera-doubling", 6, 24, CostModel.uniform(6, F, B))
        assert (a["bubble"] is not None) == given
        if given:
            assert a["bubble"] == pytest.approx(4 * (F + B) / 2)


def test_compare_shows_the_faster_chimera_and_says_which(tmp_path):
    scenario = from_dict({"pipeline": {"schedule": "1f1b", "stages": 8, "microbatches": 64},
                          "costs": {"forward": 1.0, "backward": 2.0}, "memory": {"recompute": "none"}})  # fmt: skip
    result = compare.compare(scenario, ["1f1b", "chimera"])
    assert [r.metrics.schedule for r in result.results] == ["1f1b", "chimera-doubling"]
    assert result.notes == ("chimera: forward doubling shown (chimera-doubling), the faster variant here: "
                            "direct concatenation 246 ms, forward doubling 201 ms (memory.recompute none)",)  # fmt: skip
    assert result.notes[0] in compare.report(result) and result.notes[0] in compare.markdown(result, "x")
    # With the authors' recompute (the default), the doubled run pays B + F = 3 per backward: at least
    # N(F + 3F) = 256 of work per worker, against direct concatenation's 246 without: direct is shown.
    plain = from_dict({"pipeline": {"schedule": "1f1b", "stages": 8, "microbatches": 64},
                       "costs": {"forward": 1.0, "backward": 2.0}})  # fmt: skip
    chosen = compare.compare(plain, ["chimera"])
    assert chosen.results[0].metrics.schedule == "chimera"
    assert chosen.notes[0].startswith("chimera: direct concatenation shown") and "its default" in chosen.notes[0]
    # B = F: no pick, no note; both listed: both shown.
    same = from_dict({"pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8}, "costs": {"forward": 1.0, "backward": 1.0}})
    assert compare.compare(same, ["chimera"]).notes == ()
    both = compare.compare(scenario, ["chimera", "chimera-doubling"])
    assert [r.metrics.schedule for r in both.results] == ["chimera", "chimera-doubling"] and both.notes == ()


def test_help_and_cli_compare_say_which_variant(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "chimera-doubling" in " ".join(capsys.readouterr().out.split())
    args = ["compare", "scenarios/quickstart.toml", "--schedules", "chimera", "--set", "pipeline.microbatches=16",
            "--set", "memory.recompute=none", "--plots", "none", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| chimera-doubling |" in out and "chimera: forward doubling shown" in out
    assert "chimera: forward doubling shown" in (tmp_path / "o" / "compare.md").read_text()


def test_run_says_when_the_default_recompute_applies(tmp_path, capsys):
    base = ["run", "scenarios/quickstart.toml", "--set", "pipeline.schedule=chimera-doubling",
            "--set", "pipeline.microbatches=16", "--plots", "none"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "memory.recompute full: chimera-doubling's default" in out
    # busy per rank = 16 F + 16 (B + F) = 16 + 48 with F = 1, B = 2
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["per_rank"][0]["busy"] == 64
    assert main([*base, "--set", "memory.recompute=none", "--out", str(tmp_path / "b")]) == 0
    assert "memory.recompute" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["per_rank"][0]["busy"] == 48


def test_schedule_verb_prints_it(capsys):
    assert main(["schedule", "chimera-doubling", "--stages", "4", "--microbatches", "8", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schedule"] == "chimera-doubling" and len(doc["ranks"]) == 4
