"""s20d: Mistral's and the Qwen families' sliding window, read as transformers @ 008e574 sets it, costed by the
window machinery gpt-oss's layers use (flops.causal_keys, the flash kernel's band).  Before s20d these configs were
costed as full attention whatever use_sliding_window said.

transformers @ 008e574: Qwen3MoeConfig.__post_init__ ``sliding_window if use_sliding_window else None`` and
Qwen3MoeAttention (modeling @ 00d4b3d) passes it on every layer; Qwen2Config / Qwen3Config the same window on the
layers ``layer_types`` marks, by default ``i >= max_window_layers`` (28); Qwen2MoeConfig ``(i + 1) % 2 and i <
max_window_layers``; MistralConfig ``sliding_window`` (default 4096) on every layer, null for none."""

from __future__ import annotations

import pytest

from dualpipe_sim.model import config, flops
from dualpipe_sim.model.config import ModelError

BASE = {"hidden_size": 2048, "num_hidden_layers": 6, "vocab_size": 1000, "num_attention_heads": 32,
        "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144}  # fmt: skip
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 768}


def windows(model_type: str, **fields) -> list[int]:
    cfg = config.from_hf({"model_type": model_type, **BASE, **(MOE if "moe" in model_type else {}), **fields})
    return [cfg.window(i) for i in range(6)]


def test_qwen3_moe_windows_every_layer_with_use_sliding_window():
    assert windows("qwen3_moe") == [0] * 6  # the default: use_sliding_window false
    assert windows("qwen3_moe", use_sliding_window=True, sliding_window=1024) == [1024] * 6
    assert windows("qwen3_moe", use_sliding_window=True) == [4096] * 6  # Qwen3MoeConfig's default window
    assert windows("qwen3_moe", use_sliding_window=True, sliding_window=None) == [0] * 6  # null: none
    assert windows("qwen3_moe", use_sliding_window=False, sliding_window=1024) == [0] * 6


def test_qwen2_and_qwen3_window_from_max_window_layers_and_qwen2_moe_its_even_layers_below():
    on = dict(use_sliding_window=True, sliding_window=1024, max_window_layers=4)
    assert windows("qwen2", **on) == windows("qwen3", **on) == [0, 0, 0, 0, 1024, 1024]
    assert windows("qwen2_moe", **on) == [1024, 0, 1024, 0, 0, 0]  # (i + 1) % 2 and i < 4: 0 and 2
    assert windows("qwen3", use_sliding_window=True, sliding_window=1024) == [0] * 6  # 6 layers, all under 28
    kinds = ["full_attention", "sliding_attention"] * 3
    assert windows("qwen2", **on, layer_types=kinds) == [0, 1024] * 3  # layer_types, when given, decide
    assert windows("qwen2", sliding_window=1024, max_window_layers=0) == [0] * 6  # without use_sliding_window


def test_mistral_windows_every_layer_unless_null():
    assert windows("mistral", sliding_window=1024) == [1024] * 6
    assert windows("mistral") == [4096] * 6  # MistralConfig's default, said in defaults_taken
    assert windows("mistral", sliding_window=None) == [0] * 6  # Mistral-7B-v0.2 on
    assert windows("llama", sliding_window=1024) == [0] * 6  # Llama reads no window


def test_a_windowed_qwen3_moe_layer_costs_its_band():
    """seq 4096, window 1024: the attention core counts min(w, s) = 1024 keys a query (the full-square
    convention), 2 x 1024 x 32 heads x (128 + 128) = 16,777,216 FLOPs a token, a quarter of the 4096 full; the
    flash kernel's causal band (4096^2 - 3072^2) / (2 x 4096) = 896 keys a query, against 2048."""
    on = config.from_hf({"model_type": "qwen3_moe", **BASE, **MOE, "use_sliding_window": True, "sliding_window": 1024})
    off = config.from_hf({"model_type": "qwen3_moe", **BASE, **MOE})
    assert flops.attention_keys(on, 0, 4096) == 1024 and flops.attention_keys(off, 0, 4096) == 4096
    assert flops.causal_keys(on, 0, 4096) == 896 and flops.causal_keys(off, 0, 4096) == 2048
    assert flops.layer(on, 0, 4096).attn_core == 2 * 1024 * 32 * 256 == 16_777_216
    assert flops.layer(off, 0, 4096).attn_core == 4 * 16_777_216


def test_a_bad_window_field_names_its_key():
    with pytest.raises(ModelError, match="^max_window_layers: must be a whole number"):
        windows("qwen2", use_sliding_window=True, max_window_layers="x")
    with pytest.raises(ModelError, match="^use_sliding_window: must be true or false"):
        windows("qwen3_moe", use_sliding_window="yes")
    with pytest.raises(ModelError, match="^layer_types: must list one entry per layer"):
        windows("qwen3", use_sliding_window=True, layer_types=["full_attention"])
