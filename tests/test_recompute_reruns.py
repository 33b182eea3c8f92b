"""Recomputed forwards that rerun everything they rerun (model/recompute.py, kernels.py, activations.py).

Megatron-core's checkpointed attention core reruns the flash forward too (Megatron-LM's own flash path does not);
full recompute and --recompute-modules moe rerun the MoE layer's dispatch and combine all-to-alls; mla_up_proj
reruns MLA's up-projections and RoPE.  Each test holds the invariant "the input gradient grows by exactly the
rerun kernels' forward times" and works the freed activation bytes out in its own arithmetic.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import activations, config, derive, flops, kernels
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"
MODELS = ROOT / "scenarios" / "models"

# Qwen3-MoE, tiny (as tests/test_recompute_modules.py): h 64, 4 query heads and 2 key/value heads of 16,
# 8 experts of 48 (top 2), layer 1 dense (96); flash attention
TINY = config.from_hf({
    "model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96,
    "moe_intermediate_size": 48, "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [1]})  # fmt: skip
S, H, K, FE = 128, 64, 2, 48
# any layer's attention, 2 bytes a value: norm1 input, qkv input, q and k (6 heads), v (2 heads), o_proj input,
# norm2 input; and the fp32 log-sum-exp of the 4 query heads apart
ATTN = 2 * S * H + 2 * S * H + 2 * S * 6 * 16 + 2 * S * 2 * 16 + 2 * S * 4 * 16 + 2 * S * H
LSE = 4 * S * 4
NORM2_OUT = 2 * S * H
# inside the MoE layer: router probabilities (fp32, 8), k copies of each token, SwiGLU input (2 x 48), output (48)
MOE_INSIDE = 4 * S * 8 + 2 * K * S * H + 2 * K * S * 2 * FE + 2 * K * S * FE


def _saved(i, modules, legacy=False, cfg=TINY, s=S):
    return activations.layer_total(cfg, i, s, 1, "selective", 2.0, 1, True, modules, legacy)


def _load(name, overrides=()):
    return derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides)))


def _analytic(name, overrides=()):
    """The row's Setup timed by FLOPs / (peak x efficiency 0.5), no kernel rates (derive.layer_times)."""
    return replace(_load(name, overrides), rates=None, efficiency=0.5)


def _by(rows):
    return kernels.by_component(rows)


# -- core_attn under flash attention ---------------------------------------------------------------------
def test_core_attn_under_flash_frees_only_the_log_sum_exp():
    assert TINY.eager_attention is False
    assert _saved(0, ()) == ATTN + LSE + NORM2_OUT + MOE_INSIDE == 227_328
    assert _saved(0, ("core_attn",)) == ATTN + NORM2_OUT + MOE_INSIDE == 225_280
    assert _saved(0, None) == _saved(0, ("core_attn",))  # the default list
    # Megatron-LM's own ParallelAttention leaves its flash path unchecked: nothing freed
    assert _saved(0, ("core_attn",), legacy=True) == _saved(0, ())


def test_core_attn_reruns_the_flash_forward_in_the_input_gradient():
    bare = _load("xt-qwen3-235b-tp2ep8pp8", ["memory.recompute_modules=[]"])
    core = _load("xt-qwen3-235b-tp2ep8pp8", ['memory.recompute_modules=["core_attn"]'])
    kb, kc = derive.layer_kernels(bare, 0), derive.layer_kernels(core, 0)
    flash = [k for k in kb if k.component == "attn_forward" and k.kind == "attention"]
    assert [k.name for k in flash] == ["flash attention"]
    cb, cc = _by(kb), _by(kc)
    assert cc["attn_backward_input"] - cb["attn_backward_input"] == pytest.approx(flash[0].ms, rel=1e-12)
    assert {c: v for c, v in cc.items() if c != "attn_backward_input"} == {
        c: v for c, v in cb.items() if c != "attn_backward_input"}
    rerun = [k for k in kc if k.name == "flash attention (recompute)"]
    assert len(rerun) == 1 and rerun[0].component == "attn_backward_input" and rerun[0].flops == flash[0].flops
    # legacy runtime (Megatron-LM's transformer.py): no rerun under flash
    legacy = derive.layer_kernels(replace(core, legacy=True), 0)
    assert not any("(recompute)" in k.name for k in legacy if k.component == "attn_backward_input")


def test_core_attn_with_context_parallelism_reruns_the_forward_ring_and_its_exchange():
    base = ROOT / "scenarios" / "llama3-70b.toml"
    sets = ["parallel.context=2", "memory.recompute=selective"]
    core = derive.setup(scenario.load(base, sets))
    bare = derive.setup(scenario.load(base, sets + ["memory.recompute_modules=[]"]))
    kb, kc = derive.layer_kernels(bare, 0), derive.layer_kernels(core, 0)
    # the forward ring: its steps, its K/V copies and lse / output corrections, and the exposed exchange
    ring = [k for k in kb if k.component == "attn_forward"
            and (k.name.startswith(("flash attention step", "cp ", "context-parallel")))]
    assert any(k.name.startswith("flash attention step 1") for k in ring)
    added = _by(kc)["attn_backward_input"] - _by(kb)["attn_backward_input"]
    assert added == pytest.approx(sum(k.ms for k in ring), rel=1e-12)


def test_core_attn_analytic_path_adds_the_flash_forward():
    """Without kernel rates (hardware.efficiency): the rerun is the core's forward, causal half the square."""
    bare = _analytic("xt-qwen3-235b-tp2ep8pp8", ["memory.recompute_modules=[]"])
    core = _analytic("xt-qwen3-235b-tp2ep8pp8", ['memory.recompute_modules=["core_attn"]'])
    f = flops.layer(core.cfg, 0, core.seq)
    n = core.tokens / 2  # TP 2
    core_ms = n * f.attn_core * 0.5 / (core.hw.bf16_tflops * 1e12 * 0.5) * 1e3
    diff = derive.layer_times(core, 0).attn_backward_input - derive.layer_times(bare, 0).attn_backward_input
    assert diff == pytest.approx(core_ms, rel=1e-12)


# -- the MoE layer's all-to-alls in a rerun forward -------------------------------------------------------
A2A = ("token counts all-gather", "all-to-all", "probs all-to-all")


def test_full_recompute_reruns_dispatch_and_combine():
    none = _load("xt-qwen3-235b-tp4ep8pp8vpp4")
    full = _load("xt-qwen3-235b-tp4ep8pp8vpp4", ["memory.recompute=full"])
    kn, kf = derive.layer_kernels(none, 0), derive.layer_kernels(full, 0)
    cn, cf = _by(kn), _by(kf)
    fwd = {c: [k for k in kn if k.component == c] for c in ("dispatch_forward", "combine_forward")}
    assert [k.name for k in fwd["dispatch_forward"]] == list(A2A) and [k.name for k in fwd["combine_forward"]] == [
        "all-to-all"]
    for phase in ("dispatch", "combine"):
        forward = sum(k.ms for k in fwd[f"{phase}_forward"])
        assert cf[f"{phase}_backward"] - cn[f"{phase}_backward"] == pytest.approx(forward, rel=1e-12)
        assert cf[f"{phase}_forward"] == cn[f"{phase}_forward"]
    reruns = [k.name for k in kf if k.component == "dispatch_backward" and k.name.endswith(" (recompute)")]
    assert reruns == [f"{x} (recompute)" for x in A2A]


def test_full_recompute_analytic_path_doubles_the_backward_all_to_all():
    none = _analytic("xt-qwen3-235b-tp4ep8pp8vpp4")
    full = _analytic("xt-qwen3-235b-tp4ep8pp8vpp4", ["memory.recompute=full"])
    tn, tf = derive.layer_times(none, 0), derive.layer_times(full, 0)
    a2a = derive.a2a_times(none)
    assert tf.dispatch_backward == pytest.approx(a2a["dispatch_backward"] + a2a["dispatch_forward"], rel=1e-12)
    assert tf.combine_backward == pytest.approx(a2a["combine_backward"] + a2a["combine_forward"], rel=1e-12)
    assert tn.dispatch_backward == pytest.approx(a2a["dispatch_backward"], rel=1e-12)


# -- --recompute-modules moe ---------------------------------------------------------------------------------
def test_moe_module_keeps_only_the_moe_layers_input():
    assert _saved(0, ("moe",)) == ATTN + LSE + NORM2_OUT == 116_736  # the norm2 output is the checkpoint's input
    assert _saved(0, ("moe", "moe_act")) == _saved(0, ("moe",))  # nothing inside the checkpointed layer is kept
    assert _saved(0, ("moe", "layernorm")) == ATTN + LSE == 100_352  # ... and the norm's output is discarded too
    assert _saved(1, ("moe",)) == _saved(1, ())  # a dense layer has no MoE layer
    ds = replace(config.read(MODELS / "deepseek-v3.json"), fp8=False)
    i = ds.num_layers - 1
    gone = set(activations.layer(ds, i, 256, 1, "selective", modules=())) - set(
        activations.layer(ds, i, 256, 1, "selective", modules=("moe",)))
    assert gone == {"router probabilities (fp32)", "routed expert inputs (k copies)", "routed SwiGLU inputs",
                    "routed down inputs", "shared-expert SwiGLU input", "shared-expert down input"}


def test_moe_module_reruns_the_moe_layer_without_the_norm_and_the_add():
    bare = _load("xt-qwen3-235b-tp4ep8pp8vpp4", ["memory.recompute=selective", "memory.recompute_modules=[]"])
    moe = _load("xt-qwen3-235b-tp4ep8pp8vpp4", ["memory.recompute=selective", 'memory.recompute_modules=["moe"]'])
    assert moe.aux_loss and moe.host_op > 0  # the row has both: the rerun carries them
    kb, km = derive.layer_kernels(bare, 0), derive.layer_kernels(moe, 0)
    cb, cm = _by(kb), _by(km)
    aux = [k for k in kb if k.component == "mlp_forward" and k.name.startswith("aux")]
    assert len(aux) == 3
    # autograd is off in the checkpoint's first forward, so the aux loss runs once, in the rerun
    fwd_m = [k for k in km if k.component == "mlp_forward"]
    assert not any(k.name.startswith("aux") for k in fwd_m)
    outside = sum(k.ms for k in fwd_m if k.name in ("pre-mlp norm", "residual add"))
    rerun = sum(k.ms for k in fwd_m) - outside + sum(k.ms for k in aux)
    assert cm["mlp_backward_input"] - cb["mlp_backward_input"] == pytest.approx(rerun, rel=1e-12)
    for phase in ("dispatch", "combine"):
        assert cm[f"{phase}_backward"] - cb[f"{phase}_backward"] == pytest.approx(cb[f"{phase}_forward"], rel=1e-12)
    assert cm["attn_backward_input"] == cb["attn_backward_input"]
    assert cm["mlp_backward_weight"] == cb["mlp_backward_weight"]


# -- --recompute-modules mla_up_proj -------------------------------------------------------------------------
# DeepSeek-V3-shaped MLA, tiny: h 64, 4 heads, q latent 32, kv latent 16, head dims 16 + 8 rope, v 16
MLA = config.from_hf({
    "model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 1000,
    "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 96, "moe_intermediate_size": 48,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 0, "first_k_dense_replace": 1,
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16})  # fmt: skip


def test_mla_up_proj_frees_the_up_projected_q_k_v():
    assert MLA.mla and MLA.qk_head_dim == 24
    q = 2 * S * 4 * 24  # q: 4 heads of 16 + 8
    kv = 2 * S * 4 * (24 + 16)  # k (16 + the shared 8 rope) and v (16)
    assert _saved(0, (), cfg=MLA) - _saved(0, ("mla_up_proj",), cfg=MLA) == q + kv == 65_536
    # with FP8 the checkpoint keeps the 16-bit latents (its inputs), where the up-projections cached FP8 copies
    fp8 = replace(MLA, fp8=True)
    before, after = (activations.layer(fp8, 0, S, 1, "selective", modules=m) for m in ((), ("mla_up_proj",)))
    assert after["q_b input (q_a_layernorm output)"] == 2 * S * 32
    assert before["q_b input (q_a_layernorm output)"] == pytest.approx((1 + 4 / 128) * S * 32)
    assert after["kv_b input (kv_a_layernorm output)"] == 2 * S * 16


@pytest.mark.parametrize("q_lora", [32, 0])
def test_mla_up_proj_reruns_the_up_projections_and_rope_with_the_copy_back(q_lora):
    cfg = replace(MLA, q_lora_rank=q_lora)
    rates = PRESETS["H800"]
    lay = kernels.Layout(seq=4096, micro_batch=1, policy="selective", modules=())
    kb = kernels.layer(cfg, 0, rates, lay)
    ku = kernels.layer(cfg, 0, rates, replace(lay, modules=("mla_up_proj",)))
    names = ["q_up", "kv_up", "rope"] if q_lora else ["q_proj", "kv_up", "rope"]
    fwd = [k for k in kb if k.component == "attn_forward" and k.name in names]
    assert sorted(k.name for k in fwd) == sorted(names)
    n, ab = 4096, 2
    copy = rates.floor + 2 * n * 4 * (2 * 24 + 16) * ab / rates.hbm  # q, k, v read and written once more
    added = _by(ku)["attn_backward_input"] - _by(kb)["attn_backward_input"]
    assert added == pytest.approx((sum(k.seconds for k in fwd) + copy) * 1e3, rel=1e-12)
    assert {f"{k.name} (recompute)" for k in fwd} < {k.name for k in ku if k.component == "attn_backward_input"}


def test_mla_up_proj_needs_mla():
    with pytest.raises(ScenarioError, match='"mla_up_proj" needs multi-latent attention'):
        _load("xt-qwen3-235b-tp2ep8pp8", ['memory.recompute_modules=["mla_up_proj"]'])
