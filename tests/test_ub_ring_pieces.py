"""A userbuffers ring-exchange GEMM at TP 8, worked by hand (issue 21's audit; docs/model.md, "overlap").

Transformer Engine's ring-exchange all-gather (``CommOverlapP2PBase::split_overlap_ag``, TE release_v1.14
3b2a7b0, ``aggregate`` 0 as the MLPerf v5.0 Llama 3.1 405B yaml's qkv_fprop / fc1_fprop) runs one cuBLAS GEMM per
tensor rank's chunk: t GEMMs of M / t rows.  In the v5.0 rows (TP 8, CP 2, sequence 8,192, FP8) a rank's qkv has
M = 8,192 / 2 = 4,096 tokens, N = (128 + 2 x 8) x 128 / 8 = 2,304, K = 16,384, so 8 pieces of 512 x 2,304 x 16,384.

The GEMM model (gemm.py) fills 132 SMs with tiles of 128 x 256, 256 x 128 or 128 x 128 and K splits of 1, 2, 4,
8, 16 (slices of at least 256, at most two rounds), cuBLASLt FP8 with k_overhead 0:
  piece: 36, 36 or 72 tiles; the best is 72 work units in one round (36 x 2 or 72 x 1; 36 x 4 = 144 is two
         rounds of 132, 36 x 8 = 288 more than two): 72 / 132 = 0.545 of the achievable peak;
  whole: 288, 288 or 576 tiles (no split: more than 132); 576 in 5 rounds of 132: 576 / 660 = 0.873.
So the 8 pieces cost 8 x (floor + 2 M/8 N K / (peak x 72/132)) = 1.74 x the whole GEMM: a wave-quantisation
figure of the model's split set (no kernel-level table reaches a 512-row FP8 GEMM at K 16,384: docs/model.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm, kernels
from dualpipe_sim.model.rates import PRESETS

H100 = PRESETS["H100"]
SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "validation" / "mlperf50-llama405b-512.toml"
M, N, K, TP = 4096, 2304, 16384, 8


def _by_hand(rows: int, useful: float) -> float:
    r = H100.gemm_fp8  # cuBLASLt FP8: k_overhead 0, so the mainloop share is 1
    return r.floor + 2.0 * rows * N * K / (r.peak * useful)


def test_tile_counts_by_hand():
    assert gemm.efficiency(M // TP, N, K, 132, 0.0) == pytest.approx(72 / 132)
    assert gemm.efficiency(M, N, K, 132, 0.0) == pytest.approx(576 / 660)


def test_ring_pieces_against_the_whole_gemm():
    cfg = derive.setup(scenario.load(SCENARIO)).cfg
    tb = kernels.Table(H100, kernels.Layout(seq=8192, micro_batch=1, tensor=TP, context=2, fp8=True), cfg)
    pieces = tb.tp_linear("qkv", "attn_forward", M, N, K, "all_gather", M * 16384.0, "ring")
    whole = tb.gemm("qkv whole", "attn_forward", M, N, K)
    assert pieces == pytest.approx(TP * _by_hand(M // TP, 72 / 132))
    assert whole == pytest.approx(_by_hand(M, 576 / 660))
    assert pieces / whole == pytest.approx(1.735, abs=0.002)


def test_the_scenario_runs_these_pieces():
    """The v5.0 scenario's qkv row is the 8 pieces above: M after the context split, N after the tensor split."""
    st = derive.setup(scenario.load(SCENARIO))
    rows = [r for r in kernels.layer(st.cfg, 1, st.rates, st.layout) if r.name == "qkv"]
    assert len(rows) == 1
    assert rows[0].shape.startswith(f"{M} x {N} x {K} fp8 ({TP} splits")
    assert rows[0].seconds == pytest.approx(TP * _by_hand(M // TP, 72 / 132))
