"""The component cost model ([chunk]) on hand-worked cases.

Notation: one layer; forward components Af (attention), Df (dispatch a2a),
Mf (MLP), Cf (combine a2a); backward Cb (combine a2a), MbI, MbW (MLP input- and
weight-grad), Db (dispatch a2a), AbI, AbW.  A lone op runs them in that order,
one after the other.  In an FB pair (costs.py, channels.py):

* the forward chain Af -> Df -> Mf -> Cf and the input-gradient chain
  Cb -> MbI -> Db -> AbI; MbW needs only MbI, AbW only AbI;
* each channel runs its parts in the declared order (chunk.order; default
  DeepSeek's: compute Af, MbI, MbW, Mf, AbI, AbW; a2a Cb, Df, Db, Cf), a part
  starting at max(its inputs' ends, the end of the channel's previous part);
* a channel with no declared order serves ready parts by priority: F and I
  parts before W parts.
"""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.costs import COMPONENTS, DEEPSEEK_ORDER, Chunk, Component, CostModel
from dualpipe_sim.engine.simpy_engine import simulate
from dualpipe_sim.schedules.ir import FB, Op, Schedule
from dualpipe_sim.schedules.rules import Channel
from dualpipe_sim.engine.trace import A2A

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

    Lone F = 8.5, lone B = 8.5.  The pair, by hand (start = max(inputs, channel free)):
      compute Af  = max(-, 0)             = 0   -> 2     a2a Cb = 0 -> 1
      compute MbI = max(Cb 1, Af 2)       = 2   -> 4     a2a Df = max(Af 2, Cb 1)   = 2   -> 4.5
      compute MbW = max(MbI 4, 4)         = 4   -> 5     a2a Db = max(MbI 4, Df 4.5) = 4.5 -> 6
      compute Mf  = max(Df 4.5, MbW 5)    = 5   -> 7
      compute AbI = max(Db 6, Mf 7)       = 7   -> 9     a2a Cf = max(Mf 7, Db 6)   = 7   -> 9
      compute AbW = max(AbI 9, 9)         = 9   -> 10
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
    expect = dict(Af=(0, 2), Cb=(0, 1), MbI=(2, 4), Df=(2, 4.5), MbW=(4, 5), Db=(4.5, 6), Mf=(5, 7),
                  AbI=(7, 9), Cf=(7, 9), AbW=(9, 10))  # fmt: skip
    assert rows_of(trace, 1) == approx({k: (t0 + a, t0 + b) for k, (a, b) in expect.items()})
    # The lone ops: components back to back.
    assert rows_of(trace, 0) == approx(dict(Af=(0, 2), Df=(2, 4.5), Mf=(4.5, 6.5), Cf=(6.5, 8.5)))

    from dualpipe_sim.readers.metrics import compute_metrics

    comm = compute_metrics(trace).to_dict()["comm"]
    assert comm["a2a_time"] == pytest.approx(14.0)
    assert comm["a2a_exposed"] == pytest.approx(7.0)
    assert comm["overlap_ratio"] == pytest.approx(0.5)


# -- a pair whose all-to-all is not fully hidden ----------------------------------------

ONES = dict(Af=1, Df=1, Mf=1, Cf=1, Cb=1, MbI=1, MbW=1, Db=1, AbI=1, AbW=1)
LONG_A2A = dict(Af=1, Df=2, Mf=1, Cf=2, Cb=2, MbI=1, MbW=1, Db=2, AbI=1, AbW=1)


def test_pair_partly_exposed():
    """Compute parts 1, all-to-all parts 2.  Lone F = 6, lone B = 8.  The pair:
      compute Af  = 0 -> 1                      a2a Cb = 0 -> 2
      compute MbI = max(Cb 2, Af 1)  = 2 -> 3   a2a Df = max(Af 1, Cb 2)  = 2 -> 4
      compute MbW = max(MbI 3, 3)    = 3 -> 4   a2a Db = max(MbI 3, Df 4) = 4 -> 6
      compute Mf  = max(Df 4, MbW 4) = 4 -> 5
      compute AbI = max(Db 6, Mf 5)  = 6 -> 7   a2a Cf = max(Mf 5, Db 6)  = 6 -> 8
      compute AbW = max(AbI 7, 7)    = 7 -> 8
    F&B = 8: the compute (6) waits [1,2] for Cb and [5,6] for Db, so 2 of the
    pair's 8 of all-to-all run with the compute idle.
    """
    costs = CostModel.from_chunk(1, chunk(**LONG_A2A))
    assert (costs.forward[0], costs.backward[0]) == (6.0, 8.0)
    assert costs.overlapped[0] == 8.0
    trace = simulate(one_rank_pair_schedule(), costs)
    t0 = 6.0
    expect = dict(Af=(0, 1), Cb=(0, 2), MbI=(2, 3), Df=(2, 4), MbW=(3, 4), Db=(4, 6), Mf=(4, 5),
                  AbI=(6, 7), Cf=(6, 8), AbW=(7, 8))  # fmt: skip
    assert rows_of(trace, 1) == approx({k: (t0 + a, t0 + b) for k, (a, b) in expect.items()})
    assert trace.makespan == 6 + 8 + 8

    from dualpipe_sim.readers.metrics import compute_metrics

    comm = compute_metrics(trace).to_dict()["comm"]
    # a2a: F0 4 + pair 8 + B1 4 = 16; exposed: F0 4 + pair 2 + B1 4 = 10.
    assert comm["a2a_time"] == 16.0
    assert comm["a2a_exposed"] == pytest.approx(10.0)


def test_comm_compute_slowdown():
    """Every component 1, compute 1.5x slower while an a2a runs beside it.
      t=0     Af with Cb [0,1]: 2/3 of Af done at 1, the last 1/3 alone -> Af ends 4/3
      t=4/3   MbI (Cb done) and Df (Af done) start: Df [4/3, 7/3]; MbI 2/3 done at 7/3,
              the rest alone -> 8/3
      t=8/3   MbW and Db (both need MbI) start: Db [8/3, 11/3]; MbW 2/3 done at 11/3 -> 4
      t=4     Mf [4,5] (Df done at 7/3), no a2a beside it: Cf needs Mf
      t=5     AbI (Db done) with Cf [5,6]: 2/3 done at 6 -> 19/3; AbW [19/3, 22/3]
    F&B = 22/3 (6 without the slowdown).  A lone op never runs compute beside an
    a2a, so F and B are unchanged.
    """
    costs = CostModel.from_chunk(1, chunk(slowdown=1.5, **ONES))
    assert (costs.forward[0], costs.backward[0]) == (4.0, 6.0)
    assert costs.overlapped[0] == pytest.approx(22 / 3)
    _, rows = costs.timeline(FB(Op("F", 1, 0), Op("B", 0, 0)))
    got = {SHORT[COMPONENTS[r.part]]: (r.start, r.end) for r in rows}
    assert got == approx(dict(Af=(0, 4 / 3), Cb=(0, 1), MbI=(4 / 3, 8 / 3), Df=(4 / 3, 7 / 3),
                              MbW=(8 / 3, 4), Db=(8 / 3, 11 / 3), Mf=(4, 5), Cf=(5, 6),
                              AbI=(5, 19 / 3), AbW=(19 / 3, 22 / 3)))  # fmt: skip


def test_all_ones_pair_hides_every_all_to_all():
    """Every component 1: Af [0,1] | Cb [0,1]; MbI [1,2] | Df [1,2]; MbW [2,3] | Db [2,3];
    Mf [3,4]; AbI [4,5] | Cf [4,5]; AbW [5,6].  F&B = 6 = the pair's compute: W off the
    backward chain lets Db start as MbI ends (it used to wait for MbW: 7)."""
    costs = CostModel.from_chunk(1, chunk(**ONES))
    assert costs.overlapped[0] == 6.0
    _, rows = costs.timeline(FB(Op("F", 1, 0), Op("B", 0, 0)))
    got = {SHORT[COMPONENTS[r.part]]: (r.start, r.end) for r in rows}
    assert got == dict(Af=(0, 1), Cb=(0, 1), MbI=(1, 2), Df=(1, 2), MbW=(2, 3), Db=(2, 3), Mf=(3, 4),
                       AbI=(4, 5), Cf=(4, 5), AbW=(5, 6))  # fmt: skip


# -- the declared order and the W priority ------------------------------------------------


def pair_rows(costs):
    _, rows = costs.timeline(FB(Op("F", 1, 0), Op("B", 0, 0)))
    return {SHORT[COMPONENTS[r.part]]: (r.start, r.end) for r in rows}


def order(compute=None, a2a=None):
    """A Chunk.order from short names (None: DeepSeek's default for that channel)."""
    out = []
    for channel, names in ((Channel.COMPUTE, compute), (Channel.A2A, a2a)):
        listed = DEEPSEEK_ORDER[channel] if names is None else tuple(Component[NAMES[n]] for n in names)
        out.append((channel, listed))
    return tuple(out)


def test_declared_order_is_honoured_even_when_it_idles_the_channel():
    """HIDDEN's figures, compute order Af, MbI, Mf, MbW, AbI, AbW (Mf before MbW):
      compute Af = 0 -> 2, MbI = max(Cb 1, 2) = 2 -> 4
      compute Mf = max(Df 4.5, MbI 4) = 4.5 -> 6.5   (idle [4, 4.5] although MbW is ready)
      compute MbW = max(MbI 4, Mf 6.5) = 6.5 -> 7.5
      compute AbI = max(Db 6, MbW 7.5) = 7.5 -> 9.5, AbW 9.5 -> 10.5
      a2a Cb 0 -> 1, Df = max(Af 2, 1) = 2 -> 4.5, Db = max(MbI 4, 4.5) = 4.5 -> 6,
          Cf = max(Mf 6.5, 6) = 6.5 -> 8.5
    """
    c = chunk(**HIDDEN)
    c = Chunk(c.layers, c.times, order=order(compute=("Af", "MbI", "Mf", "MbW", "AbI", "AbW")))
    got = pair_rows(CostModel.from_chunk(1, c))
    assert got == approx(dict(Af=(0, 2), Cb=(0, 1), MbI=(2, 4), Df=(2, 4.5), Mf=(4.5, 6.5), Db=(4.5, 6),
                              MbW=(6.5, 7.5), Cf=(6.5, 8.5), AbI=(7.5, 9.5), AbW=(9.5, 10.5)))  # fmt: skip


def test_without_a_declared_order_w_parts_yield_to_forward_and_input_gradient():
    """HIDDEN with Df = 1, no compute order (priority alone), a2a in DeepSeek's order:
      compute Af 0 -> 2; MbI = max(Cb 1, 2) = 2 -> 4      a2a Cb 0 -> 1, Df = max(Af 2, 1) = 2 -> 3
      t=4: MbW (ready 4) and Mf (ready 3) wait: Mf first, 4 -> 6       a2a Db = max(MbI 4, 3) = 4 -> 5.5
      t=6: MbW (ready 4) and AbI (ready 5.5) wait: AbI first, 6 -> 8   a2a Cf = max(Mf 6, 5.5) = 6 -> 8
      t=8: MbW 8 -> 9, then AbW 9 -> 10 (both W: the earlier component first)
    With DeepSeek's declared order instead, MbW runs 4 -> 5, right after MbI."""
    times = dict(HIDDEN, Df=1)
    c = chunk(**times)
    free = CostModel.from_chunk(1, Chunk(c.layers, c.times, order=order(compute=())))
    assert pair_rows(free) == approx(dict(Af=(0, 2), Cb=(0, 1), MbI=(2, 4), Df=(2, 3), Mf=(4, 6), Db=(4, 5.5),
                                          AbI=(6, 8), Cf=(6, 8), MbW=(8, 9), AbW=(9, 10)))  # fmt: skip
    declared = pair_rows(CostModel.from_chunk(1, c))
    assert declared["MbW"] == (4, 5) and declared["Mf"] == (5, 7)


def test_deepseek_preset_pair_runs_the_declared_order_and_spans_125_68():
    """scenarios/deepseek-v3.toml (4 layers; attn F 4.37, attn I 9.34, MLP W 5.06, ...): each
    channel runs the declared order four times over.  Compute waits once, for the first
    combine backward (5.77 - 4.37 = 1.40), then never idles: span = 1.40 + 4 x (4.37 + 5.31
    + 5.06 + 4.60 + 9.34 + 2.39) = 1.40 + 124.28 = 125.68 ms (issue 11: replaying the real
    arrangement with W off the chain gives about 125.7 ms; the profile shows 129.0)."""
    from pathlib import Path

    sc = scenario.load(Path(__file__).resolve().parent.parent / "scenarios" / "deepseek-v3.toml")
    costs = sc.cost_model()
    # stages 1 and 2: two middle stages of 4 MoE layers (stages 0 and 15 hold the model's extra modules)
    _, rows = costs.timeline(FB(Op("F", 1, 1), Op("B", 0, 2)))
    for channel in (Channel.COMPUTE, Channel.A2A):
        seen = [Component(r.part) for r in rows if r.channel == channel]
        assert seen == list(DEEPSEEK_ORDER[channel]) * 4
    assert costs.overlapped[1] == pytest.approx(125.68)


# -- lone ops, split backward, W ---------------------------------------------------------


def test_lone_ops_run_components_in_sequence_and_expose_all_a2a():
    """1F1B on 2 ranks, 2 layers per chunk: every op is lone, so each of its
    components starts when the previous one ends and every all-to-all runs
    with its rank's compute idle: a2a exposed = a2a time."""
    times = dict(Af=1, Df=2, Mf=3, Cf=4, Cb=0.5, MbI=1.5, MbW=1, Db=2.5, AbI=2, AbW=0.5)
    costs = CostModel.from_chunk(2, chunk(layers=2, **times))
    assert costs.forward[0] == 2 * 10 and costs.backward[0] == 2 * 8 and costs.weight[0] == 2 * 1.5
    from dualpipe_sim.schedules.registry import build

    trace = simulate(build("1f1b", 2, 3), costs)
    # Rank 0's first forward, layer by layer: Af 1, Df 2, Mf 3, Cf 4, then again.
    assert rows_of(trace, 0) == approx(
        dict(Af=[(0, 1), (10, 11)], Df=[(1, 3), (11, 13)], Mf=[(3, 6), (13, 16)], Cf=[(6, 10), (16, 20)])
    )
    from dualpipe_sim.readers.metrics import compute_metrics

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
    assert [SHORT[COMPONENTS[r.part]] for r in rows_i] == ["Cb", "MbI", "Db", "AbI"]
    assert [(SHORT[COMPONENTS[r.part]], r.start, r.end) for r in rows_w] == [("MbW", 0, 1), ("AbW", 1, 1.25)]
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


def test_chunk_order_key_reaches_the_cost_model():
    """chunk.order as in a scenario: the default is DeepSeek's; [] declares no order on a channel."""
    default = scenario.from_dict({**BASE, "chunk": CHUNK}).cost_model().chunk
    assert dict(default.order) == DEEPSEEK_ORDER
    none = scenario.from_dict({**BASE, "chunk": dict(CHUNK, order={"compute": []})}).cost_model().chunk
    assert dict(none.order) == {Channel.COMPUTE: (), Channel.A2A: DEEPSEEK_ORDER[Channel.A2A]}


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
        ({**BASE, "chunk": dict(CHUNK, order={"compute": ["attn_forward"]})},
         "chunk.order.compute: must list each compute component once"),
        ({**BASE, "chunk": dict(CHUNK, order={"a2a": ["dispatch_forward"] * 4})},
         "chunk.order.a2a: must list each a2a component once"),
        ({**BASE, "chunk": dict(CHUNK, order={"a2a": [], "lanes": []})}, "chunk.order.lanes: unknown key"),
        # mlp_backward_input needs combine_backward, which waits for dispatch_forward, which
        # needs attn_forward, which waits for mlp_backward_input: a cycle.
        ({**BASE, "chunk": dict(CHUNK, order={
            "compute": ["mlp_backward_input", "attn_forward", "mlp_backward_weight", "mlp_forward",
                        "attn_backward_input", "attn_backward_weight"],
            "a2a": ["dispatch_forward", "combine_backward", "dispatch_backward", "combine_forward"]})},
         "chunk.order: the declared order cannot run"),
    ],
)  # fmt: skip
def test_chunk_errors_name_the_field(data, message):
    with pytest.raises(scenario.ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        scenario.from_dict(data)
