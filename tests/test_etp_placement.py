"""Expert tensor parallelism inside placement.group (s17a2): Megatron-core's expert generator numbers ETP innermost,
then EP, then expert-data and pipeline ("tp-cp-ep-dp-pp" -> etp-ep-edp-pp; NeMo's "tp-cp-ep-pp-dp" -> etp-ep-pp-edp).
Every figure below is worked by hand from that numbering."""

from __future__ import annotations

import pytest

from dualpipe_sim.model import kernels, placement
from dualpipe_sim.model.placement import Group

ORDERS = placement.ORDERS


@pytest.mark.parametrize("order", ORDERS)
def test_ep_group_at_tp4_etp4_ep8_on_8_gpu_nodes(order):
    # TP 4 x DP 16 x PP 2 = 128 ranks; the expert grid: etp 4, ep 8, edp 64 / (4 x 8) = 2, pp 2.  EP comes right
    # after ETP in both orders, so an EP group is {b, b + 4, ..., b + 28} inside 32 consecutive ranks: for b = 0,
    # ranks 0 4 | 8 12 | 16 20 | 24 28 -> 2 ranks on each of 4 nodes, over the NIC
    assert placement.group("ep", order, 8, 4, 1, 16, 2, 8, 4) == Group(8, 2, 4, "nic")
    # the ETP group is 4 consecutive ranks {0, 1, 2, 3}: one node
    assert placement.group("etp", order, 8, 4, 1, 16, 2, 8, 4) == Group(4, 4, 1, "nvlink")
    # ETP 1, the same EP 8: 8 consecutive ranks, one node
    assert placement.group("ep", order, 8, 4, 1, 16, 2, 8, 1) == Group(8, 8, 1, "nvlink")


def test_expert_data_group_follows_the_order_at_etp4():
    # same grid: an expert-data group is 2 ranks; default (etp-ep-edp-pp) 4 x 8 = 32 apart, {0, 32};
    # NeMo's (etp-ep-pp-edp) 4 x 8 x 2 = 64 apart, {0, 64}: each on 2 nodes of 8
    assert placement.group("edp", "tp-cp-ep-dp-pp", 8, 4, 1, 16, 2, 8, 4) == Group(2, 1, 2, "nic")
    assert placement.group("edp", "tp-cp-ep-pp-dp", 8, 4, 1, 16, 2, 8, 4) == Group(2, 1, 2, "nic")
    # on 72-GPU racks: default {r, r + 32} with r in 0..31 (stage 0: one rack) or 64..95 (stage 1: {64, 96} straddles
    # 72) -> 2 racks; NeMo's {r, r + 64}, r in 0..63: {8, 72} straddles too; r < 8 does not
    assert placement.group("edp", "tp-cp-ep-dp-pp", 72, 4, 1, 16, 2, 8, 4) == Group(2, 1, 2, "nic")
    assert placement.group("edp", "tp-cp-ep-pp-dp", 72, 4, 1, 16, 2, 8, 4) == Group(2, 1, 2, "nic")
    # at ETP 1 the expert-data group is 8 ranks: default {0, 8, ..., 56}, one per node
    assert placement.group("edp", "tp-cp-ep-dp-pp", 8, 4, 1, 16, 2, 8, 1) == Group(8, 1, 8, "nic")


def test_ep_group_straddling_a_72_gpu_rack():
    # TP 4 x DP 64 x PP 1 = 256 ranks, ETP 4, EP 8: EP groups span ranks 32g .. 32g + 31 with members 4 apart.
    # Rack boundaries at 72, 144, 216: the group from 64 has {64, 68} | {72 .. 92} (2, 6); from 128: {128 .. 140} |
    # {144 .. 156} (4, 4); from 192: {192 .. 212} | {216, 220} (6, 2).  Slowest: 2 racks, then the fewest in one
    # -> the (4, 4) group: per_node 4
    assert placement.group("ep", placement.DEFAULT_ORDER, 72, 4, 1, 64, 1, 8, 4) == Group(8, 4, 2, "nic")
    # ETP 4: the ETP groups are 4 ranks from multiples of 4; 72 and 144 are multiples of 4: none straddles
    assert placement.group("etp", placement.DEFAULT_ORDER, 72, 4, 1, 64, 1, 8, 4) == Group(4, 4, 1, "nvlink")


def test_etp_group_straddles_where_etp_does_not_divide_the_domain():
    # ETP 16 on 72-GPU racks (TP 16 x DP 16 = 256, EP 1): the ETP group from 64 is 64 .. 79, 8 on each side of 72
    assert placement.group("etp", placement.DEFAULT_ORDER, 72, 16, 1, 16, 1, 1, 16) == Group(16, 8, 2, "nic")


def test_kernel_layout_reads_etp_for_its_expert_groups():
    # a Layout built without a run (no places) places its groups itself, with its expert_tensor: TP 4, EP 8, ETP 4 on
    # 8-GPU nodes, as above
    lay = kernels.Layout(seq=4096, micro_batch=1, tensor=4, expert=8, expert_tensor=4)
    assert lay.group("ep", 8) == Group(8, 2, 4, "nic")
    assert lay.group("etp", 8) == Group(4, 4, 1, "nvlink")


def test_expert_grid_must_fill_the_ranks():
    with pytest.raises(ValueError, match="expert-tensor x expert"):
        placement.group("etp", placement.DEFAULT_ORDER, 8, 4, 1, 1, 1, 2, 4)  # 2 x 4 = 8 does not divide 4


def _xt(etp: int):
    from pathlib import Path

    from dualpipe_sim.inputs import scenario
    from dualpipe_sim.model import derive

    sc = scenario.load(Path(__file__).resolve().parents[1] / "scenarios/validation/xt-qwen3-235b-tp2ep8pp8.toml")
    return derive.setup(sc.model_copy(update={"parallel": sc.parallel.model_copy(update={"expert_tensor": etp})}))


def test_a_runs_expert_groups_take_its_etp():
    # the XT row: TP 2, EP 8, DP 16 on H800 nodes of 8, 32 ranks a stage.  ETP 1: an EP group is 8 consecutive
    # ranks, one node; expert-data 32 / 8 = 4 ranks 8 apart, one a node
    one = _xt(1)
    assert one.group("ep") == Group(8, 8, 1, "nvlink") and one.group("edp") == Group(4, 1, 4, "nic")
    # ETP 2: EP ranks 2 apart over 16 consecutive ranks, 4 on each of 2 nodes; expert-data 32 / (2 x 8) = 2 ranks
    # 16 apart, on 2 nodes; the ETP group {0, 1}: one node.  The kernels read the same (Layout.places)
    two = _xt(2)
    assert two.group("ep") == Group(8, 4, 2, "nic") and two.group("edp") == Group(2, 1, 2, "nic")
    places = dict(two.layout.places)
    assert places["ep"] == Group(8, 4, 2, "nic") and places["etp"] == Group(2, 2, 1, "nvlink")
    # so the all-to-all goes over the NIC at ETP 2 and stays on NVLink at ETP 1
    tb = kernels.Table(two.rates, two.layout, two.cfg)
    kernels.moe_mlp_block(tb, recompute=False)
    a2a = next(k for k in tb.rows if k.name == "all-to-all" and k.component == "dispatch_forward")
    assert a2a.shape.endswith("(nic)")


def test_etp_collectives_take_the_etp_groups_link():
    # an ETP group placed across racks (ETP 16 from rank 64 on racks of 72, as above) puts the ETP all-gather and
    # reduce-scatter on the NIC; inside one rack on NVLink
    from dualpipe_sim.model.rates import PRESETS

    cfg = _xt(1).cfg
    across = placement.group("etp", placement.DEFAULT_ORDER, 72, 16, 1, 16, 1, 1, 16)
    links = {}
    for where in (across, Group(16, 16, 1, "nvlink")):
        lay = kernels.Layout(seq=4096, micro_batch=1, tensor=16, expert=1, expert_tensor=16, places=(("etp", where),))
        tb = kernels.Table(PRESETS["GB200"], lay, cfg)
        kernels.moe_mlp_block(tb, recompute=False)
        # the four collectives (the casts are memory rows): "<op> <MB> over 16 (<link>)"
        etp = [k.shape for k in tb.rows if k.name.startswith("etp ") and " over 16 (" in k.shape]
        # dispatch: tokens' and probs' all-gather, their 2 reduce-scatters backward; combine: 1 each way -> 6
        assert len(etp) == 6
        links[where.link] = {shape.rsplit("(", 1)[-1] for shape in etp}
    assert links == {"nic": {"nic)"}, "nvlink": {"nvlink)"}}
