"""A forward reduce-scatter run as a userbuffers ring exchange, worked by hand (issue 21; docs/model.md, "overlap").

Transformer Engine release_v1.14 (3b2a7b0) ``CommOverlapP2PBase::split_overlap_rs`` (comm_gemm_overlap.cpp) runs,
for a yaml's ``method: ring_exchange`` (the MLPerf v5.0 405B H100 yaml h100tp8mbs1.yaml's proj_fprop and fc2_fprop):
t cuBLAS GEMMs of M / t rows (one per destination rank's chunk); after piece i the previous piece's output chunk is
sent, so t - 1 sends run beside pieces 2..t; then ``reduce_bf16`` (userbuffers.cu) on the main stream: one thread per
output value reads the t received 16-bit chunks (``inputs_half[tid + input_size * i]``, input_size = the chunk's
M / t x N values) and writes one 16-bit value.

The v5.0 rows' fc2 (TP 8, CP 2, sequence 8,192): M = 4,096 tokens, N = 16,384, K = 53,248 / 8 = 6,656; a chunk is
512 x 16,384 = 8,388,608 values, so the reduce moves (8 + 1) x 8,388,608 x 2 B = 150,994,944 B.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, kernels
from dualpipe_sim.model.rates import PRESETS

H100 = PRESETS["H100"]
SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "validation" / "mlperf50-llama405b-512.toml"
M, N, K, TP = 4096, 16384, 6656, 8
RS_BYTES = M * N * 2.0  # the reduced 16-bit output, whole
REDUCE_BYTES = 150_994_944


def _layout(**kw) -> kernels.Layout:
    return kernels.Layout(seq=8192, micro_batch=1, tensor=TP, context=2, fp8=True, **kw)


def _fc2(rates, lay):
    cfg = derive.setup(scenario.load(SCENARIO)).cfg
    tb = kernels.Table(rates, lay, cfg)
    secs = tb.tp_linear("fc2", "mlp_forward", M, N, K, "reduce_scatter", RS_BYTES, "pipeline", ub="fc2_fprop")
    piece = kernels.Table(rates, lay, cfg).gemm("one piece", "mlp_forward", M // TP, N, K)
    return tb, secs, piece


def test_reduce_bytes_by_hand():
    assert (TP + 1) * (M // TP) * N * 2 == REDUCE_BYTES


@pytest.mark.parametrize("nvlink", [1.0, 0.01])  # sends hidden under the pieces; sends far longer than the pieces
def test_one_ring_reduce_scatter_forward(nvlink):
    rates = H100.scaled(nvlink=nvlink)
    tb, secs, piece = _fc2(rates, _layout(ub_ring_rs=("fc2_fprop",), ub_sms=(("fc2_fprop", 0),)))
    assert secs == pytest.approx(TP * piece)  # t pieces of M / t rows, on every SM (num_sm 0: no margin)
    gemm_row, comm_row, reduce_row = tb.rows
    assert gemm_row.shape.startswith(f"{M} x {N} x {K} fp8 ({TP} splits")
    assert reduce_row.bytes == REDUCE_BYTES
    assert reduce_row.seconds == pytest.approx(rates.floor + REDUCE_BYTES / rates.hbm)
    sends = collectives.time("reduce_scatter", RS_BYTES, TP, rates, "nvlink")
    assert comm_row.seconds == pytest.approx(max(0.0, sends - (TP - 1) * piece))  # beside pieces 2..t only
    if nvlink < 1:
        assert comm_row.seconds > 0.0


def test_pipeline_unchanged_without_the_key():
    """Without the key the overlap is the 4-split pipeline: no reduce kernel, 4 pieces."""
    tb, _, _ = _fc2(H100, _layout(ub_sms=(("fc2_fprop", 0),)))
    assert [r.kind for r in tb.rows] == ["gemm", "comm"]
    assert f"({kernels.UB_PIPELINE_SPLITS} splits" in tb.rows[0].shape


def test_the_v50_scenario_runs_both_as_rings():
    st = derive.setup(scenario.load(SCENARIO))
    assert st.ub_ring_rs == ("fc2_fprop", "proj_fprop")
    names = [r.name for r in kernels.layer(st.cfg, 1, st.rates, st.layout)]
    assert "fc2 ring reduce (reduce_bf16)" in names and "out_proj ring reduce (reduce_bf16)" in names


def _setup_with(text: str, tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(SCENARIO.read_text().replace("[parallel]\n", "[parallel]\n" + text + "\n", 1))
    return derive.setup(scenario.load(p))


def test_unknown_name_is_refused(tmp_path):
    p = tmp_path / "s.toml"
    line = 'tp_overlap_ring_rs = ["proj_fprop", "fc2_fprop"]'
    assert SCENARIO.read_text().count(line) == 1
    p.write_text(SCENARIO.read_text().replace(line, 'tp_overlap_ring_rs = ["qkv_dgrad"]'))
    with pytest.raises(Exception, match="tp_overlap_ring_rs.*unknown overlap 'qkv_dgrad'"):
        derive.setup(scenario.load(p))


def test_ring_and_atomic_together_are_refused(tmp_path):
    text = SCENARIO.read_text()
    assert "tp_overlap_atomic" not in text
    with pytest.raises(Exception, match="parallel.tp_overlap_ring_rs: fc2_fprop also in parallel.tp_overlap_atomic"):
        _setup_with('tp_overlap_atomic = ["fc2_fprop"]', tmp_path)
