"""Tensor-parallel NCCL collectives beside GEMMs, no userbuffers (s12j).

The CTA count, from NCCL v2.12.12-1's rules for one 8-GPU DGX A100 node (NVSwitch, single-node communicator: the NICs
trimmed, ncclTopoTrimSystem): each GPU's NVLink width is 12 links x 22 GB/s (SM80_NVLINK_WIDTH) = 264 GB/s
(getTotalWidth); the ring search starts at speedArrayIntra's first 44 GB/s a channel and stops when
channels x speed >= 264: 6 channels; ncclTopoCompute doubles them (speed 44 >= 25): 12; ncclTopoPostset doubles
again (min(MAXCHANNELS 32, 2 x 12)): 24, one CTA each.  A message keeps them all while nBytes >= nc x nt x
threshold = 24 x 512 x 64 B = 786,432 B (getAlgoInfo, Simple).

Beside its collective a GEMM runs on held(24) rates for as long as the collective lasts, on the whole GPU after
(kernels.beside_transfer): with the collective c shorter than the GEMM on held rates H, c + A (1 - c / H), A alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, gemm, kernels
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parent.parent
K22 = ROOT / "scenarios" / "validation" / "k22-22b-full.toml"
A100 = PRESETS["A100"]


def test_nccl_ctas_of_an_a100_node_worked_from_ncclTopoCompute():
    width = 12 * 22.0
    channels = 0
    while channels * 44.0 < width:
        channels += 1
    assert channels == 6
    ctas = min(32, 2 * min(16, 2 * channels))  # ncclTopoCompute's doubling (ring maxChannels 16), then Postset's
    assert ctas == 24 == kernels.tp_nccl_ctas(A100, 8, "all_gather", 1e8) == kernels.tp_nccl_ctas(A100, 2, "all_reduce", 1e8)
    assert 24 * 512 * 64 == 786_432
    assert kernels.tp_nccl_ctas(A100, 1, "all_gather", 1e8) == 0 == kernels.tp_nccl_ctas(A100, 16, "all_gather", 1e8)
    # H100's 8: the ring's 24 for a 100 MB all-gather (NCCL's tuner picks it over NVLS: tests/test_nccl_nvls.py)
    assert kernels.tp_nccl_ctas(PRESETS["H100"], 8, "all_gather", 1e8) == 24


def _layer(sp: bool, runtime: str = "megatron-core"):
    sc = scenario.load(K22, [f"parallel.sequence_parallel={str(sp).lower()}", f"model.runtime={runtime}"])
    st = derive.setup(sc)
    return st, {(k.name, k.component): k for k in derive.layer_kernels(st, 0)}


def _alone_held(st, m, n, k):
    r = st.rates
    return tuple(gemm.time(m, n, k, r.gemm_bf16, r.sms, r.hbm, 2.0, out_bytes=st.layout.wgrad_out, held=h,
                           schedule="waves").seconds for h in (0, 24))  # fmt: skip


def test_wgrad_beside_the_all_reduce_held_then_whole():
    """No SP (k22 22B: h 6,144, TP 8, micro-batch 4 x 2,048 = 8,192 tokens, fp16): fc1's wgrad (6,144 x 3,072 x
    8,192 a rank) beside the 100.7 MB input-gradient all-reduce: held rates for the all-reduce, full after."""
    st, rows = _layer(False)
    ar = collectives.time("all_reduce", 8192 * 6144 * 2, 8, st.rates, "nvlink")
    alone, held = _alone_held(st, 6144, 4 * 6144 // 8, 8192)
    assert held > alone and held > ar  # 84 of 108 SMs: slower, and the all-reduce ends inside it
    fc1 = rows[("fc1 wgrad", "mlp_backward_weight")]
    assert fc1.seconds == pytest.approx(ar + alone * (1 - ar / held), rel=1e-12)
    assert alone < fc1.seconds < held
    exposed = rows[("tp all-reduce (grad)", "mlp_backward_weight")].seconds
    assert exposed == pytest.approx(max(0.0, ar - fc1.seconds), abs=1e-15)


def test_sequence_parallel_regather_beside_dgrad_and_reduce_scatter_beside_wgrad():
    """With SP and no userbuffers (Megatron 80389ef): the input's all-gather runs beside the dgrad GEMM, the input
    gradient's reduce-scatter beside the wgrad GEMM, each exposed only beyond its GEMM."""
    st, rows = _layer(True)
    assert not st.layout.tp_overlap
    nbytes = 8192 * 6144 * 2
    rs = collectives.time("reduce_scatter", nbytes, 8, st.rates, "nvlink")
    ag = collectives.time("all_gather", nbytes, 8, st.rates, "nvlink")
    alone, held = _alone_held(st, 6144, 4 * 6144 // 8, 8192)
    fc1 = rows[("fc1 wgrad", "mlp_backward_weight")]
    assert fc1.seconds == pytest.approx(rs + alone * (1 - rs / held), rel=1e-12)
    assert rows[("tp reduce-scatter (grad)", "mlp_backward_weight")].seconds == pytest.approx(max(0.0, rs - fc1.seconds), abs=1e-15)
    dgrad = rows[("fc1 dgrad", "mlp_backward_input")]
    assert dgrad.seconds > 0 and "24 SMs held" in dgrad.shape
    assert rows[("tp all-gather (wgrad input)", "mlp_backward_input")].seconds == pytest.approx(max(0.0, ag - dgrad.seconds), abs=1e-15)


def test_legacy_all_reduce_after_the_backward_holds_nothing():
    """Megatron-LM 2021 all-reduces after the linear's whole backward: no GEMM beside it, nothing held."""
    st, rows = _layer(False, "megatron-lm-2021")
    alone, _ = _alone_held(st, 6144, 4 * 6144 // 8, 8192)
    assert rows[("fc1 wgrad", "mlp_backward_weight")].seconds == pytest.approx(alone, rel=1e-12)


def test_gemm_beside_a_short_collective_takes_full_rate_after():
    """Invariant on a Table: a GEMM beside a collective of c seconds takes c + A (1 - c / H); beside none, A."""
    st, _ = _layer(False)
    lay = replace(st.layout, sequence_parallel=False)
    tb = kernels.Table(st.rates, lay, st.cfg)
    alone, held = _alone_held(st, 6144, 6144, 8192)
    with tb.nccl_beside("x", "mlp_backward_weight", "all_reduce", 8e6):
        secs = tb.gemm("g", "mlp_backward_weight", 6144, 6144, 8192, out_bytes=lay.wgrad_out)
        after = tb.gemm("g2", "mlp_backward_weight", 6144, 6144, 8192, out_bytes=lay.wgrad_out)
    c = collectives.time("all_reduce", 8e6, 8, st.rates, "nvlink")
    assert c < held
    assert secs == pytest.approx(c + alone * (1 - c / held), rel=1e-12) and after == pytest.approx(alone, rel=1e-12)
    assert tb.rows[-1].name == "x" and tb.rows[-1].seconds == 0.0
