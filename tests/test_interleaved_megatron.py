"""pipeline.microbatch_group against Megatron-core's interleaved schedule.

The expected orders below were worked out by hand from Megatron-core's algorithm
(NVIDIA/Megatron-LM, megatron/core/pipeline_parallel/schedules.py:
``get_schedule_table``, ``get_pp_rank_microbatches`` and the three loops of
``forward_backward_pipelining_with_interleaving``), not copied from our generator:

* table: for each group start g = 0, N, 2N, ... < M, the group is micro-batches
  g .. min(g + N, M) - 1; the table lists (micro-batch, chunk) for chunk 0 over the
  group, then chunk 1 over the group, ... (so the last group is the remainder M % N);
* forward k runs the table's entry k; backward k runs the table's micro-batch k on
  chunk v - 1 - (the table's chunk k) (each chunk pops its inputs first in, first out);
* warm-up on rank r: 2 (p - 1 - r) + (v - 1) N forwards, plus one with
  ``overlap_moe_expert_parallel_comm``, capped at M v; then forward k + warm-up with
  backward k for the remaining steps; then the remaining backwards;
* chunk c of rank r is model stage c p + r.

Notation as in test_interleaved_torch.py: ``"0F0-4"`` is 0F0 0F1 0F2 0F3 0F4.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.cli import main
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.simulation import simulate
from dualpipe_sim.schedules.ir import ScheduleError
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.registry import analytic, build
from dualpipe_sim.schedules.interleaved import group_problem
from test_interleaved_torch import ops, pairs
from test_robust import QUICK, one_error_line

INTERLEAVED = ("interleaved-1f1b", "interleaved-1f1b-overlap")


def overlapped(forwards: str, backwards: str) -> list[str]:
    f, b = ops(forwards), ops(backwards)
    assert len(f) == len(b)
    return [f"({x};{y})OVERLAP_F_B" for x, y in zip(f, b)]


EXPECTED = {
    # p = 2, v = 2, M = 5, N = 3 (the example in Megatron-core's ModelParallelConfig docstring).
    # Groups [0-2], [3-4] (remainder 2 >= p).  Table: c0 mb0-2, c1 mb0-2, c0 mb3-4, c1 mb3-4.
    # Rank 0 (stages 0, 2): forwards 0F0-2 2F0-2 0F3-4 2F3-4; backwards 2B0-2 0B0-2 2B3-4 0B3-4.
    #   warm-up 2 (2 - 1 - 0) + 1 x 3 = 5: forwards 0..4; steady forwards 5..9 with backwards 0..4;
    #   cool-down backwards 5..9.
    # Rank 1 (stages 1, 3): warm-up 0 + 3 = 3; steady forwards 3..9 with backwards 0..6; then 7..9.
    ("interleaved-1f1b", 2, 2, 5, 3): [
        ops("0F0-2 2F0-1") + pairs("2F2 0F3-4 2F3-4", "2B0-2 0B0-1") + ops("0B2 2B3-4 0B3-4"),
        ops("1F0-2") + pairs("3F0-2 1F3-4 3F3-4", "3B0-2 1B0-2 3B3") + ops("3B4 1B3-4"),
    ],
    # p = 3, v = 2, M = 8, N = 4.  Groups [0-3], [4-7].  Table: c0 mb0-3, c1 mb0-3, c0 mb4-7, c1 mb4-7.
    # Warm-up 2 (2 - r) + 4 = 8, 6, 4 of 16; steady 8, 10, 12 pairs.
    # Rank r: forwards rF0-3 (3+r)F0-3 rF4-7 (3+r)F4-7; backwards (3+r)B0-3 rB0-3 (3+r)B4-7 rB4-7.
    ("interleaved-1f1b", 3, 2, 8, 4): [
        ops("0F0-3 3F0-3") + pairs("0F4-7 3F4-7", "3B0-3 0B0-3") + ops("3B4-7 0B4-7"),
        ops("1F0-3 4F0-1") + pairs("4F2-3 1F4-7 4F4-7", "4B0-3 1B0-3 4B4-5") + ops("4B6-7 1B4-7"),
        ops("2F0-3") + pairs("5F0-3 2F4-7 5F4-7", "5B0-3 2B0-3 5B4-7") + ops("2B4-7"),
    ],
    # p = 3, v = 3, M = 7, N = 4.  Groups [0-3], [4-6] (remainder 3 >= p).  Table: c0 mb0-3,
    # c1 mb0-3, c2 mb0-3, c0 mb4-6, c1 mb4-6, c2 mb4-6 (21 entries).  Warm-up 2 (2 - r) + 2 x 4
    # = 12, 10, 8; steady 9, 11, 13 pairs.  Rank r holds stages r, 3 + r, 6 + r; backwards walk the
    # chunks in reverse: (6+r)B0-3 (3+r)B0-3 rB0-3 (6+r)B4-6 (3+r)B4-6 rB4-6.
    ("interleaved-1f1b", 3, 3, 7, 4): [
        ops("0F0-3 3F0-3 6F0-3") + pairs("0F4-6 3F4-6 6F4-6", "6B0-3 3B0-3 0B0") + ops("0B1-3 6B4-6 3B4-6 0B4-6"),
        ops("1F0-3 4F0-3 7F0-1") + pairs("7F2-3 1F4-6 4F4-6 7F4-6", "7B0-3 4B0-3 1B0-2")
        + ops("1B3 7B4-6 4B4-6 1B4-6"),
        ops("2F0-3 5F0-3") + pairs("8F0-3 2F4-6 5F4-6 8F4-6", "8B0-3 5B0-3 2B0-3 8B4") + ops("8B5-6 5B4-6 2B4-6"),
    ],
    # The EP-overlapped schedule at p = 2, v = 2, M = 5, N = 3: the table above, warm-up one more
    # (overlap_moe_expert_parallel_comm): 6 and 4; each steady step is one overlapped pair.
    # Rank 0: forwards 0..5 alone; pairs (forward 6..9, backward 0..3); backwards 4..9 alone.
    ("interleaved-1f1b-overlap", 2, 2, 5, 3): [
        ops("0F0-2 2F0-2") + overlapped("0F3-4 2F3-4", "2B0-2 0B0") + ops("0B1-2 2B3-4 0B3-4"),
        ops("1F0-2 3F0") + overlapped("3F1-2 1F3-4 3F3-4", "3B0-2 1B0-2") + ops("3B3-4 1B3-4"),
    ],
}


@pytest.mark.parametrize("name,p,v,m,n", sorted(EXPECTED))
def test_same_per_rank_order_as_megatron_core(name, p, v, m, n):
    sched = build(name, p * v, m, chunks_per_rank=v, microbatch_group=n)
    assert [[str(a) for a in actions] for actions in sched.ranks] == EXPECTED[(name, p, v, m, n)]


@pytest.mark.parametrize("name", INTERLEAVED)
def test_group_of_ranks_is_todays_order(name):
    # Megatron-core's default N = p; wherever it accepts N = p (p divides M) the order must be the
    # one the key-less scenario has always run (torch's rounds of p), byte for byte.
    cases = 0
    for p in range(1, 7):
        for v in range(1, 5):
            for m in range(p, 5 * p + 1, p):
                assert build(name, p * v, m, chunks_per_rank=v, microbatch_group=p) == build(
                    name, p * v, m, chunks_per_rank=v
                ), (p, v, m)
                cases += 1
    assert cases == 6 * 4 * 5


def test_torchs_rounds_are_megatron_groups_of_the_round_size():
    # Every M >= p torch accepts (rounds R = M // p dividing M) makes R groups of M / R >= p, no
    # remainder: Megatron-core's table for N = M / R, and the warm-up (v - 1) x round + 2 (p - 1 - r)
    # is Megatron-core's for that N.  So the key-less order is Megatron-core's with N = M / R.
    cases = 0
    for p in range(1, 7):
        for v in range(1, 4):
            for m in range(p, 6 * p):
                rounds = m // p
                if m % rounds:
                    continue  # torch refuses this M
                assert build("interleaved-1f1b", p * v, m, chunks_per_rank=v) == build(
                    "interleaved-1f1b", p * v, m, chunks_per_rank=v, microbatch_group=m // rounds
                ), (p, v, m)
                cases += 1
    assert cases > 100
    # M = 13 on 4 ranks (torch refuses it): our rounds 5, 4, 4 are no Megatron-core grouping (its
    # groups are N, N, ..., M % N), so no N it accepts gives them.  13 % N for N = 4..13 is
    # 1, 3, 1, 6, 5, 4, 3, 2, 1, 0: it accepts N = 7, 8, 9 (remainder >= 4) and 13.
    ours = build("interleaved-1f1b", 8, 13, chunks_per_rank=2)
    accepted = [n for n in range(4, 14) if group_problem(4, 13, n) is None]
    assert accepted == [7, 8, 9, 13]
    assert all(ours != build("interleaved-1f1b", 8, 13, chunks_per_rank=2, microbatch_group=n) for n in accepted)


def test_without_the_key_the_order_is_unchanged():
    # The key-less scenario is test_interleaved_torch.py's torch order (hand-worked there), also where
    # Megatron-core refuses N = p (M = 10 on 4 ranks leaves a group of 2): no group is imposed.
    assert build("interleaved-1f1b", 8, 10, chunks_per_rank=2, microbatch_group=None) == build(
        "interleaved-1f1b", 8, 10, chunks_per_rank=2
    )
    with pytest.raises(ScheduleError, match="leaves a last group of 2"):
        build("interleaved-1f1b", 8, 10, chunks_per_rank=2, microbatch_group=4)


# --- closed forms: what N changes -------------------------------------------------------------------


def test_bubble_unchanged_and_peak_grows_by_v_minus_1_per_extra_group_member():
    # Any accepted N >= p: each rank idles (p - 1)(f + b) (the forward of a group's first micro-batch
    # comes back round the p ranks within the N >= p forwards of the group: no new wait without P2P
    # time); rank r's peak is its warm-up plus the steady forward, (v - 1) N + 2 (p - 1 - r) + 1,
    # capped at v M, so rank 0's is min((v - 1) N + 2p - 1, v M).
    rng = random.Random(22)
    checked = 0
    for p in range(1, 6):
        for v in range(1, 4):
            for m in range(p, 3 * p + 3):
                for n in range(p, m + 1):
                    if 0 < m % n < p:
                        continue  # Megatron-core refuses it (test below)
                    f, b = rng.choice([0.5, 1.0, 2.0]), rng.choice([0.5, 1.0, 2.0, 3.0])
                    costs = CostModel.uniform(p * v, forward=f, backward=b)
                    met = compute_metrics(simulate(build("interleaved-1f1b", p * v, m, chunks_per_rank=v,
                                                         microbatch_group=n), costs))
                    peak = min((v - 1) * n + 2 * p - 1, v * m)
                    assert [r.idle for r in met.per_rank] == pytest.approx([(p - 1) * (f + b)] * p), (p, v, m, n)
                    assert max(r.peak_activation for r in met.per_rank) == peak, (p, v, m, n)
                    a = analytic("interleaved-1f1b", p * v, m, costs, chunks_per_rank=v, microbatch_group=n)
                    assert a["bubble"] == pytest.approx((p - 1) * (f + b)) and a["peak_activation"] == peak
                    checked += 1
    assert checked > 300


@pytest.mark.parametrize("p,v,m,n", [(2, 2, 5, 3), (3, 2, 8, 4), (3, 3, 7, 4), (4, 2, 16, 8), (2, 3, 9, 9)])
def test_overlap_peak_is_megatron_warmup_plus_two(p, v, m, n):
    # Rank 0 holds its 2 (p - 1) + (v - 1) N + 1 warm-up forwards and the first pair's forward.
    costs = CostModel.uniform(p * v, forward=1.0, backward=2.0, overlapped=2.5)
    sched = build("interleaved-1f1b-overlap", p * v, m, chunks_per_rank=v, microbatch_group=n)
    met = compute_metrics(simulate(sched, costs))
    expected = min(2 * (p - 1) + (v - 1) * n + 2, v * m)
    assert max(r.peak_activation for r in met.per_rank) == expected
    a = analytic("interleaved-1f1b-overlap", p * v, m, costs, chunks_per_rank=v, microbatch_group=n)
    assert a["peak_activation"] == expected and a["bubble"] is None


@pytest.mark.parametrize("n,start", [(4, 5.0), (5, 5.0), (6, 6.0), (8, 8.0)])
def test_a_larger_group_hides_the_p2p_round_trip(n, start):
    # p = 4, v = 2, M = 24 (accepts N = 4, 5, 6, 8), f = 1, b = 2, P2P c = 0.25.  Micro-batch 0 leaves
    # rank 0 at f = 1 and crosses ranks 1-3 (f + c each) and the hop back: stage 4 can take it at
    # p (f + c) = 5.  Rank 0 is busy with its N chunk-0 forwards until N f.  So stage 4's F0 starts
    # at max(N f, p (f + c)): 5 for N = 4 (rank 0 waits 1), N for N >= 5 (no wait).
    costs = CostModel.uniform(8, forward=1.0, backward=2.0, p2p=0.25)
    trace = simulate(build("interleaved-1f1b", 8, 24, chunks_per_rank=2, microbatch_group=n), costs)
    got = [float(x["start"]) for x in trace.compute if x["stage"] == 4 and x["kind"] == 0 and x["microbatch"] == 0]
    assert got == pytest.approx([start])


def test_worked_example_in_docs():
    # docs/schedules.md: p = 4, v = 2, M = 16, f = 1, b = 2, no P2P.  busy = v M (f + b) = 96 per rank,
    # bubble (p - 1)(f + b) = 9 -> makespan 105 for N = 4, 8, 16; rank 0's peak N + 7 = 11, 15, 23.
    for n, peak in [(4, 11), (8, 15), (16, 23)]:
        met = compute_metrics(simulate(build("interleaved-1f1b", 8, 16, chunks_per_rank=2, microbatch_group=n),
                                       CostModel.uniform(8, forward=1.0, backward=2.0)))
        assert met.makespan == pytest.approx(105.0)
        assert [r.peak_activation for r in met.per_rank] == [peak, peak - 2, peak - 4, peak - 6]


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,fragment",
    [
        (3, "needs a value between the ranks (4) and pipeline.microbatches (10), as Megatron-core requires, got 3"),
        (11, "needs a value between the ranks (4) and pipeline.microbatches (10), as Megatron-core requires, got 11"),
        (4, "needs a last group of at least the 4 ranks; 4 leaves a last group of 2 micro-batches, fewer than the 4 ranks"),
        (7, "needs a last group of at least the 4 ranks; 7 leaves a last group of 3 micro-batches, fewer than the 4 ranks"),
    ],
)
@pytest.mark.parametrize("name", INTERLEAVED)
def test_megatron_core_refusals_are_one_line_naming_the_key(name, n, fragment, capsys, tmp_path):
    # 4 ranks (8 stages, v = 2), M = 10: Megatron-core accepts N = 5, 6 (10 % 6 = 4), 10 and refuses the rest.
    out = tmp_path / "out"
    args = ["run", QUICK, "--set", f"pipeline.schedule={name}", "--set", "pipeline.microbatches=10",
            "--set", f"pipeline.microbatch_group={n}", "--out", str(out), "--plots", "none"]  # fmt: skip
    assert main(args) == 2
    one_error_line(capsys, f"pipeline.microbatch_group: {name} ", fragment)
    assert not out.exists()
    for ok in (5, 6, 10):
        build(name, 8, 10, chunks_per_rank=2, microbatch_group=ok)


@pytest.mark.parametrize(
    "value,fragment",
    [(0, "pipeline.microbatch_group: input should be greater than or equal to 1"),
     (2.5, "pipeline.microbatch_group: must be a whole number"),
     ('"4"', "pipeline.microbatch_group: must be a whole number")],
)
def test_bad_values_are_refused_by_the_scenario(value, fragment, capsys):
    args = ["run", QUICK, "--set", "pipeline.schedule=interleaved-1f1b", "--set", f"pipeline.microbatch_group={value}"]
    assert main(args + ["--plots", "none", "--json"]) == 2
    one_error_line(capsys, fragment)


def test_refusal_as_a_process_has_no_traceback(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dualpipe_sim.cli", "run", QUICK, "--set", "pipeline.schedule=interleaved-1f1b",
         "--set", "pipeline.microbatches=16", "--set", "pipeline.microbatch_group=5", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "" and not out.exists()
    assert proc.stderr == (
        "error: pipeline.microbatch_group: interleaved-1f1b needs a last group of at least the 4 ranks; 5 leaves a "
        "last group of 1 micro-batch, fewer than the 4 ranks (Megatron-core refuses it: the pipe would stall); use a group size that divides 16 or leaves "
        "at least 4\n"
    )


def test_key_under_a_schedule_that_ignores_it_is_refused(capsys):
    # Refused, not warned about: a group size silently ignored would make a sweep's rows lie.
    assert main(["run", QUICK, "--set", "pipeline.microbatch_group=4", "--json", "--plots", "none"]) == 2
    one_error_line(capsys, "pipeline.microbatch_group: dualpipe does not take it (only interleaved-1f1b, "
                           "interleaved-1f1b-overlap do); leave it out")
    assert main(["schedule", "1f1b", "--stages", "4", "--microbatches", "8", "--microbatch-group", "4"]) == 2
    one_error_line(capsys, "--microbatch-group: schedule 1f1b does not take it")


def test_schedule_verb_takes_the_group(capsys):
    args = ["schedule", "interleaved-1f1b", "--stages", "4", "--microbatches", "5", "--microbatch-group", "3"]
    assert main(args) == 0
    expected = EXPECTED[("interleaved-1f1b", 2, 2, 5, 3)]
    assert capsys.readouterr().out.splitlines() == [f"rank {r}: " + " ".join(acts) for r, acts in enumerate(expected)]


def test_scenario_run_and_sweep_take_the_key(tmp_path):
    data = {"pipeline": {"schedule": "interleaved-1f1b", "stages": 8, "microbatches": 16, "microbatch_group": 8},
            "costs": {"forward": 1.0, "backward": 2.0}}
    result = simulation.run(scenario.from_dict(data))
    assert result.metrics.analytic.peak_activation == 15 and result.metrics.makespan == pytest.approx(105.0)
    out = tmp_path / "sweep"
    args = ["sweep", QUICK, "--set", "pipeline.schedule=interleaved-1f1b", "--set", "pipeline.stages=8",
            "--set", "pipeline.microbatches=16", "--set", "comm.p2p=0", "--grid", "pipeline.microbatch_group=4,8,16",
            "--out", str(out), "--jobs", "1", "--plots", "none"]  # fmt: skip
    assert main(args) == 0
    import csv

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["pipeline.microbatch_group"], r["peak_activation"], r["analytic.peak_activation"]) for r in rows] == [
        ("4", "11", "11"), ("8", "15", "15"), ("16", "23", "23")]  # fmt: skip
