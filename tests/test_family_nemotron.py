"""The nemotron family (model_type "nemotron", Nemotron-4): its config, parameter and FLOP counts worked out by hand
against the reports' figures, its squared-ReLU MLP's kernels and activations, bad input, and the validation rows'
layouts (scenarios/validation/nemotron4-340b-*.toml) against the 340B report's Table 2.

The configs in tests/data/configs/ are the reports' architecture tables written as transformers' NemotronConfig (the
340B checkpoint on the Hub is in NeMo's format, not a config.json): Nemotron-4 15B (arXiv 2402.16819, section 2:
32 layers, hidden 6,144, 48 heads, 8 KV heads, FFN 24,576, vocabulary 256,000) and 340B (arXiv 2406.11704, Table 1:
96 layers, hidden 18,432, 96 heads, 8 KV heads, FFN 73,728 = 4h).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import activations, config, ddp_buckets, derive, flops, params
from dualpipe_sim.model.config import ModelError

from helpers import cli_error

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "data" / "configs"
N15 = CONFIGS / "nemotron-4-15b.json"
N340 = CONFIGS / "nemotron-4-340b.json"
VALIDATION = ROOT / "scenarios" / "validation"
V = 256_000


def test_config_reads_as_nemotron_four():
    cfg = config.read(N340)
    assert (cfg.model_type, cfg.ffn, cfg.norm, cfg.bias, cfg.qkv_bias, cfg.tie_word_embeddings) == (
        "nemotron", "relu2", "layernorm", False, False, False)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.qk_head_dim, cfg.v_head_dim) == (96, 8, 192, 192)  # 18,432 / 96
    assert cfg.ffn_matrices == 2 and cfg.max_positions == 0  # up and down; rotary, no position table
    # the class name alone names the family, as transformers' NemotronForCausalLM
    raw = json.loads(N15.read_text())
    del raw["model_type"]
    assert config.from_hf(raw).model_type == "nemotron"


def test_15b_parameters_by_hand():
    """Nemotron-4 15B report, section 2: "3.2 billion embedding parameters and 12.5 billion non-embedding"."""
    h, f, layers, a, kv, d = 6144, 24576, 32, 48, 8, 128
    attention = h * a * d + 2 * h * kv * d + a * d * h  # q, k, v, o: 37,748,736 + 12,582,912 + 37,748,736
    assert attention == 88_080_384
    mlp = 2 * h * f  # up_proj, down_proj: 301,989,888
    norms = 2 * 2 * h  # two LayerNorm1p, weight and bias each
    per_layer = attention + mlp + norms
    assert per_layer == 390_094_848
    cfg = config.read(N15)
    assert params.layer(cfg, 0).total == per_layer
    t = params.totals(cfg)
    embeddings = 2 * V * h  # input table and the untied output layer: 3,145,728,000
    non_embedding = layers * per_layer + 2 * h  # + the final LayerNorm1p
    assert t.total == embeddings + non_embedding == 15_628_775_424
    assert t.embedding + t.head - 2 * h == embeddings
    assert round(non_embedding / 1e9, 1) == 12.5
    # 3.146e9: the report's "3.2" is 1.7% above it (no count of two 256,000 x 6,144 tables makes 3.2 exactly)
    assert embeddings / 3.2e9 == pytest.approx(1, abs=0.02)


def test_340b_parameters_by_hand():
    """Nemotron-4 340B report, section 2.2: "9.4 billion embedding parameters and 331.6 billion non-embedding"."""
    h, f, layers, a, kv, d = 18432, 73728, 96, 96, 8, 192
    attention = h * a * d + 2 * h * kv * d + a * d * h  # 339,738,624 x 2 + 56,623,104
    assert attention == 736_100_352
    per_layer = attention + 2 * h * f + 4 * h  # + up and down (2,717,908,992) + two LayerNorm1p
    assert per_layer == 3_454_083_072
    t = params.totals(config.read(N340))
    embeddings = 2 * V * h
    assert embeddings == 9_437_184_000  # the report: 9.4 billion embedding parameters
    non_embedding = layers * per_layer + 2 * h  # + the final LayerNorm1p
    assert t.total == embeddings + non_embedding == 341_029_195_776
    assert round(non_embedding / 1e9, 1) == 331.6


def test_flops_per_token_and_table_2_mfu():
    """6N + attention for the 340B, by hand, and Table 2's MFU from the CSV's tokens/s per GPU: tokens/s x FLOPs per
    token / 989 TFLOP/s (the report's BF16 peak) lands on each stage's published MFU, which checks the CSV's figures
    (transcribed from iteration time and batch) against the report's other column."""
    h, f, layers, a, d, s = 18432, 73728, 96, 96, 192, 4096
    linears = layers * (2 * h * a * d + 2 * h * 8 * d + 2 * h * f) + V * h  # every layer's matrices and the output layer
    attention = 12 * layers * s * a * d  # 3 x (QK^T + AV), 2 s a d FLOPs each a token
    per_token = flops.per_token(config.read(N340), s)
    assert per_token.six_n == 6 * linears
    assert per_token.attention == attention
    assert per_token.training == 6 * linears + attention
    for tokens_per_gpu, mfu in ((198.83, 0.424), (198.83, 0.423), (192.00, 0.410)):
        assert tokens_per_gpu * per_token.training / 989e12 == pytest.approx(mfu, abs=0.005)


def test_relu2_mlp_buffers_and_activations():
    cfg = config.read(N340)
    h, f, a, kv, d = 18432, 73728, 96, 8, 192
    assert params.ffn(cfg, f) == 2 * h * f
    # the gradient buffer's dense-layer tensors on one of 8 tensor ranks: fc1 (up alone) and fc2, h x f / 8 each
    assert ddp_buckets._layer_tensors(cfg, 0, 8)[-2:] == [h * f // 8, h * f // 8]
    s, b = 4096, 1
    per_token = (2 * h  # norm1 input
                 + 2 * h  # qkv input (norm1 output)
                 + 2 * (a + kv) * d + 2 * kv * d  # q, k; v
                 + 4 * a  # flash attention's fp32 log-sum-exp
                 + 2 * a * d  # o_proj input
                 + 2 * h + 2 * h  # norm2 input, fc1 input
                 + 2 * f  # the squared ReLU's input (fc1 output), which its fused backward reads
                 + 2 * f)  # fc2 input (its output)
    assert activations.layer_total(cfg, 0, s, b, "none") == s * b * per_token


def _kernels(name: str, *overrides: str):
    sc = scenario.load(VALIDATION / name, list(overrides))
    return derive.layer_kernels(derive.setup(sc), 0)


def test_relu2_is_one_fused_memory_kernel_each_way():
    """Megatron-core's squared_relu is @jit_fuser: forward reads fc1's output and writes its own (2 bytes each), the
    backward reads the gradient and the saved input and writes the input gradient, as the GeLU rows are costed."""
    rows = _kernels("nemotron4-340b-dp16.toml", "memory.recompute=none")
    names = [r.name for r in rows]
    assert "relu2" in names and not {"swiglu", "gelu"} & set(names)
    n, f_t = 4096, 73728 // 8  # the micro-batch's tokens (gathered from sequence parallelism), fc1's width a rank
    forward = next(r for r in rows if r.name == "relu2")
    assert (forward.component, forward.kind, forward.bytes) == ("mlp_forward", "memory", n * (f_t * 2 + f_t * 2))
    backward = next(r for r in rows if r.name == "activation backward")
    assert backward.bytes == n * 3 * f_t * 2


@pytest.mark.parametrize("dp, batch", [(16, 768), (32, 1536), (64, 2304)])
def test_340b_layouts_as_table_2(dp, batch):
    """TP 8 x PP 12 x DP = Table 2's GPUs; interleaved, 8 virtual stages a rank (launcher config); micro-batch 1; the
    micro-batches x DP make the stage's batch; sequence 4,096."""
    sc = scenario.load(VALIDATION / f"nemotron4-340b-dp{dp}.toml")
    p, par, m = sc.pipeline, sc.parallel, sc.model
    assert (p.schedule, p.stages // p.chunks_per_rank, p.chunks_per_rank) == ("interleaved-1f1b", 12, 8)
    assert (par.tensor, par.data, m.micro_batch_size, m.seq_length) == (8, dp, 1, 4096)
    assert p.microbatches * dp == batch
    assert derive.run_gpus(sc, p.stages) == 8 * 12 * dp


@pytest.mark.parametrize("field, value, rule", [
    ("hidden_act", "silu", 'must be "relu2" for nemotron'),
    ("attention_bias", True, "must be false for nemotron"),
    ("mlp_bias", True, "must be false for nemotron"),
    ("partial_rotary_factor", 0, "must be a number in (0, 1]"),
    ("partial_rotary_factor", 1.5, "must be a number in (0, 1]"),
])  # fmt: skip
def test_bad_nemotron_fields_name_the_field(field, value, rule):
    raw = json.loads(N15.read_text())
    raw[field] = value
    with pytest.raises(ModelError) as err:
        config.from_hf(raw, "model.")
    assert str(err.value).startswith(f"model.{field}: {rule}")


def test_cli_refuses_a_gated_nemotron_with_one_line(tmp_path, tmp_path_factory):
    toml = tmp_path_factory.mktemp("in") / "s.toml"
    toml.write_text(
        '[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n'
        '[model]\nmodel_type = "nemotron"\nhidden_size = 64\nnum_hidden_layers = 4\nnum_attention_heads = 4\n'
        'intermediate_size = 256\nvocab_size = 512\nhidden_act = "silu"\n')
    line = cli_error(tmp_path, "run", str(toml))
    assert """model.hidden_act: must be "relu2" for nemotron (squared ReLU), got 'silu'""" in line
