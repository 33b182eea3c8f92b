"""The component cost model ([chunk]) on hand-worked cases.

Notation: one layer; forward components Af (attention), Df (dispatch a2a),
Mf (MLP), Cf (combine a2a); backward Cb (combine a2a), MbI, MbW (MLP input- and
weight-grad), Db (dispatch a2a), AbI, AbW.  A lone op runs them in that order,
one after the other.  In an FB pair the two streams share one compute and one
a2a channel; a free channel takes the next component of the stream that has
waited longer, the forward on a tie.
"""

from __future__ import annotations

import pytest

from dualpipe_sim import scenario
from dualpipe_sim.costs import COMPONENTS, Chunk, CostModel
from dualpipe_sim.engine import simulate
from dualpipe_sim.ir import FB, Op, Schedule
from dualpipe_sim.trace import A2A

NAMES = {
    "Af": "attn_forward", "Df": "dispatch_forward", "Mf": "mlp_forward", "Cf": "combine_forward",
    "Cb": "combine_backward", "MbI": "mlp_backward_input", "MbW": "mlp_backward_weight",
    "Db": "dispatch_backward", "AbI": "attn_backward_input", "AbW": "attn_backward_weight",
}  # fmt: skip
SHORT = {v: k for k, v in NAMES.items()}


def chunk(layers=1, slowdown=1.0, **times) -> Chunk:
    return Chunk(layers, tuple(float(times[SHORT[n]]) for n in COMPONENTS), slowdown)


def one_rank_pair_schedule() -> Schedule:
    """One stage on one rank, two micro-batches: F0, then F1 overlapped with B0, then B1."""
    return Schedule(
        "pair", 1, 2, ((Op("F", 0, 0), FB(Op("F", 1, 0), Op("B", 0, 0)), Op("B", 1, 0)),)
    )


def rows_of(trace, action, rank=0):
    """{component name: (start, end)} of one action on one rank, compute and a2a rows together."""
    out = {}
    for table in (trace.compute, trace.comm):
        for r in table[(table["action"] == action) & (table["rank"] == rank)]:
            out.setdefault(SHORT[COMPONENTS[r["part"]]], []).append((float(r["start"]), float(r["end"])))
    return {k: _flat(v[0] if len(v) == 1 else v) for k, v in out.items()}


def approx(d):
    # pytest.approx takes flat sequences only (newer pytest rejects nested ones):
    # compare each component's (start, end) pairs flattened.
    return {k: pytest.approx(_flat(v)) for k, v in d.items()}


def _flat(v):
    return [x for pair in v for x in pair] if v and isinstance(v[0], (tuple, list)) else list(v)


# -- a pair whose all-to-all is fully hidden -------------------------------------------

HIDDEN = dict(Af=2, Df=2.5, Mf=2, Cf=2, Cb=1, MbI=2, MbW=1, Db=1.5, AbI=2, AbW=1)


def test_pair_fully_hidden():
    """Af 2, Df 2.5, Mf 2, Cf 2 | Cb 1, MbI 2, MbW 1, Db 1.5, AbI 2, AbW 1.

    Lone F = 8.5, lone B = 8.5.  The pair, by hand:
      t=0   compute Af [0,2]        a2a Cb [0,1]
      t=2   compute MbI [2,4]       a2a Df [2,4.5]     (MbI waited since 1)
      t=4   compute MbW [4,5]       (Mf waits for Df)
      t=5   compute Mf [5,7]        a2a Db [5,6.5]     (Mf waited since 4.5)
      t=7   compute AbI [7,9]       a2a Cf [7,9]
      t=9   compute AbW [9,10]
    F&B = 10 = the compute alone (2+2+1+2+2+1); every a2a lies under compute.
    Whole run: F0 [0,8.5], pair [8.5,18.5], B1 [18.5,27].  All-to-all: 4.5 in F0
    and 2.5 in B1, exposed; 7 in the pair, hidden -> overlap 7/14.
    """
    costs = CostModel.from_chunk(1, chunk(**HIDDEN))
    assert (costs.forward[0], costs.backward[0], costs.weight[0]) == (8.5, 8.5, 2.0)
    assert costs.overlapped[0] == pytest.approx(10.0)

    trace = simulate(one_rank_pair_schedule(), costs)
    assert trace.makespan == pytest.approx(27.0)
    t0 = 8.5
    expect = dict(Af=(0, 2), Cb=(0, 1), MbI=(2, 4), Df=(2, 4.5), MbW=(4, 5), Mf=(5, 7),
                  Db=(5, 6.5), AbI=(7, 9), Cf=(7, 9), AbW=(9, 10))  # fmt: skip
    assert rows_of(trace, 1) == approx({k: (t0 + a, t0 + b) for k, (a, b) in expect.items()})
    # The lone ops: components back to back.
    assert rows_of(trace, 0) == approx(dict(Af=(0, 2), Df=(2, 4.5), Mf=(4.5, 6.5), Cf=(6.5, 8.5)))

    from dualpipe_sim.metrics import compute_metrics

    comm = compute_metrics(trace).to_dict()["comm"]
    assert comm["a2a_time"] == pytest.approx(14.0)
    assert comm["a2a_exposed"] == pytest.approx(7.0)
    assert comm["overlap_ratio"] == pytest.approx(0.5)


# -- a pair whose all-to-all is not fully hidden ----------------------------------------

ONES = dict(Af=1, Df=1, Mf=1, Cf=1, Cb=1, MbI=1, MbW=1, Db=1, AbI=1, AbW=1)


def test_pair_partly_exposed():
    """Every component 1.  Lone F = 4, lone B = 6, F + B = 10.  The pair:
      t=0  Af [0,1]   | Cb [0,1]
      t=1  MbI [1,2]  | Df [1,2]
      t=2  Mf [2,3]   (tie with MbW: the forward goes first)
      t=3  MbW [3,4]  | Cf [3,4]
      t=4  (compute idle: AbI needs Db) | Db [4,5]
      t=5  AbI [5,6], AbW [6,7]
    F&B = 7: Db (1 of the pair's 4 a2a) runs with the compute idle.
    """
    costs = CostModel.from_chunk(1, chunk(**ONES))
    assert costs.overlapped[0] == 7.0
    trace = simulate(one_rank_pair_schedule(), costs)
    t0 = 4.0
    expect = dict(Af=(0, 1), Cb=(0, 1), MbI=(1, 2), Df=(1, 2), Mf=(2, 3), MbW=(3, 4), Cf=(3, 4),
                  Db=(4, 5), AbI=(5, 6), AbW=(6, 7))  # fmt: skip
    assert rows_of(trace, 1) == approx({k: (t0 + a, t0 + b) for k, (a, b) in expect.items()})
    assert trace.makespan == 4 + 7 + 6

    from dualpipe_sim.metrics import compute_metrics

    comm = compute_metrics(trace).to_dict()["comm"]
    # a2a: F0 2 + pair 4 + B1 2 = 8; exposed: F0 2 + Db 1 + B1 2 = 5.
    assert comm["a2a_time"] == 8.0
    assert comm["a2a_exposed"] == pytest.approx(5.0)


def test_comm_compute_slowdown():
    """Every component 1, compute 1.5x slower while an a2a runs beside it.
      t=0     Af starts with Cb running: 2/3 of it done at t=1, the last 1/3 alone -> ends 4/3
      t=4/3   MbI with Df [4/3, 7/3]: 2/3 done at 7/3, the rest alone -> ends 8/3
      t=8/3   Mf [8/3, 11/3] (waited since 7/3, before MbW's 8/3), no a2a beside it
      t=11/3  MbW with Cf [11/3, 14/3]: 2/3 done at 14/3 -> ends 5
      t=5     Db [5,6] with the compute idle; AbI [6,7]; AbW [7,8]
    F&B = 8 (7 without the slowdown).  A lone op never runs compute beside an
    a2a, so F and B are unchanged.
    """
    costs = CostModel.from_chunk(1, chunk(slowdown=1.5, **ONES))
    assert (costs.forward[0], costs.backward[0]) == (4.0, 6.0)
    assert costs.overlapped[0] == pytest.approx(8.0)
    _, rows = costs.timeline(FB(Op("F", 1, 0), Op("B", 0, 0)))
    got = {SHORT[COMPONENTS[p]]: (s, e) for _, p, _, s, e in rows}
    assert got == approx(dict(Af=(0, 4 / 3), Cb=(0, 1), MbI=(4 / 3, 8 / 3), Df=(4 / 3, 7 / 3),
                              Mf=(8 / 3, 11 / 3), MbW=(11 / 3, 5), Cf=(11 / 3, 14 / 3),
                              Db=(5, 6), AbI=(6, 7), AbW=(7, 8)))  # fmt: skip


# -- lone ops, split backward, W ---------------------------------------------------------


def test_lone_ops_run_components_in_sequence_and_expose_all_a2a():
    """1F1B on 2 ranks, 2 layers per chunk: every op is lone, so each of its
    components starts when the previous one ends and every all-to-all runs
    with its rank's compute idle: a2a exposed = a2a time."""
    times = dict(Af=1, Df=2, Mf=3, Cf=4, Cb=0.5, MbI=1.5, MbW=1, Db=2.5, AbI=2, AbW=0.5)
    costs = CostModel.from_chunk(2, chunk(layers=2, **times))
    assert costs.forward[0] == 2 * 10 and costs.backward[0] == 2 * 8 and costs.weight[0] == 2 * 1.5
    from dualpipe_sim.registry import build

    trace = simulate(build("1f1b", 2, 3), costs)
    # Rank 0's first forward, layer by layer: Af 1, Df 2, Mf 3, Cf 4, then again.
    assert rows_of(trace, 0) == approx(
        dict(Af=[(0, 1), (10, 11)], Df=[(1, 3), (11, 13)], Mf=[(3, 6), (13, 16)], Cf=[(6, 10), (16, 20)])
    )
    from dualpipe_sim.metrics import compute_metrics

    comm = compute_metrics(trace).to_dict()["comm"]
    per_op_a2a = {"F": 2 * (2 + 4), "B": 2 * (0.5 + 2.5)}
    assert comm["a2a_time"] == pytest.approx(2 * 3 * (per_op_a2a["F"] + per_op_a2a["B"]))
    assert comm["a2a_exposed"] == pytest.approx(comm["a2a_time"])
    assert comm["overlap_ratio"] == 0.0


def test_split_backward_and_weight_components():
    """I runs Cb, MbI, Db, AbI; W runs MbW, AbW; together they cost B."""
    times = dict(Af=1, Df=1, Mf=1, Cf=1, Cb=0.5, MbI=1.5, MbW=1, Db=2.5, AbI=2, AbW=0.25)
    costs = CostModel.from_chunk(1, chunk(**times))
    total_i, rows_i = costs.timeline(Op("I", 0, 0))
    total_w, rows_w = costs.timeline(Op("W", 0, 0))
    assert [SHORT[COMPONENTS[r[1]]] for r in rows_i] == ["Cb", "MbI", "Db", "AbI"]
    assert [(SHORT[COMPONENTS[r[1]]], r[3], r[4]) for r in rows_w] == [("MbW", 0, 1), ("AbW", 1, 1.25)]
    assert total_i == 6.5 and total_w == 1.25 and total_i + total_w == costs.backward[0]


def test_zero_all_to_all_drops_out():
    """A dense layer (no dispatch/combine): no a2a rows, F&B = F + B."""
    times = dict(Af=1, Df=0, Mf=2, Cf=0, Cb=0, MbI=2, MbW=1, Db=0, AbI=1, AbW=1)
    costs = CostModel.from_chunk(1, chunk(**times))
    assert costs.overlapped[0] == costs.forward[0] + costs.backward[0] == 8
    trace = simulate(one_rank_pair_schedule(), costs)
    assert len(trace.comm[trace.comm["channel"] == A2A]) == 0


# -- scenario keys -------------------------------------------------------------------------

BASE = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}}
CHUNK = {"layers": 1, **{NAMES[k]: v for k, v in ONES.items()}}


def test_chunk_table_derives_costs():
    sc = scenario.from_dict({**BASE, "chunk": dict(CHUNK, layers=3)})
    c = sc.cost_model()
    assert c.forward == (12.0, 12.0) and c.backward == (18.0, 18.0) and c.weight == (6.0, 6.0)


@pytest.mark.parametrize(
    "data,message",
    [
        ({**BASE, "chunk": CHUNK, "costs": {"forward": 1.0}}, "costs.forward: must be left out when [chunk]"),
        ({**BASE, "chunk": CHUNK, "costs": {"overlapped": 1.0}}, "costs.overlapped: must be left out"),
        ({**BASE}, "costs.forward: required key is missing"),
        ({**BASE, "chunk": {k: v for k, v in CHUNK.items() if k != "dispatch_backward"}},
         "chunk.dispatch_backward: required key is missing"),
        ({**BASE, "chunk": dict(CHUNK, mlp_forward=0)}, "chunk.mlp_forward: input should be greater than 0"),
        ({**BASE, "chunk": dict(CHUNK, combine_forward=-1)}, "chunk.combine_forward"),
        ({**BASE, "chunk": dict(CHUNK, comm_compute_slowdown=0.9)}, "chunk.comm_compute_slowdown"),
        ({**BASE, "chunk": dict(CHUNK, layers=0)}, "chunk.layers"),
        ({**BASE, "chunk": dict(CHUNK, layers=1.5)}, "chunk.layers: must be a whole number"),
        ({**BASE, "chunk": dict(CHUNK, experts=3)}, "chunk.experts: unknown key"),
    ],
)  # fmt: skip
def test_chunk_errors_name_the_field(data, message):
    with pytest.raises(scenario.ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        scenario.from_dict(data)
