"""GLM-4.5 / GLM-4.5-Air (``model_type = "glm4_moe"``): the config read as transformers' Glm4Moe modules build
it (docs/model.md "GLM-4.5"), parameter counts worked by hand and held against the published totals, one
layer's FLOPs by hand, the dense / MoE pattern, ``model --explain``, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive
from dualpipe_sim.model import config, flops, params
from dualpipe_sim.model.config import ModelError

ROOT = Path(__file__).resolve().parent.parent
AIR = ROOT / "scenarios" / "models" / "glm4.5-air.json"  # shipped: scenarios/glm4.5-air.toml reads it
FULL = ROOT / "tests" / "data" / "configs" / "glm4.5.json"
SCENARIO = ROOT / "scenarios" / "glm4.5-air.toml"


def _raw(path: Path) -> dict:
    return json.loads(path.read_text())


# -- reading the config ------------------------------------------------------------------------------------
def test_air_config_reads_as_gqa_attention_with_deepseek_moe():
    cfg = config.read(AIR)
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == ("glm4_moe", 46, 4096, 151552)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.qk_head_dim, cfg.v_head_dim) == (96, 8, 128, 128)
    assert cfg.qkv_bias and not cfg.qk_norm and not cfg.mla and not cfg.bias  # attention_bias: q, k, v only
    assert (cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size) == (128, 8, 1408)
    assert cfg.shared_intermediate_size == 1 * 1408 and not cfg.shared_expert_gate
    assert cfg.router_bias  # e_score_correction_bias, always there
    assert (cfg.route_groups, cfg.route_group_limit, cfg.mtp_layers) == (1, 1, 1)
    assert cfg.intermediate_size == 10944 and not cfg.tie_word_embeddings and not cfg.fp8
    assert cfg.defaults_taken == ()  # the published config gives every field
    full = config.read(FULL)
    assert full.qk_norm and full.dense_layers == (0, 1, 2) and full.num_experts == 160


def test_the_architecture_class_alone_names_the_family():
    raw = {k: v for k, v in _raw(AIR).items() if k != "model_type"}
    assert config.from_hf(raw) == config.read(AIR)


def test_dense_then_moe_pattern_and_the_mtp_layer_is_moe():
    air, full = config.read(AIR), config.read(FULL)
    # Glm4MoeDecoderLayer: an MoE MLP where layer_idx >= first_k_dense_replace (1 for Air, 3 for GLM-4.5)
    assert [air.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    assert [full.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
    assert sum(map(air.is_moe_layer, range(46))) == 45 and sum(map(full.is_moe_layer, range(92))) == 89
    assert air.is_moe_layer(46) and full.is_moe_layer(92)  # the MTP layer (checkpoint's model.layers.46 / .92)
    # first_k_dense_replace past the last layer: every layer dense
    raw = {**_raw(AIR), "num_hidden_layers": 2, "first_k_dense_replace": 5}
    assert config.from_hf(raw).dense_layers == (0, 1)


def test_switches_left_out_take_glm4_moe_config_defaults_and_say_so():
    keep = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "intermediate_size", "n_routed_experts", "num_experts_per_tok",
            "moe_intermediate_size")
    cfg = config.from_hf({k: _raw(AIR)[k] for k in keep})
    assert not cfg.qkv_bias and not cfg.qk_norm and cfg.dense_layers == (0,) and cfg.mtp_layers == 0
    assert cfg.shared_intermediate_size == 1408  # n_shared_experts = 1
    taken = " | ".join(cfg.defaults_taken)
    for text in ("attention_bias = false", "use_qk_norm = false", "n_shared_experts = 1",
                 "first_k_dense_replace = 1", "partial_rotary_factor = 0.5", "routed_scaling_factor = 1"):
        assert text in taken, taken
    # head_dim left out: transformers' getattr(config, "head_dim", hidden // heads) = 4096 // 96 = 42
    no_head = config.from_hf({k: _raw(AIR)[k] for k in keep if k != "head_dim"})
    assert no_head.qk_head_dim == 42 and "4096 / 96 = 42" in no_head.defaults_taken[0]


# -- parameter counts, worked by hand ----------------------------------------------------------------------
def test_air_parameters_by_hand_against_the_published_106b_and_12b():
    cfg = config.read(AIR)
    h, V = 4096, 151552
    attn = (h * 96 * 128          # q_proj  50,331,648
            + 2 * h * 8 * 128     # k_proj, v_proj  8,388,608
            + 96 * 128 * h        # o_proj (no bias)  50,331,648
            + 96 * 128 + 2 * 8 * 128)  # q, k, v biases  14,336
    assert attn == 109_066_240 == params.attention(cfg)
    expert = 3 * h * 1408  # gate, up, down: 17,301,504
    dense = attn + 2 * h + 3 * h * 10944  # + two RMSNorms + dense SwiGLU 134,479,872
    moe = attn + 2 * h + expert + (h * 128 + 128) + 128 * expert  # shared + router (+ bias) + 128 routed
    assert (dense, moe) == (243_554_304, 2_341_492_864)
    assert params.layer(cfg, 0).total == dense and params.layer(cfg, 1).total == moe
    total = V * h + dense + 45 * moe + (h + V * h)  # embedding, layers, final norm + head
    active = dense + 45 * (moe - 120 * expert) + (h + V * h)  # 8 of 128 experts; no embedding (a lookup)
    mtp = moe + 2 * h * h + 3 * h  # one MoE layer, eh_proj 2h -> h, enorm + hnorm + shared_head.norm
    t = params.totals(cfg)
    assert (t.total, t.activated, t.mtp) == (total, active, mtp) == (106_852_251_264, 12_803_372_672, 2_375_059_584)
    # Published (model card / README): "106 billion total parameters and 12 billion active": 106.85B and 12.80B,
    # both stated rounded down.  The card's 106B leaves the MTP layer out: with it 109.23B.
    assert int(total / 1e9) == 106 and int(active / 1e9) == 12 and int((total + mtp) / 1e9) == 109


def test_glm45_parameters_by_hand_against_the_published_355b_and_32b():
    cfg = config.read(FULL)
    h, V = 5120, 151552
    attn = h * 96 * 128 + 2 * h * 8 * 128 + 96 * 128 * h + (96 * 128 + 2 * 8 * 128) + 2 * 128  # + q/k norms
    assert attn == 136_329_472 == params.attention(cfg)
    expert = 3 * h * 1536  # 23,592,960
    dense = attn + 2 * h + 3 * h * 12288
    moe = attn + 2 * h + expert + (h * 160 + 160) + 160 * expert
    assert (dense, moe) == (325_083_392, 3_935_625_632)
    total = V * h + 3 * dense + 89 * moe + (h + V * h)
    active = 3 * dense + 89 * (moe - 152 * expert) + (h + V * h)
    mtp = moe + 2 * h * h + 3 * h
    t = params.totals(cfg)
    assert (t.total, t.activated, t.mtp) == (total, active, mtp)
    assert (total, active, mtp) == (352_797_829_024, 32_856_319_904, 3_988_069_792)
    # Published: "355 billion total parameters with 32 billion active".  The card does not say whether the MTP
    # layer counts; the count sits between ours without it (352.80B, -0.62%) and with it (356.79B, +0.50%).
    assert int(active / 1e9) == 32
    assert 352.7e9 < total < 355e9 < total + mtp < 356.9e9


# -- FLOPs of one layer, by hand ---------------------------------------------------------------------------
def test_one_layer_forward_flops_by_hand():
    cfg, s, h = config.read(AIR), 4096, 4096
    moe = flops.layer(cfg, 1, s)
    # projections: 2 x (q 96x128 + k, v 8x128 each + o 96x128) x h; biases and norms are not matmuls
    assert moe.attn_linear == 2 * (h * 12288 + 2 * h * 1024 + 12288 * h) == 218_103_808
    assert moe.attn_core == 2 * s * 96 * (128 + 128) == 201_326_592  # QK^T and AV over s keys, full square
    # 8 routed experts + the shared one (3 x h x 1408 each) + the router h x 128
    assert moe.mlp == 2 * (9 * 3 * h * 1408 + h * 128) == 312_475_648
    dense = flops.layer(cfg, 0, s)
    assert dense.mlp == 2 * 3 * h * 10944 == 268_959_744 and dense.attn_linear == moe.attn_linear
    # the MTP layer's forward: eh_proj 2h -> h, one MoE layer, the shared head
    assert flops.mtp_module(cfg, s) == 2 * 2 * h * h + moe.total + 2 * h * 151552


def test_partial_rotary_changes_no_cost():
    # TE's fused RoPE rotates the first d2 dims and copies the rest: the kernel moves whole q and k heads
    full = config.from_hf({**_raw(AIR), "partial_rotary_factor": 1.0})
    half = config.read(AIR)
    # not part of the architecture: same counts, same kernels (fused RoPE); only unfused RoPE reads the fraction
    assert replace(full, rotary_fraction=0.5) == half and full.rotary_fraction == 1.0
    assert "RoPE turns 64 of each head's 128 dims" in half.not_costed[0]
    assert "RoPE turns 128 of" in full.not_costed[0]


def test_rope_kernel_moves_whole_q_and_k_heads():
    rows = {k.name: k for k in _layer_kernels(1) if k.component == "attn_forward"}
    n, a, kv, d = 4096, 96, 8, 128  # one micro-batch of 4096 tokens, tensor 1
    assert rows["rope"].bytes == n * (a + kv) * d * 2 * 2  # read + write, 2 bytes a value
    assert "q / k norms" not in rows  # Air has no QK-norm


def _layer_kernels(i):
    return derive.layer_kernels(derive.setup(scenario.load(SCENARIO)), i)


# -- the scenario and model --explain ----------------------------------------------------------------------
def test_model_explain_shows_a_dense_and_an_moe_layer(capsys):
    assert main(["model", str(SCENARIO), "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model glm4_moe: 46 layers, hidden 4096, 96 heads, 128 experts (top-8), 1 MTP module(s)")
    assert "activations saved by one dense layer (layer 0)" in out
    assert "activations saved by one MoE layer (layer 1)" in out
    assert "  dense layer: " in out and "  moe layer: " in out and "  mtp module: " in out
    assert "read, not costed: partial_rotary_factor = 0.5" in out


def test_scenario_runs_and_fits(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(SCENARIO), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""  # no memory or layout warning
    m = json.loads((out / "metrics.json").read_text())
    assert m["makespan"] > 0


# -- bad input: one line naming the field -------------------------------------------------------------------
@pytest.mark.parametrize("change, field, rule", [
    ({"n_group": 3}, "n_group", "must divide n_routed_experts (128), got 3"),
    ({"n_group": 4, "topk_group": 5}, "topk_group", "must be <= n_group (4), got 5"),
    ({"partial_rotary_factor": 0}, "partial_rotary_factor", "must be a number in (0, 1], got 0"),
    ({"partial_rotary_factor": 1.5}, "partial_rotary_factor", "must be a number in (0, 1], got 1.5"),
    ({"partial_rotary_factor": "half"}, "partial_rotary_factor", "must be a number in (0, 1]"),
    ({"routed_scaling_factor": -2.5}, "routed_scaling_factor", "must be a positive number, got -2.5"),
    ({"routed_scaling_factor": True}, "routed_scaling_factor", "must be a positive number, got True"),
    ({"use_qk_norm": "yes"}, "use_qk_norm", "must be true or false"),
    ({"norm_topk_prob": 1}, "norm_topk_prob", "must be true or false"),
    ({"n_routed_experts": None}, "n_routed_experts", "required key is missing"),
    ({"n_routed_experts": 0}, "n_routed_experts", "must be >= 1, got 0"),
    ({"num_experts_per_tok": 129}, "num_experts_per_tok", "must be <= the number of experts (128), got 129"),
    ({"n_shared_experts": -1}, "n_shared_experts", "must be >= 0, got -1"),
])
def test_bad_field_is_one_line_naming_it(change, field, rule, tmp_path, capsys):
    raw = {**_raw(AIR), **change}
    with pytest.raises(ModelError) as err:
        config.from_hf(raw, "c.json: ")
    assert str(err.value).startswith(f"c.json: {field}: ") and rule in str(err.value), str(err.value)
    # through the CLI: exit 2, one line, nothing written
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    toml = tmp_path / "s.toml"
    toml.write_text(SCENARIO.read_text().replace("models/glm4.5-air.json", str(path)))
    out = tmp_path / "out"
    assert main(["run", str(toml), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and field in captured.err
    assert not out.exists()


def test_inline_model_accepts_the_glm_fields(tmp_path):
    toml = tmp_path / "s.toml"
    inline = "\n".join(f"{k} = {json.dumps(v)}" for k, v in _raw(AIR).items()
                       if k in config.FAMILY_FIELDS["glm4_moe"])
    text = SCENARIO.read_text().replace('config = "models/glm4.5-air.json"', inline)
    toml.write_text(text)
    assert main(["model", str(toml)]) == 0


def test_glm45_norms_and_router_are_whole_on_every_tensor_rank():
    cfg = config.read(FULL)
    assert cfg.qk_norm and params.attention_norms(cfg) == 2 * 128  # per-head q and k RMSNorm weights
    assert params.whole_on_tensor(cfg, 3) == 2 * 5120 + 2 * 128 + 5120 * 160 + 160  # norms, q/k norms, router
