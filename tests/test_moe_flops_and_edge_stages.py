"""MoE FLOPs per token and the first and last stages' activation bytes, worked by hand.

FLOPs follow the convention in dualpipe_sim/model/flops.py (Megatron-LM,
Narayanan et al. 2021, Sec. 5.1): a matmul of (m x k) by (k x n) is 2mkn, only
matmuls count, attention counts the full s x s square, training = 3 x forward.
So per token, a weight matrix of K x N elements costs 2KN, and one layer's
attention core costs 2 s a (d_qk + d_v) (QK^T and attention over V).

Activation bytes follow Korthikanti et al. 2022 (Sec. 4, "Reducing Activation
Recomputation in Large Transformer Models"): besides its layers, the first stage
keeps the embedding's dropout mask (s b h bytes, when there is dropout) and the
last stage keeps the final norm's input and the output projection's input
(2 s b h each, 16-bit) and the logits the cross-entropy reads, in fp32:
4 s b V bytes (their Sec. 4.3).  Those two ranks are the ones that run out of
memory first, so an error there matters most.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.model import activations, config, derive, flops
from dualpipe_sim.inputs.scenario import from_dict, sections_only

ROOT = Path(__file__).resolve().parent.parent
DEEPSEEK = ROOT / "scenarios" / "models" / "deepseek-v3.json"
MIXTRAL = ROOT / "tests" / "data" / "mixtral-8x7b-config.json"  # mistralai/Mixtral-8x7B-v0.1 config.json
GPT2 = ROOT / "tests" / "data" / "gpt2-config.json"


# -- FLOPs per token ---------------------------------------------------------------------------
def test_deepseek_v3_flops_per_token_by_hand():
    cfg = config.read(DEEPSEEK)
    s, h, V, a, E = 4096, 7168, 129280, 128, 256
    # MLA weights (no norms): q_a h x 1536, q_b 1536 x 128 x (128 + 64), kv_a h x (512 + 64),
    # kv_b 512 x 128 x (128 + 128), o 128 x 128 x h.
    mla = h * 1536 + 1536 * 128 * 192 + h * 576 + 512 * 128 * 256 + 128 * 128 * h
    assert mla == 187_105_280
    attn_linear = 2 * mla
    core = 2 * s * a * (192 + 128)  # QK^T over 192-wide heads, AV over 128-wide values
    dense_mlp = 2 * 3 * h * 18432  # SwiGLU: gate, up, down
    expert = 3 * h * 2048
    router = h * E  # the gate's h x 256 matmul: every token is scored against every expert
    moe_mlp = 2 * (8 * expert + 1 * expert + router)  # 8 routed + 1 shared expert + router
    head = 2 * h * V
    dense_layer, moe_layer = attn_linear + core + dense_mlp, attn_linear + core + moe_mlp
    forward = 3 * dense_layer + 58 * moe_layer + head  # first_k_dense_replace = 3 of 61 layers
    f = flops.per_token(cfg, s)
    assert f.forward == forward
    assert f.training == 3 * forward
    assert f.attention == 3 * 61 * core
    assert f.six_n == 3 * (forward - 61 * core)
    # One MTP module (depth 1): a 2h -> h projection, one MoE layer, the shared output head.
    assert f.mtp_forward == 2 * 2 * h * h + moe_layer + head
    # Each part on its own, so that a dropped term is named by the failure.
    moe = flops.layer(cfg, 10, s)
    assert (moe.attn_linear, moe.attn_core, moe.mlp) == (attn_linear, core, moe_mlp)
    assert moe.mlp - 2 * 9 * expert == 2 * router == 2 * 7168 * 256
    assert flops.layer(cfg, 0, s).mlp == dense_mlp
    # Without attention, 2 FLOPs per activated matmul weight: DeepSeek's 36.6B activated
    # (README_WEIGHTS.md, head included) -> about 73.2 GFLOPs per token.
    assert 73.0e9 < forward - 61 * core < 73.5e9


def test_mixtral_8x7b_flops_per_token_by_hand():
    cfg = config.read(MIXTRAL)
    s, h, V, a, kv, d, f_ff, E = 4096, 4096, 32000, 32, 8, 128, 14336, 8
    attn_linear = 2 * (h * a * d + 2 * h * kv * d + a * d * h)  # q, k and v (GQA: 8 heads), o
    core = 2 * s * a * (d + d)
    router = h * E
    mlp = 2 * (2 * 3 * h * f_ff + router)  # top-2 of 8 SwiGLU experts, and the router; no shared expert
    head = 2 * h * V
    layer = attn_linear + core + mlp
    got = flops.per_token(cfg, s)
    assert got.forward == 32 * layer + head
    assert flops.layer(cfg, 0, s).mlp == mlp
    assert got.mtp_forward == 0
    # 6N check: N = matmul parameters a token uses = 32 x (attention + 2 experts + router) + head,
    # 12.9B activated with the embedding (Mistral) minus the 131M embedding and the norms.
    n = 32 * (2 * h * h + 2 * h * 1024 + 2 * 3 * h * f_ff + h * E) + h * V
    assert got.six_n == 6 * n
    assert 12.6e9 < n < 12.8e9


# -- activation bytes of the first and last stages ---------------------------------------------
def _stages(sections: dict) -> list[float]:
    return list(derive.derive(derive.setup(sections_only(sections))).activation_bytes)


def test_gpt2_first_and_last_stage_activation_bytes_by_hand():
    s, b, h, a, V = 1024, 2, 768, 12, 50257
    layer = s * b * h * (34 + 5 * a * s / h)  # Korthikanti's per-layer count, no recompute
    embedding = 1 * s * b * h  # the embedding dropout mask, 1 byte per element
    head = 2 * s * b * h + 2 * s * b * h + 4 * s * b * V  # final-norm input, projection input, fp32 logits
    got = _stages({"pipeline": {"schedule": "1f1b", "stages": 3, "microbatches": 4},
                   "model": {"config": str(GPT2), "seq_length": s, "micro_batch_size": b, "attention": "eager"}})  # fmt: skip
    assert got == [4 * layer + embedding, 4 * layer, 4 * layer + head]
    # The logits alone: 4 x 1024 x 2 x 50257 = 411.7 MB, more than one layer (~176 MB).
    assert 4 * s * b * V == 411_705_344


def test_deepseek_v3_last_stage_with_mtp_and_head_by_hand():
    s, h, V = 4096, 7168, 129280
    fp8, e5m6 = 1 + 4 / 128, 1.5 + 4 / 128
    # One MoE layer under the deepseek policy, per token (as in test_model.py's hand count):
    moe_layer = s * (2 * h + 2 * 1536 + 2 * 576 + 4 * 128 + e5m6 * 128 * 128 + 2 * h + 4 * 256
                     + 8 * fp8 * (h + 2 * 2048) + fp8 * 2 * 2048)  # fmt: skip
    # One dense layer: the same attention, then the dense SwiGLU: gate and up outputs in BF16,
    # the down projection's FP8 input (an FP8 linear's input).
    dense_layer = s * (2 * h + 2 * 1536 + 2 * 576 + 4 * 128 + e5m6 * 128 * 128 + 2 * h
                       + 2 * 2 * 18432 + fp8 * 18432)  # fmt: skip
    head = 2 * s * h + 2 * s * h + 4 * s * V  # final norm in/out at 2 bytes, logits in fp32
    # MTP module: its two norm inputs (the embedding's and the previous depth's), the projection's
    # input is recomputed with those norms (deepseek policy), one MoE layer, and its own logits.
    mtp = 2 * 2 * s * h + moe_layer + head
    got = _stages({
        "pipeline": {"schedule": "dualpipe", "stages": 16, "microbatches": 32},
        "model": {"config": str(DEEPSEEK), "seq_length": s, "micro_batch_size": 1},
        "parallel": {"expert": 8, "data": 8, "layout": "Et*3|(t*4|)*14t*2mL"},
        "memory": {"recompute": "deepseek"}})  # fmt: skip
    assert got[0] == pytest.approx(3 * dense_layer, rel=1e-12)  # the embedding is a lookup: nothing more
    assert got[1] == pytest.approx(4 * moe_layer, rel=1e-12)
    assert got[15] == pytest.approx(2 * moe_layer + mtp + head, rel=1e-12)
    # The two fp32 logit tensors are 2 x 2.1 GB: the last stage holds more than 3 middle layers.
    assert 2 * 4 * s * V == 4_236_247_040


def test_peak_bytes_of_a_run_use_the_edge_stages_bytes():
    # 1F1B on 2 stages, M = 4: rank 0 holds 2 micro-batches' stage-0 activations at its peak,
    # rank 1 one of stage 1 (warm-up p - 1 - r = 1 and 0 forwards, plus the one in flight).
    s, b, h, a, V = 512, 1, 768, 12, 50257
    layer = s * b * h * (34 + 5 * a * s / h)
    first, last = 6 * layer + s * b * h, 6 * layer + 4 * s * b * h + 4 * s * b * V
    res = simulation.run(from_dict({
        "pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
        "costs": {"forward": 1.0, "backward": 2.0}, "comm": {"p2p": 0.0},
        "model": {"config": str(GPT2), "seq_length": s, "micro_batch_size": b, "attention": "eager"}}))  # fmt: skip
    ranks = res.metrics.per_rank
    assert [r.peak_activation for r in ranks] == [2, 1]
    assert [r.peak_activation_bytes for r in ranks] == pytest.approx([2 * first, last], rel=1e-12)
    assert activations.head(config.read(GPT2), s, b) == 4 * s * b * h + 4 * s * b * V
