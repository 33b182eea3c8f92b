"""The learned position table is whole on every tensor rank (s11e): Megatron-core builds it as a
plain torch.nn.Embedding beside the vocabulary-parallel word table ("Position embedding (serial)",
NVIDIA/Megatron-LM @ 1e05700 megatron/core/models/common/embeddings/language_model_embedding.py
lines 65-68; Megatron-LM 2021 the same, 6985e58 megatron/model/language_model.py lines 139-141),
so a rank holds V x h / TP word weights and all of the 2,048 x 12,288 position weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, layout, params

ROOT = Path(__file__).resolve().parent.parent
GPT3 = ROOT / "scenarios" / "validation" / "k22-175b-seqsel.toml"  # GPT-3 175B, TP 8, A100, no data parallelism

WORD_PER_RANK = 51_200 * 12_288 // 8  # 78,643,200: the word table split over 8 tensor ranks
POSITIONS = 2_048 * 12_288  # 25,165,824: the position table, on every tensor rank


def test_gpt3_embedding_stage_holds_every_position_weight():
    st = derive.setup(scenario.load(GPT3))
    assert st.sharding.tensor == 8 and st.sharding.zero == 0
    static, _ = derive.stage_memory(st, layout.Stage((), embedding=True))
    elements = WORD_PER_RANK + POSITIONS  # 103,809,024 (the position table / 8 would be 81,788,928)
    assert static.parameters == pytest.approx(elements * 2)  # bf16 weights: 207,618,048 bytes
    assert static.gradients == pytest.approx(elements * st.sharding.grads_bytes)


def test_the_embedding_count_over_tensor_by_hand():
    cfg = derive.setup(scenario.load(GPT3)).cfg
    assert params.embedding(cfg) == 51_200 * 12_288 + POSITIONS  # the model's count: one table of each
    assert params.embedding_over_tensor(cfg, 8) / 8 == WORD_PER_RANK + POSITIONS
    assert params.embedding_over_tensor(cfg, 1) == params.embedding(cfg)


def test_model_verb_counts_the_position_table_once():
    """`model --json`'s per-stage "parameters" is the model's count, the position table once, though
    each of the 8 tensor ranks holds it whole.  Stage 0 of 24: the embedding and 4 GPT-3 layers of
    12 h^2 + 13 h (QKV, out, fc1, fc2 with biases, two LayerNorms)."""
    from dualpipe_sim.model import report

    sc = scenario.load(GPT3)
    out = report.summary(sc.derived(), sc)
    h = 12_288
    assert out["stages"][0]["parameters"] == 51_200 * h + 2_048 * h + 4 * (12 * h * h + 13 * h)
