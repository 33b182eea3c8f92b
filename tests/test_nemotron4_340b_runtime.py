"""Nemotron-4 340B's rows run their pipeline hand-offs and tensor-parallel collectives as the cited launcher config
says (NVIDIA/NeMo-Framework-Launcher @ 6daee02 `launcher_scripts/conf/training/nemotron/nemotron_340b.yaml`):
`overlap_p2p_comm: False`, `batch_p2p_comm: True` (lines 135-136) and `ub_tp_comm_overlap: False` (line 156).

NeMo 1 copies the first two into Megatron-core's ModelParallelConfig and sets `batch_p2p_sync: True`; the interleaved
schedule then sends and receives as one batch, waits, and synchronizes the device: blocking P2P. `ub_tp_comm_overlap`
is NeMo's `tp_comm_overlap`: off, the tensor-parallel collectives are NCCL's (docs/model.md, "Nemotron-4's runs: what
the launcher configs say").

The attention core: head dim 192 (18,432 / 96). Transformer Engine's cuDNN fused attention takes head_dim <= 128 in
every release before the report (v1.7 @ 4e7caa1, `common/fused_attn/fused_attn.cpp` line 142; > 128 from v1.8,
2024-07-24, with cuDNN 9), so its DotProductAttention ran flash-attn 2, which takes head dims up to 256.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive

VALIDATION = Path(__file__).resolve().parents[1] / "scenarios" / "validation"


@pytest.mark.parametrize("dp", [16, 32, 64])
def test_p2p_blocks_and_tensor_collectives_are_nccls(dp):
    sc = scenario.load(VALIDATION / f"nemotron4-340b-dp{dp}.toml")
    assert sc.comm.p2p_mode == "blocking"  # as the file gives it, not derived
    assert sc.p2p_mode() == "blocking"
    assert sc.parallel.tp_comm_overlap is False


def test_tensor_collectives_exposed_whole_in_the_forward():
    """Userbuffers split a column-parallel GEMM into TP pieces beside its ring all-gather; with NCCL's collectives every
    forward GEMM stays whole and each sub-layer's all-gather and reduce-scatter of the whole activation is on the
    critical path: 4,096 tokens x 18,432 x 2 bytes = 150,994,944 bytes, 7/8 of it over NVLink at 321 GB/s bus bandwidth
    (132,120,576 / 321e9 = 411.59 us) + 25.5 us = 437.09 us each, two of each a layer forward."""
    sc = scenario.load(VALIDATION / "nemotron4-340b-dp16.toml")
    rows = derive.layer_kernels(derive.setup(sc), 0)
    forward = [r for r in rows if r.component in ("attn_forward", "mlp_forward")]
    assert not [r for r in forward if "splits" in r.shape]
    collectives = [r for r in forward if r.name in ("tp all-gather", "tp reduce-scatter")]
    assert sorted(r.name for r in collectives) == ["tp all-gather"] * 2 + ["tp reduce-scatter"] * 2
    for r in collectives:
        assert r.seconds == pytest.approx(25.5e-6 + 7 / 8 * 4096 * 18432 * 2 / 321e9, rel=1e-6)


def test_head_dim_192_runs_flash_attn_2():
    """flash-attn 2's H100 curve: 350 TFLOP/s x s / (s + 400) forward, 327 x s / (s + 580) backward, plus the 2.5 us
    kernel floor. One GQA group's rank runs 96 / 8 = 12 heads of 192 on 4,096 tokens, causal: 2 matmuls x 2 FLOPs x
    4,096^2 x 12 x 192 / 2 = 77,309,411,328 FLOPs forward (242.45 us at 318.86 TFLOP/s), 2.5 x that backward
    (674.74 us at 298.72 TFLOP/s)."""
    sc = scenario.load(VALIDATION / "nemotron4-340b-dp32.toml")
    assert sc.model.attention_kernel == "flash-attn-2"
    assert sc.model.hidden_size // sc.model.num_attention_heads == 192
    rows = {r.name: r for r in derive.layer_kernels(derive.setup(sc), 0)}
    s, f = 4096, 2 * 2 * 4096**2 * 12 * 192 / 2
    assert rows["flash attention"].flops == f == 77_309_411_328
    assert rows["flash attention"].seconds == pytest.approx(2.5e-6 + f / (350e12 * s / (s + 400)), rel=1e-6)
    assert rows["flash attention backward"].seconds == pytest.approx(2.5e-6 + 2.5 * f / (327e12 * s / (s + 580)),
                                                                     rel=1e-6)
