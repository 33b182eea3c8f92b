"""The MoE all-to-all across nodes, per dispatcher (issue 21): Megatron's alltoall dispatcher through NCCL
sends one row per (token, expert) and its bytes bound for other nodes cross the GPU's NIC at the NIC's bus
bandwidth; DeepEP's normal kernels send a token once per destination node and run at DeepEP's measured
logical bandwidth (its README's H800 table, tests/data/kernels/deepep_h800_internode.csv).  Expected figures
are worked by hand from those rules and the table; sources in docs/model.md ("Kernel rates")."""

from __future__ import annotations

from math import comb
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, kernels
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "kernels" / "deepep_h800_internode.csv"
H800 = PRESETS["H800"]


def _rows() -> list[dict]:
    return kernel_table(DATA)


def _cfg(name: str):
    return derive.setup(scenario.load(ROOT / "scenarios" / "validation" / f"{name}.toml")).cfg


def _a2a(cfg, rates, **layout) -> dict[str, kernels.Kernel]:
    """The all-to-all rows of one MoE layer's kernel table, by component."""
    tb = kernels.Table(rates, kernels.Layout(seq=4096, micro_batch=1, **layout), cfg)
    kernels.moe_mlp_block(tb, recompute=False)
    return {k.component: k for k in tb.rows if k.name == "all-to-all"}


# -- the data ---------------------------------------------------------------------------------------------
def test_hopper_presets_hold_deepeps_table():
    rows = _rows()
    assert [int(r["ep"]) for r in rows] == [16, 32, 64] and all(int(r["nodes"]) * 8 == int(r["ep"]) for r in rows)
    for name in ("H100", "H800", "H200"):
        rates = PRESETS[name]
        assert rates.deepep_dispatch == tuple((float(r["ep"]), float(r["dispatch_gbs"]) * 1e9) for r in rows)
        assert rates.deepep_combine == tuple((float(r["ep"]), float(r["combine_gbs"]) * 1e9) for r in rows)
    assert PRESETS["B200"].deepep_dispatch == () and PRESETS["A100"].deepep_dispatch == ()  # no table reached


def test_deepep_rate_between_and_beyond_the_rows():
    # the table's rows exactly; EP 48 is log2(48 / 32) = 0.585 of the way (in log2) from 32 to 64:
    # 58 - 7 x 0.585 = 53.905 GB/s; past the ends, the end rows
    mb = 100e6
    assert collectives.deepep(mb, 32, H800, combine=False) == pytest.approx(mb / 58e9)
    assert collectives.deepep(mb, 32, H800, combine=True) == pytest.approx(mb / 57e9)
    assert collectives.deepep(mb, 48, H800, combine=False) == pytest.approx(mb / 53.905e9, rel=1e-4)
    assert collectives.deepep(mb, 256, H800, combine=True) == pytest.approx(mb / 50e9)
    assert collectives.deepep(mb, 9, H800, combine=False) == pytest.approx(mb / 43e9)
    assert collectives.deepep(0.0, 32, H800, combine=False) == 0.0
    # a custom [hardware] NIC scales DeepEP's figures with it
    assert collectives.deepep(mb, 32, H800.scaled(nic=0.5), combine=False) == pytest.approx(mb / 29e9)


# -- one dispatch by hand -----------------------------------------------------------------------------------
# Qwen3-235B-A22B as xtuner ran it: TP 2 (sequence parallel), EP 32 = 4 nodes of 8, 4,096 tokens, micro-batch 1,
# BF16, hidden 4,096, 128 experts, top-8.  This rank's tokens: 4096 / 2 = 2,048.
N, H, K, NODES = 2048, 4096, 8, 4


def test_nccl_dispatch_by_hand():
    # Megatron's alltoall dispatcher: 8 rows per token, 3/4 of them bound for the 3 other nodes (balanced
    # routing): 2048 x 8 x 3/4 x 4096 x 2 B = 100.66 MB over the NIC at 47 GB/s, plus 25.5 us
    rows = _a2a(_cfg("xt-qwen3-235b-tp2ep32pp8vpp4"), H800, tensor=2, expert=32, dispatcher="alltoall")
    sent = N * K * 3 / 4 * H * 2
    assert sent == pytest.approx(100.663e6, rel=1e-5)
    for comp in ("dispatch_forward", "combine_forward", "dispatch_backward", "combine_backward"):
        assert rows[comp].bytes == pytest.approx(sent)
        assert rows[comp].seconds == pytest.approx(25.5e-6 + sent / 47e9)  # 2.1673 ms
    assert rows["dispatch_forward"].seconds == pytest.approx(2.1673e-3, rel=1e-4)


def test_deepep_dispatch_by_hand():
    # DeepEP: a token goes once to each node its 8 experts fall on: 4 (1 - (3/4)^8) = 3.59955 nodes, its own
    # included, as DeepEP's test counts its logical bytes: 2048 x 3.59955 x 4096 x 2 B = 60.39 MB; at EP 32 the
    # dispatch kernel runs at 58 GB/s (1.0412 ms), the combine kernel at 57 (1.0595 ms); the combine kernel also
    # carries the dispatch's backward, the dispatch kernel the combine's backward.
    rows = _a2a(_cfg("xt-qwen3-235b-tp2ep32pp8vpp4-deepep"), H800, tensor=2, expert=32, dispatcher="deepep")
    distinct = NODES * (1 - (3 / 4) ** K)
    assert distinct == pytest.approx(3.59955, rel=1e-5)
    logical = N * distinct * H * 2
    assert rows["dispatch_forward"].seconds == pytest.approx(logical / 58e9)
    assert rows["dispatch_forward"].seconds == pytest.approx(1.0412e-3, rel=1e-4)
    assert rows["combine_backward"].seconds == pytest.approx(logical / 58e9)
    assert rows["combine_forward"].seconds == pytest.approx(logical / 57e9)
    assert rows["dispatch_backward"].seconds == pytest.approx(logical / 57e9)
    assert all(r.bytes == pytest.approx(logical) for r in rows.values())


def test_deepseek_runtime_takes_deepep_with_node_limited_routing():
    # DeepSeek-V3 (EP 64 = 8 nodes, a token limited to 4 nodes): its runtime is DeepEP's, whatever
    # model.moe_dispatcher says; 4,096 tokens x 4 nodes x 7,168 x (1 + 4/128) B FP8 dispatch at 51 GB/s
    cfg = derive.setup(scenario.load(ROOT / "scenarios" / "deepseek-v3-predicted.toml")).cfg
    tb = kernels.Table(H800, kernels.Layout(seq=4096, micro_batch=1, expert=64, fp8=True, deepseek=True), cfg)
    kernels._all_to_all(tb, 4096)
    rows = {k.component: k for k in tb.rows if k.name == "all-to-all"}
    fp8 = 4096 * 4 * 7168 * (1 + 4 / 128)
    assert rows["dispatch_forward"].seconds == pytest.approx(fp8 / 51e9)
    assert rows["combine_forward"].seconds == pytest.approx(4096 * 4 * 7168 * 2 / 50e9)


# -- invariants ---------------------------------------------------------------------------------------------
def test_nccl_moves_every_copy_deepep_each_node_once():
    cfg = _cfg("xt-qwen3-235b-tp2ep32pp8vpp4")
    nccl = _a2a(cfg, H800, tensor=2, expert=32, dispatcher="alltoall")
    deepep = _a2a(cfg, H800, tensor=2, expert=32, dispatcher="deepep")
    # the NIC carries k (N-1)/N copies of a token with NCCL, distinct (N-1)/N with DeepEP: 6 against 2.70
    remote_deepep = deepep["dispatch_forward"].bytes * (NODES - 1) / NODES
    assert nccl["dispatch_forward"].bytes / remote_deepep == pytest.approx(K / (NODES * (1 - (3 / 4) ** K)))
    assert all(nccl[c].seconds > 2 * deepep[c].seconds for c in nccl)


def test_inside_a_node_deepep_sends_a_token_once_per_rank():
    # EP 8 on one node, NVLink at the same bus rate: NCCL sends every (token, expert) copy that leaves the rank, DeepEP
    # a token once to each rank holding one of its experts (is_token_in_rank; DeepEP's intranode dispatch, s21m).  A
    # rank holds 16 of the 128 experts, none of a token's 8 with probability C(112, 8) / C(128, 8) = 0.332580, so
    # 8 x 0.667420 = 5.33936 ranks a token against 8 experts; 7/8 of either leaves the rank
    cfg = _cfg("xt-qwen3-235b-tp2ep32pp8vpp4")
    a = _a2a(cfg, H800, tensor=1, expert=8, dispatcher="alltoall")
    b = _a2a(cfg, H800, tensor=1, expert=8, dispatcher="deepep")
    none = comb(112, 8) / comb(128, 8)
    assert none == pytest.approx(0.332580, abs=1e-6)
    assert a["dispatch_forward"].bytes == pytest.approx(4096 * K * 7 / 8 * H * 2)
    assert b["dispatch_forward"].bytes == pytest.approx(4096 * 8 * (1 - none) * 7 / 8 * H * 2)
    for c in a:  # the same NVLink all-to-all rate for both: latency + bytes / bus bandwidth
        assert b[c].seconds - H800.latency == pytest.approx((a[c].seconds - H800.latency) * 5.33936 / K,
                                                                 rel=1e-5)


def test_deepep_without_a_table_keeps_the_nic_model():
    # B200 has no DeepEP table: a token once per remote node (2.70 copies) at the NIC's 47 GB/s, plus 25.5 us
    rows = _a2a(_cfg("xt-qwen3-235b-tp2ep32pp8vpp4"), PRESETS["B200"], tensor=2, expert=32, dispatcher="deepep")
    sent = N * NODES * (1 - (3 / 4) ** K) * 3 / 4 * H * 2
    assert rows["dispatch_forward"].seconds == pytest.approx(25.5e-6 + sent / 47e9)
