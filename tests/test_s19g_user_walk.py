"""s19g: a new user's day with an MoE model on Blackwell (Qwen3-30B-A3B on B200 / GB200).
What the walk found wrong, each checked against an independent truth (the HF model code, the figure's geometry)."""

from __future__ import annotations

import pytest

from dualpipe_sim.model import config, derive
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.sections import ModelSection

# Qwen3-30B-A3B's fields that shape the model (Qwen/Qwen3-30B-A3B config.json), shrunk to keep the test fast.
QWEN3_MOE = {"model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 4, "vocab_size": 100,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 192,
             "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32}


# -- 1. Qwen3-MoE has no shared expert --------------------------------------------------------
# transformers' Qwen3MoeSparseMoeBlock (huggingface/transformers@b282e23,
# src/transformers/models/qwen3_moe/modular_qwen3_moe.py) is a gate and the routed experts only; Qwen2-MoE's block
# adds shared_expert and shared_expert_gate from shared_expert_intermediate_size.  A Qwen3-MoE config carrying the
# field (a config copied from Qwen2-MoE) runs with no shared expert in transformers.

def test_a_qwen3_moe_config_with_a_shared_expert_size_has_no_shared_expert():
    with_field = config.from_hf({**QWEN3_MOE, "shared_expert_intermediate_size": 1024})
    assert with_field.shared_intermediate_size == 0 and not with_field.shared_expert_gate
    assert with_field == config.from_hf(QWEN3_MOE)


def test_qwen2_moe_still_reads_its_shared_expert():
    cfg = config.from_hf({**QWEN3_MOE, "model_type": "qwen2_moe", "head_dim": None,
                          "shared_expert_intermediate_size": 1024})
    assert cfg.shared_intermediate_size == 1024 and cfg.shared_expert_gate


def test_an_inline_shared_expert_size_on_qwen3_moe_is_refused():
    section = ModelSection.model_validate({**QWEN3_MOE, "shared_expert_intermediate_size": 1024})
    with pytest.raises(ModelError, match=r'^model\.shared_expert_intermediate_size: not read for model_type '
                                         r'"qwen3_moe" \(its fields: '):
        derive.model_config(section)
    assert "shared_expert_intermediate_size" in config.fields_of("qwen2_moe")
    assert "shared_expert_intermediate_size" not in config.fields_of("qwen3_moe")

