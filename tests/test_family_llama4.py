"""Llama 4 (``model_type = "llama4"``, its text model): counts worked out by hand from the config fields and checked
against Meta's model card, the MoE / dense interleave and NoPE patterns, chunked attention's FLOPs and kernels,
and the bad-input lines.  docs/model.md "Llama 4" says where each rule comes from."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import config, derive, flops, kernels, params
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.rates import PRESETS

from helpers import cli_error

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "data" / "configs"
SCOUT, MAVERICK = CONFIGS / "llama4-scout-config.json", CONFIGS / "llama4-maverick-config.json"
SCENARIO = ROOT / "scenarios" / "llama4-maverick.toml"

h, V, L, a, kv, d = 5120, 202048, 48, 40, 8, 128
ATTN = h * a * d + 2 * h * kv * d + a * d * h  # q, k, v, o: 26,214,400 + 2 x 5,242,880 + 26,214,400
NORMS = 2 * h  # input and post-attention RMSNorms (the q / k L2 norm has no weights)
EXPERT = 3 * h * 8192  # gate, up, down of one expert (intermediate_size) = the shared expert
DENSE_FFN = 3 * h * 16384  # intermediate_size_mlp
EMBED = HEAD = V * h  # untied; the head adds the final norm
# Meta's model card (meta-llama/llama-models @ 038acb9 models/llama4/MODEL_CARD.md): "17B (Activated) 109B (Total)"
# for Llama 4 Scout (17Bx16E), "17B (Activated) 400B (Total)" for Llama 4 Maverick (17Bx128E).


def vision_encoder() -> int:
    """The vision encoder and projector the card's totals may hold, from the configs' vision_config (image 336, patch
    14, hidden 1408, 34 layers, MLP 5632, projector 4096): transformers' Llama4VisionModel and Llama4MultiModalProjector
    (modeling_llama4.py @ 000c33f)."""
    hv, fv = 1408, 5632
    layer = 4 * (hv * hv + hv) + (hv * fv + fv) + (fv * hv + hv) + 2 * 2 * hv  # q k v o (biased), fc1, fc2, 2 LayerNorms
    patches = (336 // 14) ** 2 + 1  # positional_embedding_vlm: patches + the class token
    stem = hv + patches * hv + 3 * 14 * 14 * hv + 2 * 2 * hv  # class embedding, positions, patch linear, pre/post norms
    adapter = fv * 4096 + 4096 * 4096  # vision_adapter.mlp fc1 (intermediate -> projector_input), fc2
    projector = 4096 * h  # multi_modal_projector.linear_1: vision_output_dim -> the text hidden size
    return 34 * layer + stem + adapter + projector


def test_vision_encoder_by_hand_is_0_87b():
    assert vision_encoder() == 34 * 23_807_872 + 62_464_768 == 871_932_416


def test_scout_counts_by_hand_and_against_the_card():
    cfg = config.read(SCOUT)
    moe_layer = ATTN + NORMS + 16 * EXPERT + EXPERT + h * 16  # 16 routed, 1 shared, router h x E
    assert moe_layer == 2_202_101_760
    total = EMBED + 48 * moe_layer + h + HEAD
    assert total == 107_769_861_120
    t = params.totals(cfg)
    assert t.total == total
    # per token: attention, norms, the shared expert, the router and 1 routed expert, in each of the 48 layers
    active = 48 * (ATTN + NORMS + EXPERT + h * 16 + EXPERT) + h + HEAD
    assert t.activated == active == 16_138_408_960
    # The card: its 109B total holds the vision encoder (the text model alone rounds to 108B); its 17B activated is
    # the text model with the embedding table (with the vision encoder too it would round to 18B).
    assert round(total / 1e9) == 108 and round((total + vision_encoder()) / 1e9) == 109
    assert round((active + t.embedding) / 1e9) == 17 and round((active + t.embedding + vision_encoder()) / 1e9) == 18


def test_maverick_counts_by_hand_and_against_the_card():
    cfg = config.read(MAVERICK)
    dense_layer = ATTN + NORMS + DENSE_FFN
    moe_layer = ATTN + NORMS + 128 * EXPERT + EXPERT + h * 128
    assert (dense_layer, moe_layer) == (314_583_040, 16_295_536_640)
    total = EMBED + 24 * dense_layer + 24 * moe_layer + h + HEAD
    t = params.totals(cfg)
    assert t.total == total == 400_711_848_960
    active = 24 * dense_layer + 24 * (ATTN + NORMS + EXPERT + h * 128 + EXPERT) + h + HEAD
    assert t.activated == active
    # The card's 400B is a round figure: 400.7B text alone, 401.6B with the vision encoder, both within 0.5%
    assert abs(total / 400e9 - 1) < 0.002 and abs((total + vision_encoder()) / 400e9 - 1) < 0.005
    assert round((active + t.embedding) / 1e9) == 17  # 17.18B: the text model with its embedding table


def test_interleave_nope_and_chunk_patterns():
    scout, mav = config.read(SCOUT), config.read(MAVERICK)
    nope = tuple(range(3, 48, 4))  # (i + 1) % 4 == 0: every fourth layer has no rotary embedding
    assert scout.nope_layers == mav.nope_layers == nope
    assert scout.dense_layers == () and all(scout.is_moe_layer(i) for i in range(L))
    assert mav.dense_layers == tuple(range(0, 48, 2))  # interleave_moe_layer_step 2: MoE on layers 1, 3, ..., 47
    assert [mav.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert params.layer(mav, 0).mlp == DENSE_FFN and params.layer(mav, 1).routed == 128 * EXPERT
    assert [scout.chunked(i) for i in range(4)] == [True, True, True, False]
    assert scout.qk_l2_norm and not mav.qk_l2_norm  # Scout's use_qk_norm true, Maverick's false
    assert scout.attn_temperature  # the Hub's Scout config has attn_temperature_tuning 4: truthy, as transformers reads it
    assert "no_rope_layer_interval = 4" in " ".join(mav.defaults_taken) and not scout.defaults_taken
    # moe_layers, when given, overrides the interleave step (transformers' Llama4TextConfig)
    raw = json.loads(MAVERICK.read_text())
    raw["text_config"]["moe_layers"] = [0, 47]
    assert config.from_hf(raw).dense_layers == tuple(range(1, 47))
    raw["text_config"]["no_rope_layers"] = [1] * 47 + [0]
    assert config.from_hf(raw).nope_layers == (47,)
    raw["text_config"]["attention_chunk_size"] = None
    assert not any(config.from_hf(raw).chunked(i) for i in range(L))


def test_scenario_model_is_the_fixture():
    assert config.read(ROOT / "scenarios" / "models" / "llama4-maverick.json") == config.read(MAVERICK)


def test_a_text_only_config_reads_alike():
    raw = json.loads(SCOUT.read_text())
    text = dict(raw["text_config"], model_type="llama4_text")
    assert replace(config.from_hf(text), model_type="llama4") == config.from_hf(raw)


def test_chunked_attention_flops_shorter_and_longer_than_the_chunk():
    cfg = config.read(SCOUT)  # layer 0 chunked (RoPE), layer 3 full (NoPE); chunk 8192
    per_key = 2 * a * (d + d)  # QK^T and AV per query and key, full-square convention
    for s in (4096, 8192):  # one chunk: plain causal attention over the whole sequence on every layer
        assert flops.layer(cfg, 0, s).attn_core == flops.layer(cfg, 3, s).attn_core == per_key * s
    s = 20000  # chunks of 8192, 8192 and 3616 tokens
    keys = (2 * 8192**2 + 3616**2) / 20000
    assert flops.attention_keys(cfg, 0, s) == pytest.approx(keys) == pytest.approx(7364.6592)
    assert flops.layer(cfg, 0, s).attn_core == pytest.approx(per_key * keys)
    assert flops.layer(cfg, 3, s).attn_core == per_key * s
    assert flops.layer(cfg, 0, 16384).attn_core == per_key * 8192  # two whole chunks: half the square


def _layout(seq: int, tensor: int = 1) -> kernels.Layout:
    return kernels.Layout(seq, 1, tensor=tensor)


def _rows(cfg, i, seq):
    return kernels.layer(cfg, i, PRESETS["H100"], _layout(seq))


def test_chunked_flash_attention_kernel_by_hand():
    cfg, r, s = config.read(SCOUT), PRESETS["H100"], 20000
    fwd = next(k for k in _rows(cfg, 0, s) if k.name == "flash attention")
    keys = (2 * 8192**2 + 3616**2) / s
    assert fwd.flops == pytest.approx(2 * s * keys * a * 2 * d * 0.5)  # causal within each chunk
    # timed at the rate measured for an 8192-token sequence: a chunk is a sequence of its own to the kernel
    assert fwd.seconds == pytest.approx(r.floor + fwd.flops / r.attention_rate(8192, False))
    full = next(k for k in _rows(cfg, 3, s) if k.name == "flash attention")
    assert full.flops == pytest.approx(2 * s * s * a * 2 * d * 0.5)
    assert full.seconds == pytest.approx(r.floor + full.flops / r.attention_rate(s, False))
    # shorter than the chunk: the chunked layer's attention is the NoPE layer's, kernel for kernel
    short = [(k.name, k.flops, k.seconds) for k in _rows(cfg, 0, 4096) if k.kind == "attention"]
    assert short == [(k.name, k.flops, k.seconds) for k in _rows(cfg, 3, 4096) if k.kind == "attention"]


def test_rope_norm_and_temperature_kernels_by_layer_kind():
    scout, mav = config.read(SCOUT), config.read(MAVERICK)
    names = lambda cfg, i: {k.name for k in _rows(cfg, i, 4096)}  # noqa: E731
    assert {"rope", "rope backward", "q / k norms", "q / k norms backward"} <= names(scout, 0)
    assert "rope" in names(mav, 0) and "q / k norms" not in names(mav, 0)  # Maverick: use_qk_norm false
    nope = names(scout, 3)
    assert {"attention temperature (q scale)", "attention temperature backward"} <= nope
    assert not {"rope", "rope backward", "q / k norms"} & nope
    q = next(k for k in _rows(scout, 3, 4096) if k.name == "attention temperature (q scale)")
    assert q.bytes == 4096 * a * d * 2 * 2  # q read and written once in 16 bits


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "l4.toml"
    path.write_text(text.replace('"models/llama4-maverick.json"', json.dumps(str(MAVERICK))))
    return path


def test_stages_add_up_their_layers_of_each_kind(tmp_path):
    """Layers are costed once per kind (MoE or not, NoPE or not); a stage is the sum of its own layers."""
    text = SCENARIO.read_text().replace("seq_length = 4096", "seq_length = 20000")
    st = derive.setup(_load(_scenario(tmp_path, text)))
    d = derive.derive(st)
    for stage, fig in zip(st.stages[1:-1], d.stages[1:-1]):  # no embedding, no head
        layers = sum(
            t.forward + t.dispatch_forward + t.combine_forward
            for t in (derive.layer_times(st, i) for i in stage.layers)
        )  # fmt: skip
        extra = derive.extra_times(st, stage)[0] + next(iter(ms for _, ms in kernels.passes(derive.chunk_kernels(st, stage))), 0.0)
        assert fig.forward == pytest.approx(layers + extra, rel=1e-12)
    nope = derive.layer_times(st, 3).forward + derive.layer_times(st, 3).dispatch_forward
    rope = derive.layer_times(st, 1).forward + derive.layer_times(st, 1).dispatch_forward
    assert nope > rope  # layer 3 attends over all 20000 keys, layer 1 within chunks of 8192


def _load(path):
    return scenario.load(path)


def test_scenario_runs_and_explains_a_dense_and_an_moe_layer(capsys):
    assert main(["model", str(SCENARIO), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "  dense layer: " in out and "  moe layer: " in out and "  moe layer (NoPE, full attention): " in out
    assert "total 400.71 billion" in out


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"interleave_moe_layer_step": 0}, "text_config.interleave_moe_layer_step: must be >= 1, got 0"),
        ({"no_rope_layers": [1, 0]}, "text_config.no_rope_layers: must be a list of 1 (RoPE) or 0 (NoPE), one per layer (48)"),
        ({"moe_layers": [48]}, "text_config.moe_layers: must be a list of layer indices below num_hidden_layers (48)"),
        ({"attention_bias": True}, "text_config.attention_bias: Llama 4 with attention biases is not modelled"),
        ({"attn_temperature_tuning": "yes"}, "text_config.attn_temperature_tuning: must be true or false"),
        ({"num_experts_per_tok": 17}, "text_config.num_experts_per_tok: must be <= the number of experts (16)"),
    ],
)
def test_bad_text_config_names_the_field(change, expected):
    raw = json.loads(SCOUT.read_text())
    raw["text_config"].update(change)
    with pytest.raises(ModelError) as exc:
        config.from_hf(raw)
    assert str(exc.value).startswith(expected)


def test_no_text_config_and_no_top_level_fields():
    with pytest.raises(ModelError) as exc:
        config.from_hf({"model_type": "llama4", "vision_config": {}})
    assert str(exc.value).startswith("text_config: required key is missing")
    with pytest.raises(ModelError, match=r"^text_config: must be a table"):
        config.from_hf({"architectures": ["Llama4ForConditionalGeneration"], "text_config": 5})


def test_cli_bad_input_one_line_exit_2(tmp_path_factory):
    where = tmp_path_factory.mktemp("scenario")
    path = _scenario(where, SCENARIO.read_text())
    run_dir = tmp_path_factory.mktemp("run")
    line = cli_error(run_dir, "run", str(path), "--set", "model.interleave_moe_layer_step=0")
    assert line == "error: model.interleave_moe_layer_step: must be >= 1, got 0"
    line = cli_error(run_dir, "run", str(path), "--set", "model.seq_length=16384", "--set", "parallel.context=2")
    assert line.startswith("error: parallel.context: context parallelism with chunked attention")


def test_head_dim_default_is_llama4s_128():
    raw = json.loads(SCOUT.read_text())
    raw["text_config"].pop("head_dim")
    raw["text_config"]["num_attention_heads"] = 32  # hidden / heads would give 160
    cfg = config.from_hf(raw)
    assert cfg.qk_head_dim == 128 and "head_dim = 128 (Llama4TextConfig's default" in cfg.defaults_taken[0]
