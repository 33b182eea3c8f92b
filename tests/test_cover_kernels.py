"""model/kernels.py's context-parallel exchange for eager attention (model.attention = "eager": no Transformer
Engine ring, so no per-step windows to hide it under), which the s16g coverage run found no test reaching.
The whole K/V exchange is exposed: (c - 1) sends of K and V forward, of K, V and dK, dV backward."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dualpipe_sim.model import collectives, kernels
from dualpipe_sim.model.config import ModelConfig
from dualpipe_sim.model.rates import PRESETS

H100 = PRESETS["H100"]
# Llama 3.1 8B's attention (32 query heads, 8 key/value heads, head dim 128), its scores in memory
EAGER = replace(ModelConfig("llama", 4096, 1, 128256, 32, 8, 128, 128, 14336), eager_attention=True)


def exchange(seq: int, context: int, tensor: int = 1) -> list[kernels.Kernel]:
    tb = kernels.Table(H100, kernels.Layout(seq, 1, tensor=tensor, context=context), EAGER)
    kernels.context_exchange(tb)
    return tb.rows


@pytest.mark.parametrize("context,link", [(2, "nvlink"), (4, "nvlink"), (16, "nic")])
def test_eager_exchange_by_hand(context, link):
    seq = 8192
    tokens = seq // context  # one micro-batch's tokens on this context rank
    kv = 2 * tokens * 8 * 128 * 2  # K and V, 8 heads x 128, bf16
    bw = collectives.bus(H100, link)  # NVLink while tensor x context fits the node's 8 GPUs, else the NIC
    fwd, bwd = exchange(seq, context)
    assert (fwd.component, bwd.component) == ("attn_forward", "attn_backward_input")
    assert fwd.kind == bwd.kind == "comm" and fwd.flops == bwd.flops == 0.0
    assert fwd.bytes == (context - 1) * kv and bwd.bytes == (context - 1) * 2 * kv
    assert fwd.seconds == pytest.approx((context - 1) * (H100.latency + kv / bw), rel=1e-12)
    assert bwd.seconds == pytest.approx((context - 1) * (H100.latency + 2 * kv / bw), rel=1e-12)
    assert fwd.shape == f"{context - 1} x {kv / 1e6:.3g} MB ({link})"


def test_tensor_parallelism_splits_the_kv_heads_and_one_context_rank_sends_nothing():
    (fwd, _) = exchange(8192, 2, tensor=4)  # 8 KV heads / 4 = 2 a rank; 2 x 4 = 8 GPUs: still NVLink
    assert fwd.bytes == 2 * 4096 * 2 * 128 * 2
    assert exchange(8192, 1) == []
