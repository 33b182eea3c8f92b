"""gpt-oss (model_type "gpt_oss"): the config read, the published parameter counts worked by hand, a sliding-window
layer's attention FLOPs and kernel, the clamped SwiGLU and expert biases, bad input (docs/model.md "gpt-oss")."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.model import activations, config, flops, kernels, params, rates
from dualpipe_sim.model.config import ModelError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "data" / "configs"
SCENARIO = ROOT / "scenarios" / "gpt-oss-120b.toml"


def read(name: str) -> config.ModelConfig:
    return config.read(CONFIGS / f"{name}.json")


def raw(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# -- the config -------------------------------------------------------------------------------------
def test_fields_as_published():
    cfg = read("gpt-oss-120b")
    assert (cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == ("gpt_oss", 2880, 36, 201088)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.qk_head_dim, cfg.v_head_dim) == (64, 8, 64, 64)
    assert (cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size) == (128, 4, 2880)
    assert cfg.shared_intermediate_size == 0 and not cfg.tie_word_embeddings and cfg.swiglu_limit == 7.0
    assert cfg.qkv_bias and cfg.out_bias and cfg.attention_sinks and cfg.expert_bias and cfg.router_learned_bias
    assert not cfg.router_bias  # DeepSeek's buffer is another thing
    # layer_types alternate from a sliding layer: the even layers attend through 128 keys
    assert cfg.sliding_layers == tuple(range(0, 36, 2))
    assert [cfg.window(i) for i in range(4)] == [128, 0, 128, 0]
    assert all(cfg.is_moe_layer(i) for i in range(36)) and cfg.defaults_taken == ()
    small = read("gpt-oss-20b")
    assert (small.num_layers, small.num_experts, small.sliding_layers) == (24, 32, tuple(range(0, 24, 2)))


def test_defaults_as_gptossconfig_takes_them():
    fields = {k: v for k, v in raw("gpt-oss-20b").items() if k not in ("layer_types", "sliding_window", "head_dim")}
    cfg = config.from_hf(fields)
    assert cfg.sliding_layers == tuple(range(0, 24, 2)) and cfg.sliding_window == 128 and cfg.qk_head_dim == 64
    assert len(cfg.defaults_taken) == 3
    # with them given, the same model and no default noted
    assert config.from_hf(raw("gpt-oss-20b")) == cfg
    assert config.from_hf({**fields, "architectures": ["GptOssForCausalLM"], "model_type": None}).model_type == "gpt_oss"


@pytest.mark.parametrize("change, message", [
    ({"layer_types": ["sliding_attention"] * 23}, "layer_types: must list one entry per layer (num_hidden_layers = 24), "
                                                  "got 23 entries"),
    ({"layer_types": ["sliding_attention"] * 3 + ["linear_attention"] + ["full_attention"] * 20},
     "layer_types: entry 3 must be \"sliding_attention\" or \"full_attention\", got 'linear_attention'"),
    ({"layer_types": "sliding_attention"}, "layer_types: must list one entry per layer"),
    ({"sliding_window": 0}, "sliding_window: must be >= 1, got 0"),
    ({"swiglu_limit": -7}, "swiglu_limit: must be a number > 0, got -7"),
    ({"swiglu_limit": True}, "swiglu_limit: must be a number > 0"),
])
def test_bad_fields_name_the_field(change, message):
    with pytest.raises(ModelError) as err:
        config.from_hf({**raw("gpt-oss-20b"), **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_layer_types_from_the_cli_one_line_exit_2_nothing_written(tmp_path, capsys):
    fields = {**raw("gpt-oss-20b"), "layer_types": ["full_attention"] * 25}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    scenario = tmp_path / "s.toml"
    scenario.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n\n'
                        '[model]\nconfig = "config.json"\nseq_length = 4096\n\n[hardware]\npreset = "H100"\n')
    before = sorted(tmp_path.iterdir())
    assert main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "layer_types: must list one entry per layer (num_hidden_layers = 24), got 25 entries" in err
    assert sorted(tmp_path.iterdir()) == before


def test_context_parallelism_is_refused_with_a_window(tmp_path, capsys):
    text = SCENARIO.read_text().replace("[parallel]\n", "[parallel]\ncontext = 2\n")
    text = text.replace('config = "models/', f'config = "{ROOT}/scenarios/models/')
    (tmp_path / "cp.toml").write_text(text)
    assert main(["model", str(tmp_path / "cp.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parallel.context: must be 1 for a model with sliding-window layers" in err


# -- parameter counts ---------------------------------------------------------------------------------
def by_hand(layers: int, experts: int) -> dict:
    """The model card's components worked out from the Hub config (transformers modeling_gpt_oss.py's tensors)."""
    h, a, kv, d, f, V, k = 2880, 64, 8, 64, 2880, 201088, 4
    attention = (h * a * d + a * d) + 2 * (h * kv * d + kv * d) + (a * d * h + h) + a  # q, k, v, o + biases, sinks
    expert = h * 2 * f + 2 * f + f * h + h  # gate_up_proj (+ bias), down_proj (+ bias)
    router = h * experts + experts  # weight and bias
    norms = 2 * h
    embed = V * h
    head = V * h + h  # unembedding and the final norm
    return {
        "attention": layers * attention,
        "mlp": layers * (experts * expert + router),
        "embed+unembed": 2 * embed,
        "total": layers * (attention + experts * expert + router + norms) + embed + head,
        "active": layers * (attention + k * expert + router + norms) + head,
    }


@pytest.mark.parametrize("name, layers, experts, card", [
    # OpenAI, "gpt-oss-120b & gpt-oss-20b Model Card" (arXiv:2508.10925), Table 1: MLP, attention,
    # embed + unembed, active and total parameters, in billions
    ("gpt-oss-120b", 36, 128, {"mlp": 114.71, "attention": 0.96, "embed+unembed": 1.16, "active": 5.13,
                               "total": 116.83}),
    ("gpt-oss-20b", 24, 32, {"mlp": 19.12, "attention": 0.64, "embed+unembed": 1.16, "active": 3.61,
                             "total": 20.91}),
])
def test_published_parameter_counts(name, layers, experts, card):
    cfg = read(name)
    t = params.totals(cfg)
    hand = by_hand(layers, experts)
    assert t.total == hand["total"] and t.activated == hand["active"]
    assert t.by_kind["attention"] == hand["attention"]
    assert t.by_kind["routed_experts"] + t.by_kind["mlp_dense_and_shared"] == hand["mlp"]
    for key, billions in card.items():
        assert round(hand[key] / 1e9, 2) == billions, key
    if name == "gpt-oss-120b":  # the figures themselves, as docs/model.md quotes them
        assert (t.total, t.activated) == (116_829_156_672, 5_132_849_472)


def test_biases_and_sinks_where_tensor_ranks_hold_them():
    cfg = read("gpt-oss-120b")
    h, E = 2880, 128
    # whole on every tensor rank: the two norms, o_proj's bias (row-parallel), the router and its bias
    assert params.whole_on_tensor(cfg, 0) == 2 * h + h + h * E + E
    # the sinks, one a head, are part of the attention's count
    assert params.attention(cfg) - params.attention(replace(cfg, attention_sinks=False)) == 64
    no_bias = config.from_hf({**raw("gpt-oss-120b"), "attention_bias": False})
    assert params.attention(cfg) - params.attention(no_bias) == 64 * 64 + 2 * 8 * 64 + h


# -- FLOPs ------------------------------------------------------------------------------------------
def test_one_sliding_layers_attention_flops():
    cfg = read("gpt-oss-120b")
    s = 4096
    # the convention's extent: a sliding query counts its 128 keys, a full one all 4096 (no causal halving)
    assert flops.layer(cfg, 0, s).attn_core == 2 * 128 * 64 * (64 + 64) == 2_097_152
    assert flops.layer(cfg, 1, s).attn_core == 2 * 4096 * 64 * (64 + 64) == 67_108_864
    # linears and MLP do not see the window
    assert flops.layer(cfg, 0, s).attn_linear == flops.layer(cfg, 1, s).attn_linear == 2 * 2880 * (4096 + 1024 + 4096)
    assert flops.layer(cfg, 0, s).mlp == 2 * (4 * 3 * 2880 * 2880 + 2880 * 128)
    f = flops.per_token(cfg, s)
    assert f.attention == 3 * 18 * (2_097_152 + 67_108_864)


def test_window_longer_than_the_sequence_is_the_full_layer():
    cfg = read("gpt-oss-120b")
    for s in (64, 128):
        assert flops.layer(cfg, 0, s).attn_core == flops.layer(cfg, 1, s).attn_core == 2 * s * 64 * 128
        assert flops.causal_keys(cfg, 0, s) == flops.causal_keys(cfg, 1, s) == s / 2


def test_causal_keys_of_a_band():
    cfg = read("gpt-oss-120b")
    s, w = 4096, 128
    # the band's area over the queries: s^2 / 2 less the triangle of side s - w beyond the window
    assert flops.causal_keys(cfg, 0, s) == (s * s - (s - w) ** 2) / (2 * s) == 126.0
    exact = (w * (w + 1) / 2 + (s - w) * w) / s  # query i sees min(i + 1, w) keys
    assert abs(flops.causal_keys(cfg, 0, s) / exact - 1) < 2e-4
    assert flops.causal_keys(cfg, 1, s) == s / 2


# -- kernels ----------------------------------------------------------------------------------------
def layer_rows(i: int, **layout) -> list[kernels.Kernel]:
    cfg = read("gpt-oss-120b")
    lay = kernels.Layout(seq=4096, micro_batch=1, **layout)
    return kernels.layer(cfg, i, rates.PRESETS["H100"], lay)


def test_sliding_layers_flash_kernel_takes_the_window():
    r = rates.PRESETS["H100"]
    fwd = {k.name: k for k in layer_rows(0)}["flash attention"]
    full = {k.name: k for k in layer_rows(1)}["flash attention"]
    # one micro-batch of 4096 tokens: 126 keys a query (the band) against 2048 (half the square)
    assert fwd.flops == 2 * 4096 * 126 * 64 * 128
    assert full.flops == 2 * 4096 * 2048 * 64 * 128
    # the windowed call takes the measured curve at 2 x 126 = 252 keys, where a causal call's queries
    # average as many keys; the full one at the sequence
    rate = r.attention_forward * 252 / (252 + r.attention_seq_half)
    assert fwd.ms == pytest.approx((r.floor + fwd.flops / rate) * 1e3, rel=1e-12)
    assert full.ms == pytest.approx((r.floor + full.flops / r.attention_rate(4096, False)) * 1e3, rel=1e-12)
    assert "window 128" in fwd.shape and "window" not in full.shape
    back = {k.name: k for k in layer_rows(0)}["flash attention backward"]
    assert back.flops == 2.5 * fwd.flops


def test_expert_biases_clamp_and_router_bias_kernels():
    rows = {k.name: k for k in layer_rows(0, expert=8)}
    n, k, h, f, ab, local = 4096, 4, 2880, 2880, 2, 16
    add = rows["experts fc2 bias x probs + add, cat"]
    assert add.bytes == n * k * h * 6 * ab and f"({2 * local + 1} kernels)" in add.shape
    assert rows["experts fc2 bias add backward"].bytes == n * k * h * 6 * ab
    assert rows["experts fc1 bias grad"].bytes == n * k * 2 * f * ab
    assert rows["experts swiglu clamp (clamp, clamp, cat)"].bytes == n * k * 2 * f * 4 * ab
    assert rows["experts swiglu clamp backward"].bytes == n * k * 2 * f * 3 * ab
    assert rows["router bias grad"].bytes == n * 128 * 4
    # a model without them (Mixtral's shape here) runs none of these
    mixtral = config.read(ROOT / "tests" / "data" / "mixtral-8x7b-config.json")
    plain = kernels.layer(mixtral, 0, rates.PRESETS["H100"], kernels.Layout(seq=4096, micro_batch=1, expert=8))
    assert not [r.name for r in plain if "bias" in r.name or "clamp" in r.name]


def test_clamped_swiglu_keeps_the_clamps_input():
    cfg = read("gpt-oss-120b")
    s, b, k, f = 4096, 1, 4, 2880
    saved = activations.layer(cfg, 0, s, b)
    assert saved["routed SwiGLU clamp inputs (fc1 output)"] == 2 * k * s * b * 2 * f
    assert activations.layer(cfg, 0, s, b) == activations.layer(cfg, 1, s, b)  # the window keeps nothing less
    rerun = activations.layer(cfg, 0, s, b, "selective", modules=("moe_act",))
    assert "routed SwiGLU clamp inputs (fc1 output)" not in rerun


# -- the scenario -----------------------------------------------------------------------------------
def test_scenario_explains_both_attention_kinds(capsys):
    assert main(["model", str(SCENARIO), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "attention: 18 sliding-window (128 keys) and 18 full layers" in out
    assert "moe layer (sliding window 128):" in out and "moe layer (full attention):" in out
    assert "4096 q x 4096 kv (window 128) x 64 heads" in out


def test_efficiency_mode_times_the_band(tmp_path):
    """Without kernel rates (hardware.efficiency) the core is its FLOPs at the BF16 peak x efficiency: a sliding
    layer's band of 126 keys a query, a full layer's causal half of the square (derive.layer_times)."""
    from dualpipe_sim.inputs import scenario
    from dualpipe_sim.model import derive

    text = SCENARIO.read_text().replace('preset = "H100"', 'preset = "H100"\nefficiency = 0.5')
    text = text.replace('config = "models/', f'config = "{ROOT}/scenarios/models/')
    (tmp_path / "eff.toml").write_text(text)
    st = derive.setup(scenario.load(tmp_path / "eff.toml"))
    assert st.rates is None
    peak = st.hw.peak(False) * 0.5
    per_token = 2 * 64 * (64 + 64)  # 2 x heads x (d_qk + d_v), times the keys a query attends to
    sliding, full = derive.layer_times(st, 0), derive.layer_times(st, 1)
    linears = 4096 * 2 * 2880 * (4096 + 1024 + 4096) / peak * 1e3
    assert sliding.attn_forward == pytest.approx(linears + 4096 * per_token * 126.0 / peak * 1e3, rel=1e-12)
    assert full.attn_forward == pytest.approx(linears + 4096 * per_token * 2048 / peak * 1e3, rel=1e-12)
