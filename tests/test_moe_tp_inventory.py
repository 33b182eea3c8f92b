"""What the TP > 1 inventory of the MoE layer added (issue 21, s11c; docs/model.md, "The MoE layer at TP > 1 as
Megatron-core runs it").

The routing probabilities' own all-to-all: Megatron-core's
alltoall dispatcher sends the permuted rows' probabilities in a second NCCL all-to-all after the tokens'
(``MoEAlltoAllTokenDispatcher.token_dispatch`` since 2659630, Apr 2025; at 6a6cd478, the Pai-Megatron-Patch
2b201af submodule the xtuner and pai643 rows ran), and autograd sends their gradients back the same way in the
dispatch's backward.  The combine sends the expert outputs only, and DeepEP's dispatch carries the
probabilities in its own call.  Expected figures worked by hand: one fp32 probability per row that leaves the
rank, at the model's NVLink or NIC all-to-all rate (latency + bytes / bus bandwidth).

The fused permute's row-id map: Transformer Engine's ``make_row_id_map`` (pytorch/triton/permutation.py @ v2.2, v2.4)
runs two Triton kernels over the n x E routing map before the permute kernel, once per forward; the unpermute and
both backwards reuse the saved map."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, host, kernels
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
H800 = PRESETS["H800"]


def _cfg():
    return derive.setup(scenario.load(ROOT / "scenarios" / "validation" / "xt-qwen3-235b-tp4ep8pp8vpp4.toml")).cfg


def _rows(rates=H800, **layout) -> list[kernels.Kernel]:
    tb = kernels.Table(rates, kernels.Layout(seq=4096, micro_batch=1, **layout), _cfg())
    kernels.moe_mlp_block(tb, recompute=False)
    return tb.rows


def _probs(rows) -> dict[str, kernels.Kernel]:
    return {k.component: k for k in rows if k.name == "probs all-to-all"}


def test_probs_sent_apart_inside_a_node():
    # Qwen3-235B at TP 4, EP 8 on one H800 node: 4096 / 4 = 1,024 tokens a rank, top-8, 7 of 8 copies leave the
    # rank: 1,024 x 8 x 7 / 8 = 7,168 rows, 4 bytes each = 28,672 bytes, on the NVLink all-to-all rate
    probs = _probs(_rows(tensor=4, expert=8))
    assert set(probs) == {"dispatch_forward", "dispatch_backward"}  # not in the combine: outputs only
    bus = H800.nvlink_bus  # 155 GB/s, the H800 preset's NCCL bus rate inside a node
    for k in probs.values():
        assert k.bytes == 28_672
        assert k.seconds == pytest.approx(H800.latency + 28_672 / bus)
        assert k.kind == "comm"


def test_probs_across_nodes_only_the_copies_bound_elsewhere():
    # TP 2, EP 32 (4 nodes) with NCCL: 2,048 tokens a rank, each of its 8 copies bound for another node with
    # probability 3/4: 2,048 x 8 x 3 / 4 = 12,288 rows, 49,152 bytes at the NIC's rate
    probs = _probs(_rows(tensor=2, expert=32))
    bus = H800.nic_bus
    assert probs["dispatch_forward"].bytes == 49_152
    assert probs["dispatch_backward"].seconds == pytest.approx(H800.latency + 49_152 / bus)


def test_no_probs_all_to_all_where_deepep_carries_them_or_no_expert_parallelism():
    assert _probs(_rows(tensor=4, expert=8, dispatcher="deepep")) == {}
    assert _probs(_rows(tensor=4, expert=1)) == {}


def test_dispatch_components_sum_both_calls():
    rows = _rows(tensor=4, expert=8)
    by = kernels.by_component(rows)
    a2a = {k.component: k.seconds for k in rows if k.name == "all-to-all"}
    probs = _probs(rows)
    assert by["dispatch_forward"] * 1e-3 == pytest.approx(
        a2a["dispatch_forward"] + probs["dispatch_forward"].seconds
        + next(k.seconds for k in rows if k.name == "token counts all-gather"))  # fmt: skip
    assert by["dispatch_backward"] * 1e-3 == pytest.approx(a2a["dispatch_backward"] + probs["dispatch_backward"].seconds)
    assert by["combine_forward"] * 1e-3 == pytest.approx(a2a["combine_forward"])


def test_host_launches_the_probs_call_after_the_tokens():
    # one more NCCL call in the forward, issued right after the tokens' all-to-all
    rows = _rows(tensor=4, expert=8)
    steps = host.forward_steps(rows, 4, 4, 16, "alltoall")
    labels = [s.label for s in steps]
    i = labels.index("probs all-to-all")
    assert labels[i - 1] == "all-to-all" and steps[i].ops == 1
    without = [k for k in rows if k.name != "probs all-to-all"]
    assert sum(s.ops for s in steps) == sum(s.ops for s in host.forward_steps(without, 4, 4, 16, "alltoall")) + 1


# -- the permute's row-id map ------------------------------------------------------------------------------
def _maps(rows) -> list[kernels.Kernel]:
    return [k for k in rows if k.name == "permute row-id map"]


def test_row_id_map_two_kernels_in_the_forward_only():
    # 1,024 tokens x 128 experts; pass 1 reads the bool map (1 B) and writes int64 (8 B), pass 2 reads and
    # rewrites it (8 + 8 B): 25 B x 131,072 = 3,276,800 bytes over two kernels, each at least the kernel floor
    (row,) = _maps(_rows(tensor=4, expert=8))
    assert row.component == "mlp_forward"
    assert row.bytes == 3_276_800
    assert row.seconds == pytest.approx(2 * H800.floor + 3_276_800 / H800.hbm)
    assert row.bound == "latency"  # 5 us of floors against 1.15 us of bytes


def test_row_id_map_rerun_with_the_forward_under_full_recompute():
    tb = kernels.Table(H800, kernels.Layout(seq=4096, micro_batch=1, tensor=4, expert=8), _cfg())
    kernels.moe_mlp_block(tb, recompute=True)
    assert [k.component for k in _maps(tb.rows)] == ["mlp_forward", "mlp_backward_input"]


def test_host_launches_the_maps_two_kernels_before_the_permute():
    rows = _rows(tensor=4, expert=8, dispatcher="deepep")
    steps = host.forward_steps(rows, 4, 4, 16, "deepep")
    labels = [s.label for s in steps]
    i = labels.index("permute row-id map")
    assert labels[i + 1] == "permute" and steps[i].ops == 2
