"""The new families as a user meets them (s16i): `model --json` on each shipped scenario checked against counts worked
by hand here (parameters and bytes per rank of one stage, one layer's activation bytes against Megatron-LM's
theoretical formula, FLOPs per token against 6N + attention), and ten plausible mistakes per family, each one
line naming the field, exit 2, nothing written.

Megatron's per-layer activation formula (NVIDIA/Megatron-LM megatron/training/theoretical_memory_usage.py,
``compute_activation_memory``: Korthikanti et al.'s Table 2 with sequence parallelism and selective recompute) is
``s*b*h*(18 + 4*ffn/h) / t`` bytes.  Its 18 is (in units of s*b*h bytes) attention 11 (QKV input 2, Q and K 4,
V 2, the output projection's input 2, its dropout mask 1), the two norms' inputs 4, fc1's input 2 and the MLP's
dropout mask 1; its ``4*ffn/h`` is the GeLU's input and output in bf16.  It assumes multi-head attention with a
query projection of ``h`` (its own TODO), dropout, and a two-matrix MLP, so each family below says which terms
change and by how much.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpipe_sim.cli import main

from helpers import cli_error, run_refused

ROOT = Path(__file__).resolve().parent.parent
LLAMA4 = ROOT / "scenarios" / "llama4-maverick.toml"
GLM = ROOT / "scenarios" / "glm4.5-air.toml"
NEMOTRON = ROOT / "scenarios" / "validation" / "nemotron4-340b-dp16.toml"


def model_json(capsys, path: Path, *sets: str) -> dict:
    args = ["model", str(path), "--json"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def megatron_layer_bytes(s: int, h: int, ffn: int, t: int) -> float:
    """theoretical_memory_usage.py's per-layer activation bytes on one tensor rank (b = 1)."""
    return s * h * (18 + 4 * ffn / h) / t


# -- Llama 4 Maverick: 48 layers, h 5120, 40 heads of 128, 8 KV heads, MoE every 2nd layer (128 experts of 8192,
# top-1, one shared expert of 8192), dense layers' MLP 16384, vocabulary 202,048; scenario: TP 8 (sequence
# parallel), EP 16, DP 16, PP 6 of 8 layers, ZeRO 1, 4,096 tokens.
L4_ATTN = 5120 * (40 * 128) * 2 + 5120 * (8 * 128) * 2  # q, o; k, v: 62,914,560
L4_DENSE_MLP = 3 * 5120 * 16384
L4_EXPERT = 3 * 5120 * 8192
L4_ROUTER = 5120 * 128
L4_NORMS = 2 * 5120


def test_llama4_stage_parameters_and_bytes_per_rank_by_hand(capsys):
    d = model_json(capsys, LLAMA4)
    dense_layer = L4_ATTN + L4_NORMS + L4_DENSE_MLP
    moe_layer = L4_ATTN + L4_NORMS + L4_ROUTER + L4_EXPERT + 128 * L4_EXPERT  # shared + routed
    assert (dense_layer, moe_layer) == (314_583_040, 16_295_536_640)
    middle = d["stages"][1]  # layers 8-15: 4 dense (even), 4 MoE (odd)
    assert middle["parameters"] == 4 * dense_layer + 4 * moe_layer == 66_440_478_720
    embed = 202048 * 5120
    assert d["stages"][0]["parameters"] == 4 * dense_layer + 4 * moe_layer + embed
    assert d["parameters_total"] == 24 * (dense_layer + moe_layer) + 2 * embed + 5120  # + the final norm
    # one rank: the dense part over TP 8 except the norms and the router, whole on every tensor rank
    # (Megatron-core), the routed experts over EP 16
    whole = 8 * L4_NORMS + 4 * L4_ROUTER
    dense = 4 * dense_layer + 4 * (moe_layer - 128 * L4_EXPERT)
    per_rank = (dense - whole) / 8 + whole + 4 * 128 * L4_EXPERT / 16
    assert per_rank == 4_280_893_440
    assert middle["parameter_bytes_per_rank"] == pytest.approx(2 * per_rank, rel=1e-12)  # bf16
    assert middle["gradient_bytes_per_rank"] == pytest.approx(4 * per_rank, rel=1e-12)  # fp32 main grads
    # Adam (fp32 master + 2 moments, 12 bytes): dense over DP 16, experts over data x tensor / expert = 8
    optim = 12 * ((dense - whole) / 8 + whole) / 16 + 12 * (4 * 128 * L4_EXPERT / 16) / 8
    assert middle["optimizer_bytes_per_rank"] == pytest.approx(optim, rel=1e-12)


def test_llama4_dense_layer_activations_against_megatrons_formula(capsys):
    d = model_json(capsys, LLAMA4)
    s, h, ffn, t = 4096, 5120, 16384, 8
    sbh = s * h / t  # one tensor rank's share of s x b x h (sequence parallel)
    megatron = megatron_layer_bytes(s, h, ffn, t)  # 34.4 x sbh
    no_dropout = -2 * sbh  # Llama has no dropout: neither mask
    gqa = -(4 - 2 * (1 + 8 / 40)) * sbh - (2 - 2 * 8 / 40) * sbh  # K and V of 8 heads, not 40
    swiglu = 2 * ffn / h * sbh  # gate and up saved (4 ffn) and SwiGLU's output (2 ffn): 6 ffn, not 4
    lse = 40 / t * s * 4  # flash attention's fp32 log-sum-exp per head
    assert megatron + no_dropout + gqa + swiglu + lse == 83_968_000
    assert d["activation_bytes_per_layer"][0] == pytest.approx(83_968_000, rel=1e-12)
    # an MoE layer (which Megatron's formula does not cover): the same attention and norms, then the router's fp32
    # probabilities (s x 128), the top-1 expert's input, SwiGLU input and down input, and the shared expert's
    attn_norms = (2 + 2 + 2 * 1.2 + 0.4 + 2 + 2 + 2) * sbh + lse
    moe = attn_norms + (s * 128 * 4 + s * h * 2 + s * 2 * 8192 * 2 + s * 8192 * 2) / t + (s * 2 * 8192 + s * 8192) * 2 / t
    assert d["activation_bytes_per_layer"][1] == pytest.approx(moe, rel=1e-12)


def test_llama4_flops_per_token_six_n_plus_attention_at_and_past_the_chunk(capsys):
    d = model_json(capsys, LLAMA4)
    active = 48 * (L4_ATTN + L4_NORMS) + 24 * L4_DENSE_MLP + 24 * (L4_ROUTER + 2 * L4_EXPERT) + 202048 * 5120 + 5120
    assert d["parameters_activated"] == active == 16_150_205_440
    f = d["flops_per_token"]
    assert f["six_n"] == 6 * (active - 48 * L4_NORMS - 5120)  # N: the matrices' weights (norms multiply nothing)
    # attention, PaLM's convention (no causal halving): 12 x layers x (heads x head_dim) x keys per query
    assert f["attention"] == 12 * 48 * 5120 * 4096
    assert f["training"] == f["six_n"] + f["attention"]
    # at 16,384 tokens the 36 RoPE layers attend within 8,192-token chunks, the 12 NoPE layers (every 4th) over all
    f = model_json(capsys, LLAMA4, "model.seq_length=16384")["flops_per_token"]
    assert f["attention"] == 12 * 5120 * (36 * 8192 + 12 * 16384) == 30_198_988_800


# -- GLM-4.5-Air: 46 layers (layer 0 dense, MLP 10944; 45 MoE of 128 experts of 1408, top-8, one shared), h 4096,
# 96 heads of 128 (q is 12,288 wide), 8 KV heads, q/k/v biases, 1 MTP module, vocabulary 151,552, untied;
# scenario: TP 1, EP 8, DP 32, 16 stages (DualPipeV), layout Et*2|(t*4|)*2(t*3|)*12mL.
G_ATTN = 4096 * 12288 * 2 + 4096 * 1024 * 2 + 12288 + 2 * 1024  # q, o; k, v; q, k, v biases
G_EXPERT = 3 * 4096 * 1408
G_MOE = G_ATTN + 2 * 4096 + 4096 * 128 + 128 + 129 * G_EXPERT  # norms, router and its expert bias, shared + routed


def test_glm_stage_parameters_by_hand(capsys):
    d = model_json(capsys, GLM)
    dense = G_ATTN + 2 * 4096 + 3 * 4096 * 10944
    assert (dense, G_MOE) == (243_554_304, 2_341_492_864)
    st = d["stages"]
    embed = 151552 * 4096
    assert [st[0]["parameters"], st[1]["parameters"], st[3]["parameters"]] == [embed + dense + G_MOE, 4 * G_MOE,
                                                                              3 * G_MOE]  # fmt: skip
    # the MTP module (DeepSeek-V3's: two norms, the 2h -> h projection, one MoE layer, its final norm) and the
    # head with its final norm; the MTP module shares the head
    mtp = 2 * 4096 + 2 * 4096 * 4096 + G_MOE + 4096
    assert d["parameters_mtp"] == mtp
    assert st[15]["parameters"] == mtp + embed + 4096
    assert d["parameters_total"] == 2 * embed + dense + 45 * G_MOE + 4096 == 106_852_251_264


def test_glm_flops_and_activations_where_megatrons_formula_does_not_apply(capsys):
    d = model_json(capsys, GLM)
    norms = 46 * 2 * 4096 + 4096
    active = 46 * G_ATTN + norms + 3 * 4096 * 10944 + 45 * (4096 * 128 + 128 + 9 * G_EXPERT) + 151552 * 4096
    assert d["parameters_activated"] == active == 12_803_372_672
    f = d["flops_per_token"]
    # N: the matrices' weights alone (no norm, q/k/v bias or expert bias multiplies; the MTP module not counted)
    assert f["six_n"] == 6 * (active - norms - 46 * (12288 + 2 * 1024) - 45 * 128)
    assert f["attention"] == 12 * 46 * 12288 * 4096  # the query width (96 x 128), not h
    # layer 0 (dense, TP 1, core attention recomputed): Megatron's formula takes the query width as h (its TODO),
    # so it does not apply here; by its terms: norms' inputs 2 x 2 sbh, QKV input 2 sbh, Q and K and V
    # (12288 + 2 x 1024 wide), the output projection's input (12288 wide), fc1's input, SwiGLU's 3 x 10944
    s, h = 4096, 4096
    by_hand = 2 * s * (h + h + h + 12288 + 1024 + 1024 + 12288 + h + 3 * 10944)
    assert d["activation_bytes_per_layer"][0] == pytest.approx(by_hand, rel=1e-12) and by_hand == 621_281_280


# -- Nemotron-4 340B: 96 layers, h 18432, 96 heads of 192, 8 KV heads, squared-ReLU MLP of 73,728, LayerNorm1p
# (weight and bias), vocabulary 256,000 untied; scenario: TP 8 (sequence parallel), selective recompute.
N_LAYER = 18432 * 18432 * 2 + 18432 * 1536 * 2 + 2 * 18432 * 73728 + 2 * 2 * 18432


def test_nemotron_stage_parameters_by_hand(capsys):
    d = model_json(capsys, NEMOTRON)
    assert N_LAYER == 3_454_083_072
    st = d["stages"]
    assert st[1]["parameters"] == N_LAYER and st[0]["parameters"] == N_LAYER + 256000 * 18432
    assert st[-1]["parameters"] == N_LAYER + 256000 * 18432 + 2 * 18432  # head and the final LayerNorm


def test_nemotron_layer_activations_are_megatrons_formula_less_dropout_and_gqa(capsys):
    d = model_json(capsys, NEMOTRON)
    s, h, ffn, t = 4096, 18432, 73728, 8
    sbh = s * h / t
    megatron = megatron_layer_bytes(s, h, ffn, t)  # a two-matrix MLP of 4h: 34 x sbh, as the formula assumes
    no_dropout = -2 * sbh  # Nemotron-4 trains without dropout
    gqa = -(2 - 2 / 12) * sbh * 2  # K and V of 8 heads, not 96: each 1/12 of h
    assert megatron + no_dropout + gqa == pytest.approx(267_386_880, rel=1e-12)
    assert d["activation_bytes_per_layer"][0] == pytest.approx(267_386_880, rel=1e-12)


def test_nemotron_flops_per_token(capsys):
    f = model_json(capsys, NEMOTRON)["flops_per_token"]
    matrices = 96 * (N_LAYER - 4 * 18432) + 256000 * 18432  # less the LayerNorms' weights and biases
    assert f["six_n"] == 6 * matrices
    assert f["attention"] == 12 * 96 * 18432 * 4096


# -- ten plausible mistakes per family: one line naming the field, exit 2, nothing written (in process: main()
# returns 2 and prints one line, a raised exception would fail the test)
MISTAKES = [
    (LLAMA4, ['model.hidden_size="5120"'], "error: model.hidden_size: must be a whole number, got '5120'"),
    (LLAMA4, ["parallel.expert=12"], "error: parallel.expert: must divide the number of routed experts (128), got 12"),
    (LLAMA4, ['parallel.layout="Et*8|(t*8|)*4t*8mL"'], "error: parallel.layout: 'Et*8|(t*8|)*4t*8mL' places 1 MTP"),
    (LLAMA4, ["model.num_key_value_heads=4"], "error: parallel.tensor: must divide the key-value heads (4,"),
    (LLAMA4, ["model.num_experts_per_tok=0"], "error: model.num_experts_per_tok: must be >= 1, got 0"),
    (LLAMA4, ["model.interleave_moe_layer_step=49"], "error: model.interleave_moe_layer_step: leaves all 48 layers"),
    (LLAMA4, ["model.attention_chunk_size=-1"], "error: model.attention_chunk_size: must be >= 1, got -1"),
    (LLAMA4, ['model.seq_length="4k"'], "error: model.seq_length: must be a whole number, got '4k'"),
    (LLAMA4, ['parallel.layout="Et*7|(t*8|)*4t*8L"'], "error: parallel.layout: 'Et*7|(t*8|)*4t*8L' places 47 layers"),
    (LLAMA4, ["parallel.tensor=3"], "error: parallel.tensor: must divide the attention heads (40), got 3"),
    (GLM, ['model.n_routed_experts="128"'], "error: model.n_routed_experts: must be a whole number, got '128'"),
    (GLM, ["parallel.expert=3"], "error: parallel.expert: must divide the number of routed experts (128), got 3"),
    (GLM, ["model.first_k_dense_replace=50"], "error: model.first_k_dense_replace: leaves all 46 layers dense"),
    (GLM, ["model.num_nextn_predict_layers=-1"], "error: model.num_nextn_predict_layers: must be >= 0, got -1"),
    (GLM, ['parallel.layout="Et*2|(t*4|)*2(t*3|)*12L"'], "error: parallel.layout: 'Et*2|(t*4|)*2(t*3|)*12L' places 0 MTP"),
    (GLM, ["model.partial_rotary_factor=1.5"], "error: model.partial_rotary_factor: must be a number in (0, 1], got 1.5"),
    (GLM, ["model.num_key_value_heads=4", "parallel.tensor=8"], "error: parallel.tensor: must divide the key-value heads"),
    (GLM, ["model.moe_intermediate_size=1408.5"], "error: model.moe_intermediate_size: must be a whole number, got 1408.5"),
    (GLM, ["model.num_experts_per_tok=200"], "error: model.num_experts_per_tok: must be <= the number of experts (128)"),
    (GLM, ['memory.recompute_modules=["core_atn"]'], "error: memory.recompute_modules.0: input should be 'core_attn'"),
    (NEMOTRON, ['model.intermediate_size="73728"'], "error: model.intermediate_size: must be a whole number, got '73728'"),
    (NEMOTRON, ['model.hidden_act="silu"'], 'error: model.hidden_act: must be "relu2" for nemotron'),
    (NEMOTRON, ["parallel.expert=8"], "error: parallel.expert: the model has no experts, so it must be 1, got 8"),
    (NEMOTRON, ['parallel.layout="Et|t|(t|)*93tmL"'], "error: parallel.layout: 'Et|t|(t|)*93tmL' places 1 MTP"),
    (NEMOTRON, ["model.num_key_value_heads=4"], "error: parallel.tensor: must divide the key-value heads (4,"),
    (NEMOTRON, ["model.num_key_value_heads=7"], "error: model.num_key_value_heads: must divide num_attention_heads (96)"),
    (NEMOTRON, ["model.partial_rotary_factor=0"], "error: model.partial_rotary_factor: must be a number in (0, 1], got 0"),
    (NEMOTRON, ["pipeline.chunks_per_rank=7"], "error: pipeline.stages: interleaved-1f1b needs a positive multiple"),
    (NEMOTRON, ["model.num_hidden_layers=95"], "error: parallel.layout: stage 0 would hold no layer"),
    (NEMOTRON, ['model.tie_word_embeddings="no"'], "error: model.tie_word_embeddings: must be true or false, got 'no'"),
]


@pytest.mark.parametrize("path, sets, line", MISTAKES, ids=[f"{p.stem}-{s[0]}" for p, s, _ in MISTAKES])
def test_a_mistake_is_one_line_naming_the_field(path, sets, line, tmp_path, capsys):
    err = run_refused(capsys, tmp_path, path, sets)
    assert err.startswith(line) and err.count("\n") == 1, err


def test_the_two_that_stopped_on_a_traceback_end_to_end(tmp_path):
    """GLM with no MoE layer (StopIteration in derive) and a layout leaving out its MTP module (TypeError)."""
    first = tmp_path / "a"
    first.mkdir()
    line = cli_error(first, "run", str(GLM), "--set", "model.first_k_dense_replace=46")
    assert line == ("error: model.first_k_dense_replace: leaves all 46 layers dense; a model with routed experts "
                    "(128) needs at least one MoE layer among num_hidden_layers")  # fmt: skip
    second = tmp_path / "b"
    second.mkdir()
    line = cli_error(second, "run", str(GLM), "--set", 'parallel.layout="Et*2|(t*4|)*2(t*3|)*12L"')
    assert line == ("error: parallel.layout: 'Et*2|(t*4|)*2(t*3|)*12L' places 0 MTP modules (m), the model has 1 "
                    "(num_nextn_predict_layers)")  # fmt: skip


def test_plan_prunes_a_tensor_degree_that_splits_the_kv_heads():
    from dualpipe_sim.plan.space import ModelShape, Request, enumerate_candidates

    shape = ModelShape(heads=8, kv_heads=2, layers=4, experts=0)
    req = Request(gpus=8, global_batch=8, seq=4096)
    pruned = {c.tensor: c.pruned for c in enumerate_candidates(shape, req, []) if c.pruned.startswith("parallel.tensor")}
    assert pruned == {t: "parallel.tensor: must divide the model's 2 key-value heads" for t in (4, 8)}  # of 1, 2, 4, 8


def test_communication_all_exposed_reads_zero_hidden_not_minus_rounding(tmp_path, capsys):
    """Llama 4 on 1F1B: every P2P and all-to-all is exposed, and the exposed sum (per rank, per kind) differs from the
    total in the last bits; the summary printed "hidden -227.4e-15, overlap -0.0%" (s16i)."""
    assert main(["run", str(LLAMA4), "--out", str(tmp_path / "out"), "--json", "--plots", "none"]) == 0
    comm = json.loads(capsys.readouterr().out)["comm"]
    assert comm["exposed"] == pytest.approx(comm["p2p_time"] + comm["a2a_time"], rel=1e-12)
    assert comm["hidden"] == 0.0 and comm["overlap_ratio"] == 0.0


def test_explain_names_no_experts_for_a_dense_model(capsys):
    """Nemotron's --explain said "routed experts / expert (1) ... data x tensor / expert (128) for experts" (s16i)."""
    assert main(["model", str(NEMOTRON), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "  parameters per rank: parameters / tensor (8); ZeRO 1 shards optimizer over data (16)\n" in out
    assert "expert" not in out.split("how these are derived")[1].split("bytes per parameter")[0]
    assert main(["model", str(GLM), "--explain"]) == 0
    assert "routed experts / expert (8); ZeRO 1 shards optimizer over data (32)" in capsys.readouterr().out
