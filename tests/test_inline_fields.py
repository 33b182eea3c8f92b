"""An inline ``[model]`` field (or ``--set model.X``) that the scenario's own family does not read is refused, one
line naming it; a config FILE's other fields stay ignored (HF configs carry many the simulator does not read).

config.FAMILY_FIELDS declares each family's fields; the first test proves every reader reads exactly its tuple:
a bogus value in a field the reader reads raises or changes the ModelConfig, in any other field changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dualpipe_sim.model import config, derive
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.sections import ModelSection

from helpers import cli_error

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


QWEN_MOE = {"model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 4, "vocab_size": 100,
            "num_attention_heads": 4, "intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}
SCOUT = _json(DATA / "configs" / "llama4-scout-config.json")
# Each family's configs; together they reach every conditional read (Llama 4 reads no_rope_layer_interval only
# without a no_rope_layers list)
VARIANTS = {
    "llama": [_json(ROOT / "scenarios" / "models" / "llama3-70b.json"),  # s20d: Qwen2's window fields, with the window on
              {**_json(ROOT / "scenarios" / "models" / "llama3-70b.json"), "model_type": "qwen2", "use_sliding_window": True}],
    "mixtral": [_json(DATA / "mixtral-8x7b-config.json")],
    "qwen_moe": [QWEN_MOE, {**QWEN_MOE, "model_type": "qwen3_moe"},  # qwen3_moe reads head_dim, qwen2_moe not
                 {**QWEN_MOE, "use_sliding_window": True}],  # s20d: the window's fields
    "deepseek": [_json(ROOT / "scenarios" / "models" / "deepseek-v3.json")],
    "glm4_moe": [_json(DATA / "configs" / "glm4.5.json")],
    "gpt2": [_json(DATA / "gpt2-config.json")],
    "nemotron": [_json(DATA / "configs" / "nemotron-4-15b.json")],
    "llama4": [SCOUT, {**SCOUT, "text_config": {k: v for k, v in SCOUT["text_config"].items()
                                                if k != "no_rope_layers"}}],
    "gpt_oss": [_json(DATA / "configs" / "gpt-oss-20b.json")],
}


def _read_by(raw: dict) -> set[str]:
    """The fields of INLINE_FIELDS whose value the reader looks at, found by setting each to a bogus string."""
    base = dataclasses.astuple(config.from_hf(raw))  # astuple: defaults_taken and not_costed too
    read = set()
    for key in config.INLINE_FIELDS - {"model_type", "architectures"}:
        try:
            changed = dataclasses.astuple(config.from_hf({**raw, key: "bogus"})) != base
        except ModelError:
            changed = True
        if changed:
            read.add(key)
    return read


def test_families_are_the_ones_the_readers_dispatch():
    assert set(config.FAMILY_FIELDS) == set(config.FAMILIES.values()) == set(VARIANTS)


@pytest.mark.parametrize("family", sorted(VARIANTS))
def test_each_reader_reads_exactly_its_declared_fields(family):
    read = set().union(*(_read_by(raw) for raw in VARIANTS[family]))
    assert read == config.FAMILY_FIELDS[family] - {"model_type", "architectures"}


def _section(**fields) -> ModelSection:
    return ModelSection.model_validate(fields)


def _line(field: str, mt: str, fields: str) -> str:
    return f'model.{field}: not read for model_type "{mt}" (its fields: {fields})'


NEMOTRON_FIELDS = ("architectures, attention_bias, head_dim, hidden_act, hidden_size, intermediate_size, mlp_bias, "
                   "model_type, num_attention_heads, num_hidden_layers, num_key_value_heads, partial_rotary_factor, "
                   "tie_word_embeddings, vocab_size")

# family's config -> a field only other families read (and no close name of the family's, so no did-you-mean)
FOREIGN = [
    ("llama", ROOT / "scenarios" / "models" / "llama3-70b.json", "llama", "n_routed_experts"),
    ("mixtral", DATA / "mixtral-8x7b-config.json", "mixtral", "mlp_only_layers"),
    ("deepseek", ROOT / "scenarios" / "models" / "deepseek-v3.json", "deepseek_v3", "n_embd"),
    ("glm4_moe", DATA / "configs" / "glm4.5.json", "glm4_moe", "q_lora_rank"),
    ("gpt2", DATA / "gpt2-config.json", "gpt2", "num_hidden_layers"),
    ("nemotron", DATA / "configs" / "nemotron-4-15b.json", "nemotron", "num_local_experts"),
    ("llama4", DATA / "configs" / "llama4-scout-config.json", "llama4", "sliding_window"),
    ("gpt_oss", DATA / "configs" / "gpt-oss-20b.json", "gpt_oss", "mlp_only_layers"),
]


@pytest.mark.parametrize("family,path,mt,field", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_a_field_only_another_family_reads_is_refused(family, path, mt, field):
    assert field in config.INLINE_FIELDS and field not in config.FAMILY_FIELDS[family]
    with pytest.raises(ModelError) as exc:
        derive.model_config(_section(config=str(path), **{field: 8}))
    assert str(exc.value) == _line(field, mt, ", ".join(sorted(config.fields_of(mt))))  # llama: not Qwen2's window


def test_nemotron_refusal_lists_its_fields_by_hand():
    raw = _json(DATA / "configs" / "nemotron-4-15b.json")
    with pytest.raises(ModelError) as exc:
        inline = {k: v for k, v in raw.items() if k in config.INLINE_FIELDS}
        derive.model_config(_section(**inline, num_local_experts=8))  # every field inline, one foreign
    assert str(exc.value) == _line("num_local_experts", "nemotron", NEMOTRON_FIELDS)


def test_set_on_the_cli_is_refused_with_exit_2_and_nothing_written(tmp_path):
    scenario = ROOT / "scenarios" / "validation" / "nemotron4-340b-dp16.toml"
    line = cli_error(tmp_path, "run", str(scenario), "--set", "model.num_local_experts=8")
    assert line == "error: " + _line("num_local_experts", "nemotron", NEMOTRON_FIELDS)


@pytest.mark.parametrize("path,field,close", [
    (DATA / "mixtral-8x7b-config.json", "num_experts", "num_local_experts"),  # Qwen-MoE's name on Mixtral
    (None, "num_local_experts", "num_experts"),  # Mixtral's name on Qwen-MoE
    (ROOT / "scenarios" / "models" / "deepseek-v3.json", "head_dim", "v_head_dim"),  # MLA has no head_dim
    (DATA / "gpt2-config.json", "num_attention_heads", None),  # GPT-2 says n_head: too far for a guess
])
def test_did_you_mean_names_the_family_s_close_field(path, field, close):
    section = _section(config=str(path), **{field: 8}) if path else _section(**QWEN_MOE, **{field: 8})
    with pytest.raises(ModelError) as exc:
        derive.model_config(section)
    message = str(exc.value)
    if close:
        assert message.endswith(f"); did you mean model.{close}?")
    else:
        assert "did you mean" not in message and message.endswith(")")


def test_a_config_file_with_fields_its_family_does_not_read_is_accepted(tmp_path):
    raw = _json(DATA / "mixtral-8x7b-config.json")
    extra = {**raw, "n_routed_experts": 256, "num_experts": 64, "rope_theta": 1e6, "hidden_act": "silu"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(extra))
    assert derive.model_config(_section(config=str(path))) == config.from_hf(raw)
    assert derive.model_config(_section(config=str(path))).num_experts == raw["num_local_experts"] == 8


def test_inline_model_type_decides_the_family_the_fields_are_checked_against(tmp_path):
    # the file says mixtral; an inline model_type of qwen2_moe makes num_local_experts the foreign field
    with pytest.raises(ModelError, match=r'^model\.num_local_experts: not read for model_type "qwen2_moe"'):
        derive.model_config(_section(config=str(DATA / "mixtral-8x7b-config.json"), model_type="qwen2_moe",
                                     num_local_experts=8))
    cfg = derive.model_config(_section(config=str(DATA / "mixtral-8x7b-config.json"), num_local_experts=4))
    assert cfg.num_experts == 4  # a field the family reads still overrides the file's
