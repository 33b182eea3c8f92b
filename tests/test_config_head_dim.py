"""A config.json without ``head_dim`` takes what Hugging Face transformers takes for its model_type
(docs/model.md "Reading a config": Qwen3Config defaults to 128; Llama, Mistral, Mixtral, Qwen2,
Qwen2-MoE and Qwen3-MoE fall back to hidden_size // num_attention_heads), and ``model --explain`` says so."""

from __future__ import annotations

import json

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.model import config, params

# Qwen3-30B-A3B's shape (Qwen/Qwen3-30B-A3B config.json) with a few layers, head_dim left out.
BASE = {"hidden_size": 2048, "num_hidden_layers": 2, "vocab_size": 1000, "num_attention_heads": 32,
        "num_key_value_heads": 4, "intermediate_size": 6144}
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 768,
       "num_local_experts": 8}  # Qwen-MoE reads num_experts, Mixtral num_local_experts


@pytest.mark.parametrize("model_type, head_dim", [
    ("qwen3", 128),  # Qwen3Config(head_dim=128)
    ("qwen3_moe", 64),  # no head_dim in Qwen3MoeConfig: the attention's getattr fallback, 2048 // 32
    ("llama", 64), ("mistral", 64), ("mixtral", 64), ("qwen2", 64), ("qwen2_moe", 64),
])
def test_head_dim_default_per_model_type(model_type, head_dim):
    cfg = config.from_hf({"model_type": model_type, **BASE, **MOE})
    assert (cfg.qk_head_dim, cfg.v_head_dim) == (head_dim, head_dim)
    # s20d: a Mistral config without sliding_window takes MistralConfig's 4096 too, and says so
    window = ["sliding_window = 4096 (mistral's config default; the config has none)"] if model_type == "mistral" else []
    assert len(cfg.defaults_taken) == 1 + len(window) and f"= {head_dim} (" in cfg.defaults_taken[0]
    assert list(cfg.defaults_taken[1:]) == window
    given = config.from_hf({"model_type": model_type, **BASE, **MOE, "head_dim": head_dim})
    if model_type == "qwen2_moe":  # reads no head_dim (tests/test_qa_s17.py): the same, and says it ignored it
        assert given.qk_head_dim == head_dim and given.defaults_taken[0].endswith(f"the config's {head_dim} ignored)")
    else:
        assert given == cfg and given.defaults_taken == tuple(window)
    # Attention weights by hand: q and o are 32 heads x head_dim wide, k and v 4 kv heads x head_dim;
    # Qwen2's q, k, v biases, Qwen3's per-head q and k RMSNorms.
    d = head_dim
    by_hand = 2 * 2048 * 32 * d + 2 * 2048 * 4 * d
    by_hand += (32 * d + 2 * 4 * d) if model_type.startswith("qwen2") else 0
    by_hand += 2 * d if model_type.startswith("qwen3") else 0
    assert params.attention(cfg) == by_hand


def test_a_given_head_dim_is_kept_and_null_is_missing():
    cfg = config.from_hf({"model_type": "qwen3", **BASE, "head_dim": 96})
    assert cfg.qk_head_dim == 96 and cfg.defaults_taken == ()
    assert config.from_hf({"model_type": "qwen3", **BASE, "head_dim": None}).qk_head_dim == 128


def test_model_explain_says_which_default_was_taken(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen3", **BASE}))
    assert main(["model", str(path), "--explain"]) == 0
    assert "config default taken: head_dim = 128 (Qwen3Config's default; the config has no head_dim)" in (
        capsys.readouterr().out)
    path.write_text(json.dumps({"model_type": "qwen3", **BASE, "head_dim": 128}))
    assert main(["model", str(path), "--explain"]) == 0
    assert "config default taken" not in capsys.readouterr().out
