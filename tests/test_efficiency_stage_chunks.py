"""With `hardware.efficiency` and no typed [chunk], an MoE model with expert parallelism is costed stage by stage
from its layout, as the kernel-level path does (s15k): each stage's layers of their own kind, the embedding and
the head on their stages.  Before, one chunk of the most common number of MoE layers stood for every stage.

The expected times are worked by hand from FLOPs / (peak x efficiency) (docs/model.md, "Derived times with
`hardware.efficiency`"); only the preset's published peak and NVLink figures are read from the code."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import report
from dualpipe_sim.model.hardware import PRESETS

# Qwen3-MoE-shaped, 8 layers, layer 0 dense (mlp_only_layers), layers 1-7 MoE; BF16
H, HEADS, KV, D, FFN, MOE_FFN, EXPERTS, TOPK, VOCAB = 2048, 32, 4, 128, 6144, 768, 128, 8, 151936
SEQ, EFF, EP = 4096, 0.4, 8


def raw(layout: str = "Et|t*2|t*2|t*3L", **hardware) -> dict:
    return {
        "pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8},
        "model": {"model_type": "qwen3_moe", "hidden_size": H, "num_hidden_layers": 8, "num_attention_heads": HEADS,
                  "num_key_value_heads": KV, "head_dim": D, "intermediate_size": FFN, "moe_intermediate_size": MOE_FFN,
                  "num_experts": EXPERTS, "num_experts_per_tok": TOPK, "vocab_size": VOCAB, "mlp_only_layers": [0],
                  "seq_length": SEQ, "micro_batch_size": 1},
        "parallel": {"expert": EP, "data": 8, "layout": layout},
        "hardware": {"preset": "H800", "efficiency": EFF, **hardware},
    }  # fmt: skip


def by_hand() -> dict[str, float]:
    """One micro-batch's ms per part, BF16 linears and attention at the H800's 989.4 TFLOP/s x 0.4."""
    rate = PRESETS["H800"].bf16_tflops * 1e12 * EFF / 1e3  # FLOPs per ms
    n = SEQ  # tokens of the micro-batch (TP 1)
    lin_attn = n * 2 * (H * HEADS * D + 2 * H * KV * D + HEADS * D * H) / rate  # q, k, v, o
    core = n * 0.5 * 2 * SEQ * HEADS * (D + D) / rate  # QK^T and AV, causal flash: half the square
    dense_mlp = n * 2 * 3 * H * FFN / rate  # SwiGLU: gate, up, down
    moe_mlp = n * 2 * (TOPK * 3 * H * MOE_FFN + H * EXPERTS) / rate  # 8 active experts and the router
    # one node (EP 8 of 8 GPUs): every (token, expert) copy bound for another GPU, BF16, over 160 GB/s NVLink
    a2a = n * TOPK * (EP - 1) / EP * H * 2 / (PRESETS["H800"].a2a_intra_gbps * 1e9) * 1e3
    head = n * 2 * H * VOCAB / rate
    attn_f, attn_b = lin_attn + core, 2 * lin_attn + 2.5 * core  # I: linears + flash backward (2.5x); W: linears
    return {
        "dense F": attn_f + dense_mlp, "dense B": attn_b + 2 * dense_mlp, "dense W": lin_attn + dense_mlp,
        "moe F": attn_f + moe_mlp + 2 * a2a, "moe B": attn_b + 2 * moe_mlp + 2 * a2a, "moe W": lin_attn + moe_mlp,
        "head": head, "a2a": a2a,
    }  # fmt: skip


def test_each_stage_costed_from_its_layout_at_the_efficiency():
    t = by_hand()
    cm = scenario.sections_only(raw()).cost_model()
    # stage 0: the dense layer and the embedding (a lookup, no FLOPs: 0 ms at any efficiency)
    # stages 1, 2: two MoE layers each; stage 3: three MoE layers and the head (I and W each as long as its F)
    forward = (t["dense F"], 2 * t["moe F"], 2 * t["moe F"], 3 * t["moe F"] + t["head"])
    backward = (t["dense B"], 2 * t["moe B"], 2 * t["moe B"], 3 * t["moe B"] + 2 * t["head"])
    weight = (t["dense W"], 2 * t["moe W"], 2 * t["moe W"], 3 * t["moe W"] + t["head"])
    assert cm.forward == pytest.approx(forward, rel=1e-12)
    assert cm.backward == pytest.approx(backward, rel=1e-12)
    assert cm.weight == pytest.approx(weight, rel=1e-12)
    # the dense stage has no all-to-all; each MoE stage its layers' 2 phases forward and 2 backward
    chunks = [cm.chunk_of(s) for s in range(4)]
    assert [c.layers for c in chunks] == [1, 2, 2, 3]
    assert cm.forward[1] / cm.forward[0] > 2  # the old uniform chunk gave every stage 2 MoE layers' 2 x moe F


def test_the_layer_counts_are_the_kernel_paths():
    # the same per-stage layer counts and kinds with kernel rates (no efficiency): only the rates differ
    eff = scenario.sections_only(raw("Et*2|t*2|t*2|t*2L")).derived()
    kern = raw("Et*2|t*2|t*2|t*2L")
    del kern["hardware"]["efficiency"]
    kern = scenario.sections_only(kern).derived()
    assert [n for n, _ in eff.stage_chunks] == [n for n, _ in kern.stage_chunks] == [1, 2, 2, 2]
    # stage 0 holds the dense layer 0 and MoE layer 1: one MoE layer's all-to-all, its compute both layers'
    t = by_hand()
    n0, c0 = eff.stage_chunks[0]
    assert n0 * (c0.dispatch_forward + c0.combine_forward) == pytest.approx(2 * t["a2a"], rel=1e-12)
    assert n0 * (c0.attn_forward + c0.mlp_forward) == pytest.approx(t["dense F"] + t["moe F"] - 2 * t["a2a"], rel=1e-12)


def test_model_says_what_run_does():
    # `model`'s F, B, W columns are what run costs each stage at, and no note says otherwise
    sc = scenario.sections_only(raw())
    d = sc.derived()
    cm = sc.cost_model()
    assert cm.forward == pytest.approx(tuple(s.forward for s in d.stages), rel=1e-12)
    assert cm.backward == pytest.approx(tuple(s.backward for s in d.stages), rel=1e-12)
    assert cm.weight == pytest.approx(tuple(s.weight for s in d.stages), rel=1e-12)
    assert "every stage is costed as" not in report.text(d, typed=report.hand_typed(sc), scenario=sc)
