"""model/config.py's refusals that the s16g coverage run found no test reaching: each field rule of a
config.json (or inline [model]) as one ModelError line naming the field, and read_raw's file problems.
Before s16g GPT-2's dropout check stopped at the first positive probability (any() over a generator),
so a bad resid_pdrop or embd_pdrop passed unseen whenever attn_pdrop was set."""

from __future__ import annotations

import json

import pytest

from dualpipe_sim import limits
from dualpipe_sim.model.config import ModelError, from_hf, read, read_raw

LLAMA = dict(model_type="llama", hidden_size=256, num_hidden_layers=4, vocab_size=1000, num_attention_heads=4,
             intermediate_size=512)  # fmt: skip
GPT2 = dict(model_type="gpt2", n_embd=256, n_layer=2, n_head=4, vocab_size=100, n_positions=128)


def refusal(raw) -> str:
    with pytest.raises(ModelError) as err:
        from_hf(raw, "m.json: ")
    return str(err.value)


def without(raw: dict, key: str) -> dict:
    return {k: v for k, v in raw.items() if k != key}


@pytest.mark.parametrize("value,rule", [
    (1.5, "must be a whole number, got 1.5"),
    (float("nan"), "must be a whole number, got nan"),
    (True, "must be a whole number, got True"),
    ("1000", "must be a whole number, got '1000'"),
    (0, "must be >= 1, got 0"),
    (10**9 + 1, "must be <= 1e9, got 1000000001"),
])  # fmt: skip
def test_a_whole_number_field_names_its_rule(value, rule):
    assert refusal({**LLAMA, "vocab_size": value}) == f"m.json: vocab_size: {rule}"


def test_a_whole_float_counts_as_a_whole_number_and_a_missing_field_is_named():
    assert from_hf({**LLAMA, "vocab_size": 2000.0}).vocab_size == 2000
    assert refusal(without(LLAMA, "vocab_size")) == "m.json: vocab_size: required key is missing"


def test_layers_past_the_cap_and_heads_that_do_not_group():
    assert refusal({**LLAMA, "num_hidden_layers": 10_001}) == "m.json: num_hidden_layers: must be <= 10,000, got 10001"
    assert refusal({**LLAMA, "num_key_value_heads": 3}) == (
        "m.json: num_key_value_heads: must divide num_attention_heads (4), got 3"
    )


def test_a_flag_is_true_false_or_absent():
    assert from_hf({**LLAMA, "tie_word_embeddings": None}).tie_word_embeddings is False  # JSON null: the default
    assert from_hf({**LLAMA, "tie_word_embeddings": True}).tie_word_embeddings is True
    assert refusal({**LLAMA, "tie_word_embeddings": "yes"}) == "m.json: tie_word_embeddings: must be true or false, got 'yes'"


def test_architectures_stand_in_for_a_missing_model_type():
    assert from_hf({**without(LLAMA, "model_type"), "architectures": ["MistralForCausalLM"]}).model_type == "mistral"
    assert refusal(without(LLAMA, "model_type")) == "m.json: model_type: required key is missing (or give architectures)"
    line = refusal({**without(LLAMA, "model_type"), "architectures": ["FooForCausalLM"]})
    assert line.startswith("m.json: model_type: unknown architecture 'FooForCausalLM' (known: ") and " llama," in line
    assert refusal({**LLAMA, "model_type": 3}).startswith("m.json: model_type: unknown architecture 3 (known: ")


def test_not_an_object():
    assert refusal([1]) == "m.json: expected a JSON object of config fields"
    with pytest.raises(ModelError, match="^model: expected a JSON object of config fields$"):
        from_hf([1])


def test_moe_fields():
    moe = {**LLAMA, "model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64}
    assert refusal({**moe, "mlp_only_layers": [0, "1"]}) == (
        "m.json: mlp_only_layers: must be a list of layer indices, got [0, '1']"
    )
    assert refusal({**moe, "num_experts_per_tok": 9}) == (
        "m.json: num_experts_per_tok: must be <= the number of experts (8), got 9"
    )


def test_gpt2_heads_must_divide_the_width():
    assert refusal({**GPT2, "n_head": 3}) == "m.json: n_head: must divide n_embd (256), got 3"


@pytest.mark.parametrize("key", ["attn_pdrop", "resid_pdrop", "embd_pdrop"])
@pytest.mark.parametrize("value", [1.0, -0.1, True])
def test_every_gpt2_dropout_is_checked_whatever_the_others_are(key, value):
    """attn_pdrop defaults to 0.1 > 0; the other two must still be checked (the any() bug)."""
    assert refusal({**GPT2, key: value}) == f"m.json: {key}: must be a probability in [0, 1), got {value!r}"


def test_gpt2_dropout_is_on_when_any_probability_is_positive():
    off = {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}
    assert from_hf({**GPT2, **off}).dropout is False
    assert from_hf({**GPT2, **off, "embd_pdrop": 0.05}).dropout is True
    assert from_hf(GPT2).dropout is True  # GPT2Config's defaults, 0.1 each


def test_read_raw_words_each_file_problem(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ModelError, match=f"^{missing}: model config file not found$"):
        read_raw(missing)
    with pytest.raises(ModelError, match=f"^{tmp_path}: cannot read model config: "):
        read_raw(tmp_path)  # a folder: IsADirectoryError, an OSError
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ModelError, match=f"^{bad}: not valid JSON: "):
        read_raw(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(ModelError, match=f"^{listed}: expected a JSON object of config fields$"):
        read_raw(listed)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (limits.MAX_SCENARIO_BYTES + 1))  # one byte past the 16 MiB cap
    with pytest.raises(ModelError, match=f"^{big}: more than 16 MiB, too large to be a model config$"):
        read_raw(big)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(LLAMA))
    assert read(good).num_layers == 4
