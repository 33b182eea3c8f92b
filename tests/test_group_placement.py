"""Which link each group takes (model/placement.py group; docs/model.md, "Which link each group takes").

Every expected figure below is worked by hand from the rank numbering: Megatron-core numbers ranks innermost first in
the order's dimensions (tp-cp-ep-dp-pp by default, tp-cp-ep-pp-dp under NeMo's mapping), a group holds the ranks that
differ only in its dimensions, and a domain is ``domain`` consecutive ranks."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, step_end
from dualpipe_sim.model import grad_sync
from dualpipe_sim.model.placement import DEFAULT_ORDER, ORDERS, Group, group

NEMO = "tp-cp-ep-pp-dp"


def test_h100_tp4_dp4_pp2_default_order():
    # data-parallel ranks 4 apart: {0, 4, 8, 12} -> nodes 0, 0, 1, 1 (and stage 1's {16, 20, 24, 28} likewise)
    assert group("dp", DEFAULT_ORDER, 8, tensor=4, data=4, pipeline=2) == Group(4, 2, 2, "nic")
    # the tensor group 4 consecutive ranks, two of them a node; a pipeline pair 16 apart: two nodes
    assert group("tp", DEFAULT_ORDER, 8, tensor=4, data=4, pipeline=2) == Group(4, 4, 1, "nvlink")
    assert group("pp", DEFAULT_ORDER, 8, tensor=4, data=4, pipeline=2) == Group(2, 1, 2, "nic")
    # the model-parallel group tensor x pipeline: {0-3, 16-19}: two nodes of 4
    assert group("tp-pp", DEFAULT_ORDER, 8, tensor=4, data=4, pipeline=2) == Group(8, 4, 2, "nic")


def test_h100_tp4_dp4_pp2_nemo_order():
    # tp-cp-ep-pp-dp: a replica's pipeline is ranks 0-7, so data-parallel ranks sit 4 x 2 = 8 apart: {0, 8, 16, 24},
    # a node each; the pipeline pair {0, 4} shares node 0
    assert group("dp", NEMO, 8, tensor=4, data=4, pipeline=2) == Group(4, 1, 4, "nic")
    assert group("pp", NEMO, 8, tensor=4, data=4, pipeline=2) == Group(2, 2, 1, "nvlink")
    assert group("tp-pp", NEMO, 8, tensor=4, data=4, pipeline=2) == Group(8, 8, 1, "nvlink")


def test_gb200_tp4_pp8_dp16_default_order():
    # stage p's data-parallel group: ranks 64p + k, 4 apart, over 64 ranks.  Racks of 72: stage 0 (0-63) in rack 0;
    # stage 1 (64-127): 64, 68 in rack 0 and 14 in rack 1; stage 4 (256-319): 256-284 (8) in rack 3 (216-287) and
    # 288-316 (8) in rack 4.  No group spans three racks; the slowest spans two, at best 8 a rack
    assert group("dp", DEFAULT_ORDER, 72, tensor=4, data=16, pipeline=8) == Group(16, 8, 2, "nic")
    # on racks of 64 (a multiple of the 64-rank span) every group sits in one
    assert group("dp", DEFAULT_ORDER, 64, tensor=4, data=16, pipeline=8) == Group(16, 16, 1, "nvlink")


def test_gb200_tp4_pp8_dp16_nemo_order():
    # data-parallel ranks 4 x 8 = 32 apart: o + 32d, o in 0-31, d in 0-15, up to o + 480.  o >= 24 reaches rack 7
    # (504-575): 8 racks; rack 3 (216-287) then holds 192 + o, 224 + o and 256 + o: three, the most in any
    assert group("dp", NEMO, 72, tensor=4, data=16, pipeline=8) == Group(16, 3, 8, "nic")
    # a replica's pipeline (32 consecutive ranks from 32d) crosses a rack boundary when a multiple of 72 falls inside
    # (32d, 32d + 31]: d = 2 (72 in 65-95) does
    assert group("pp", NEMO, 72, tensor=4, data=16, pipeline=8).link == "nic"
    assert group("pp", NEMO, 64, tensor=4, data=16, pipeline=8) == Group(8, 8, 1, "nvlink")


def test_expert_groups_ep8_tp2_etp1():
    # world 2 x 4 x 2 = 16; the expert generator: etp 1, ep 8, edp 16 / (8 x 2) = 1, pp 2.  Expert ranks 8 consecutive
    # in both orders (ep comes right after etp): one node each
    for order in ORDERS:
        assert group("ep", order, 8, tensor=2, data=4, pipeline=2, expert=8) == Group(8, 8, 1, "nvlink")
    # EP 16 over TP 2 x DP 8: ranks 0-15, two nodes
    assert group("ep", DEFAULT_ORDER, 8, tensor=2, data=8, expert=16) == Group(16, 8, 2, "nic")
    # EP 4 at TP 2 x DP 4 x PP 2: edp 2.  Default (etp-ep-edp-pp): edp ranks 4 apart, {0, 4}, one node;
    # NeMo's (etp-ep-pp-edp): 4 x 2 = 8 apart, {0, 8}, two nodes
    assert group("edp", DEFAULT_ORDER, 8, tensor=2, data=4, pipeline=2, expert=4) == Group(2, 2, 1, "nvlink")
    assert group("edp", NEMO, 8, tensor=2, data=4, pipeline=2, expert=4) == Group(2, 1, 2, "nic")


def test_context_groups():
    # TP 2 x CP 4: context ranks 2 apart over 8, {0, 2, 4, 6}: one node; TP 4 x CP 4: {0, 4, 8, 12}: two nodes of 2
    assert group("cp", DEFAULT_ORDER, 8, tensor=2, context=4, data=2) == Group(4, 4, 1, "nvlink")
    assert group("cp", DEFAULT_ORDER, 8, tensor=4, context=4, data=2) == Group(4, 2, 2, "nic")
    # the gradient group data x context: TP 2 x CP 2 x DP 4, ranks 2 apart over 16: two nodes of 4 in either order
    # (cp and dp are neighbours in the default order; in NeMo's the pipeline of 1 changes nothing)
    for order in ORDERS:
        assert group("dp-cp", order, 8, tensor=2, context=2, data=4) == Group(8, 4, 2, "nic")
    # the amax group tensor x data x context under NeMo's order with PP 2 (rank = t + 2c + 4p + 8d): for p = 0 the
    # blocks 0-3, 8-11, 16-19, 24-27, one a node (4-7 is the next pipeline rank's)
    assert group("tp-dp-cp", NEMO, 8, tensor=2, context=2, data=4, pipeline=2) == Group(16, 4, 4, "nic")


def test_refuses_what_it_cannot_place():
    with pytest.raises(ValueError, match="rank order"):
        group("dp", "tp-dp-pp", 8, data=2)
    with pytest.raises(ValueError, match="group kind"):
        group("dpp", DEFAULT_ORDER, 8, data=2)
    with pytest.raises(ValueError, match="must divide"):
        group("ep", DEFAULT_ORDER, 8, tensor=2, data=3, expert=4)


GRID = [(t, c, d, p, e, domain)
        for t, c, d, p, e, domain in itertools.product((1, 2, 4, 8), (1, 2), (1, 2, 4, 8), (1, 2, 4), (1, 2, 8),
                                                       (8, 16, 64))  # fmt: skip
        if (t * c * d) % e == 0 and t <= domain]


@pytest.mark.parametrize("order", ORDERS)
def test_every_group_is_covered_by_its_domains(order):
    for t, c, d, p, e, domain in GRID:
        for kind in ("tp", "cp", "dp", "pp", "tp-cp", "dp-cp", "tp-pp", "tp-dp", "tp-dp-cp", "ep", "edp", "world"):
            g = group(kind, order, domain, t, c, d, p, e)
            assert g.per_node * g.domains >= g.size >= g.per_node >= 1, (kind, t, c, d, p, e, domain, g)
            assert (g.link == "nvlink") == (g.domains == 1)


def test_default_order_agrees_with_the_products_it_replaced():
    """The products the callers used before (each assumed tp-cp-ep-dp-pp), on layouts of powers of two where no
    group straddles a domain boundary (a power-of-two domain): the same answer from the rank arithmetic."""
    for t, c, d, p, e, domain in GRID:
        at = lambda kind: group(kind, DEFAULT_ORDER, domain, t, c, d, p, e)  # noqa: E731
        data = c * d  # the model's sharding.data: data x context
        assert at("dp-cp").link == ("nvlink" if t * data <= domain else "nic")  # grad_sync.sync_ms
        assert at("dp-cp").per_node == max(1, min(data, domain // t))  # the data-parallel per_node
        assert at("tp").per_node == min(t, domain)  # tensor-group small all-reduces
        assert at("cp").link == ("nvlink" if t * c <= domain else "nic")  # kernels._ring_link
        assert at("tp-cp").link == ("nvlink" if t * c <= domain else "nic")  # the aux-loss all-reduce
        assert at("ep").link == ("nvlink" if e <= domain else "nic")  # kernels._all_to_all
        assert at("ep").domains == -(-e // domain)
        edp = data * t // e
        assert at("edp").per_node == max(1, min(edp, domain // e))  # fp8_amax_all_reduce_ms's expert part
        assert at("tp-dp-cp").per_node == min(t * data, domain)  # the FP8 amax reduction group
        assert at("pp").per_node == max(1, min(p, domain // (t * data)))  # loop_step's pipeline broadcast
        assert at("world").per_node == min(t * data * p, domain)  # grad norm with the distributed optimizer
        if data > 1 and t * data >= domain:  # the model-parallel group where loop_step's product held
            assert at("tp-pp").per_node == min(t * p, domain, t)


# -- the callers: a run's groups placed by its parallel.rank_order ---------------------------------------------------
LLAMA70 = str(Path(__file__).resolve().parents[1] / "scenarios" / "models" / "llama3-70b.json")


def llama70(order: str) -> scenario.Scenario:
    # TP 2 x DP 4 x 8 pipeline ranks on H100 nodes of 8
    return scenario.read({
        "pipeline": {"schedule": "1f1b", "stages": 8, "microbatches": 4},
        "model": {"config": LLAMA70, "seq_length": 2048, "micro_batch_size": 1},
        "parallel": {"tensor": 2, "data": 4, "zero": 1, "tp_comm_overlap": False, "rank_order": order},
        "hardware": {"preset": "H100"},
    })  # fmt: skip


def test_a_runs_data_parallel_group_follows_its_rank_order():
    # default: data-parallel ranks 2 apart, 0-7, one node; NeMo's: 2 x 8 = 16 apart, {0, 16, 32, 48}, a node each
    default, nemo = derive.setup(llama70(DEFAULT_ORDER)), derive.setup(llama70(NEMO))
    assert default.pipeline == nemo.pipeline == 8
    assert default.group("dp-cp") == Group(4, 4, 1, "nvlink") and nemo.group("dp-cp") == Group(4, 1, 4, "nic")
    # the model-parallel group (the clip norm without the distributed optimizer): {0, 1, 8, 9, ...} under the
    # default order, two a node; NeMo's puts a replica's 16 ranks on two whole nodes
    assert default.group("tp-pp") == Group(16, 2, 8, "nic") and nemo.group("tp-pp") == Group(16, 8, 2, "nic")
    # the data-parallel all-reduce at the step's end on each group's link, one NIC per rank in a node
    nbytes = 1e8
    for st, link, nics in ((default, "nvlink", 4), (nemo, "nic", 1)):
        assert step_end._link(st) == link
        want = collectives.time("all_reduce", nbytes, 4, st.rates, link, nics=nics) * 1e3
        assert grad_sync.sync_ms(st, "grad_sync", nbytes, 0.0, op="all_reduce") == pytest.approx(want, rel=1e-12)
    # the kernels' layout carries the groups it reads, placed by the run's order
    assert dict(nemo.layout.places) == {kind: nemo.group(kind) for kind in ("tp", "cp", "tp-cp", "ep")}
