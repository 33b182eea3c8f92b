"""Parameters every tensor-parallel rank holds whole (s11h).  Megatron-core builds a layer's two norms
as TENorm / LayerNorm of ``hidden_size`` (NVIDIA/Megatron-LM @ 1e05700 transformer_layer.py lines
309-314, 356-361), a RowParallelLinear's bias as ``torch.empty(self.output_size)`` (tensor_parallel/
layers.py line 1146) and the MoE router's weight as ``(num_moe_experts, hidden_size)`` (moe/router.py
lines 49-51): none split over the tensor ranks.  Worked by hand on one GPT-3 175B layer at TP 4."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, layout, params, report

ROOT = Path(__file__).resolve().parent.parent
GPT3 = ROOT / "scenarios" / "validation" / "k22-175b-seqsel.toml"  # GPT-3 175B (LayerNorm, biases)
DSV3 = ROOT / "scenarios" / "deepseek-v3.toml"

H = 12_288
# One GPT-3 layer: QKV 3h^2 + 3h, out h^2 + h, fc1 4h^2 + 4h, fc2 4h^2 + h, two LayerNorms 2 x 2h.
LAYER = 12 * H * H + 13 * H
NORMS = 4 * H  # two LayerNorms, weight and bias each: whole on every rank
ROW_BIASES = 2 * H  # the attention output's and fc2's biases: whole on every rank
# At TP 4 a rank holds a quarter of the rest and all of the norms and row biases: 3 h^2 + 7h/4 + 6h = 453,080,064.
PER_RANK_TP4 = (LAYER - NORMS - ROW_BIASES) // 4 + NORMS + ROW_BIASES


def test_gpt3_layer_by_hand():
    cfg = derive.setup(scenario.load(GPT3)).cfg
    p = params.layer(cfg, 0)
    assert p.dense == LAYER
    assert params.whole_on_tensor(cfg, 0) == NORMS + ROW_BIASES
    assert p.dense_over_tensor(4) / 4 == PER_RANK_TP4 == 453_080_064
    assert p.dense_over_tensor(1) == LAYER


def test_gpt3_stage_memory_at_tp4_holds_norms_and_biases_whole():
    st = derive.setup(scenario.load(GPT3, ["parallel.tensor=4"]))
    assert st.sharding.tensor == 4 and st.sharding.zero == 0
    static, _ = derive.stage_memory(st, layout.Stage((1, 2)))  # two middle layers, no embedding or head
    assert static.parameters == pytest.approx(2 * PER_RANK_TP4 * 2)  # bf16 weights
    assert static.gradients == pytest.approx(2 * PER_RANK_TP4 * st.sharding.grads_bytes)


def test_head_final_norm_whole():
    cfg = derive.setup(scenario.load(GPT3)).cfg
    # final LayerNorm 2h whole, the output projection V x h split (untied GPT-3 head)
    assert params.head_over_tensor(cfg, 4) / 4 == (51_200 * H) / 4 + 2 * H


def test_moe_router_whole():
    """A DeepSeek-V3 MoE layer: RMSNorms 2 x h and the router's 256 x h weight and 256 expert biases; since s12d
    also MLA's latent norms, q_lora_rank 1,536 + kv_lora_rank 512 (multi_latent_attention.py @ 1e05700)."""
    cfg = derive.setup(scenario.load(DSV3)).cfg
    h, e = 7_168, 256
    assert cfg.hidden_size == h and cfg.num_experts == e and cfg.router_bias
    assert (cfg.q_lora_rank, cfg.kv_lora_rank) == (1_536, 512)
    assert params.whole_on_tensor(cfg, cfg.num_layers - 1) == 2 * h + 1_536 + 512 + h * e + e
    assert params.whole_on_tensor(cfg, 0) == 2 * h + 2_048  # a dense layer: its two norms and the latent ones


def test_model_verb_counts_whole_parts_once():
    """`model --json`'s per-stage "parameters" stays the model's count at TP 4."""
    sc = scenario.load(GPT3, ["parallel.tensor=4"])
    out = report.summary(sc.derived(), sc)
    stage0 = out["stages"][0]
    assert stage0["parameters"] == 51_200 * H + 2_048 * H + stage0["layers"] * LAYER


def test_stage_figures_count_the_whole_parts_tensor_times():
    """StageFigures.dense_params, which the gradient sync and optimizer step divide by TP, holds a middle
    stage's norms and row biases 4 times at TP 4: / 4 it is what one rank updates."""
    st = derive.setup(scenario.load(GPT3, ["parallel.tensor=4"]))
    d = derive.derive(st)
    i = next(k for k, s in enumerate(st.stages) if not (s.embedding or s.head or s.mtp))
    assert d.stages[i].dense_params / 4 == len(st.stages[i].layers) * PER_RANK_TP4
