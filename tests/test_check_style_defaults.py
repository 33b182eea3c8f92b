"""Scenarios that set only the layout (issue 21's independent check): they run, and the values the defaults
derive are Megatron-core's (docs/model.md, "What the defaults describe").

Hand-worked from NVIDIA/Megatron-LM @ d98e8a6: buckets of at least max(40e6, 1e6 x data) elements, filled
walking the parameters backwards (`param_and_grad_buffer.py`), only on pipeline rank 0's first model chunk
(`disable_bucketing`); `align_grad_reduce` (default on) launches the interleaved schedule's reductions
pp-aligned; the non-interleaved schedule waits for its batched P2P (`overlap_p2p_comm = False`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import ddp_buckets

ROOT = Path(__file__).resolve().parent.parent
LLAMA3_8B = {  # meta-llama/Meta-Llama-3-8B config.json's fields
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False,
}  # fmt: skip
MIXTRAL = str(ROOT / "tests" / "data" / "mixtral-8x7b-config.json")
OVERLAPPED = {"grad_sync": "derived", "overlap_grad_sync": True}


def check_style(pipeline: dict, model: dict, parallel: dict, preset: str = "H100") -> dict:
    """Only the keys the check sets."""
    return {"pipeline": pipeline, "model": {"seq_length": 8192, "micro_batch_size": 1, "fp8": True, **model},
            "parallel": parallel, "hardware": {"preset": preset}, "step": dict(OVERLAPPED)}  # fmt: skip


DENSE = check_style({"schedule": "interleaved-1f1b", "stages": 8, "chunks_per_rank": 2, "microbatches": 8},
                    LLAMA3_8B, {"tensor": 2, "data": 64, "zero": 1})  # fmt: skip


# -- Megatron's bucket rule, by hand -------------------------------------------------------------------------
# Llama 3 8B on TP 2, one tensor rank's parameters of a layer in the order it registers them:
PROJ = 32 * 128 * 4096 // 2  # linear_proj (made by Attention before SelfAttention makes linear_qkv)
QKV = (4096 * 4096 + 2 * 4096 * 1024) // 2  # linear_qkv: q, k, v
FC1, FC2 = 2 * 4096 * 14336 // 2, 4096 * 14336 // 2  # gate + up, down
EMBEDDING = 128256 * 4096 // 2  # vocabulary-parallel


def test_layer_tensors_by_hand():
    assert (PROJ, QKV, FC1, FC2, EMBEDDING) == (8_388_608, 12_582_912, 58_720_256, 29_360_128, 262_668_288)
    d = scenario.from_dict(DENSE).derived()
    first = d.setup.stages[0]
    assert first.embedding and first.layers == (0, 1, 2, 3)  # 32 layers on 8 stages
    layer = [PROJ, 4096, QKV, 4096, FC1, FC2]  # norms: RMSNorm, 4096 each
    assert ddp_buckets.stage_zero_tensors(d.setup.cfg, first, 2) == [EMBEDDING] + layer * 4


def test_bucket_count_worked_by_hand_data_64():
    # bucket size max(40e6, 64e6) = 64e6.  Backwards: fc2 29.4M + fc1 58.7M = 88.1M closes bucket 1; the
    # attention's 21.0M (norm, qkv, norm, proj) + the next layer's fc2 = 50.3M, + its fc1 closes bucket 2;
    # so on: buckets 3 and 4 close at layers 1 and 0's fc1; layer 0's attention + the embedding: bucket 5.
    attention = 4096 + QKV + 4096 + PROJ
    assert attention == 20_979_712 and FC2 + FC1 >= 64e6 and attention + FC2 < 64e6
    assert ddp_buckets.bucket_size(64) == 64_000_000
    assert ddp_buckets.per_stage(scenario.from_dict(DENSE)) == (5, 1, 1, 1, 1, 1, 1, 1)


def test_bucket_count_worked_by_hand_data_8():
    # bucket size 40e6 (the floor): fc2 + fc1 closes bucket 1; the attention + fc2 (50.3M) closes 2 and fc1
    # alone (58.7M) 3; layers 1 and 0 the same (4, 5 and 6, 7); layer 0's attention + the embedding: 8.
    raw = {**DENSE, "parallel": {"tensor": 2, "data": 8, "zero": 1}}
    assert ddp_buckets.bucket_size(8) == 40_000_000
    assert ddp_buckets.per_stage(scenario.from_dict(raw)) == (8, 1, 1, 1, 1, 1, 1, 1)


def test_fill_closes_at_the_parameter_that_fills_the_bucket():
    # ddp_buckets.fill, the rule every derived count and cut goes through: tensors in forward order, walked back;
    # each bucket as (forward position of its first tensor, elements, 1), forward order
    fill = ddp_buckets.fill
    assert fill([3, 3, 3], [0, 1, 2], 5) == [(0, 3, 1), (3, 6, 1)]  # 3 + 3 = 6 >= 5 closes; [3] left
    assert fill([1, 5], [0, 1], 5) == [(0, 1, 1), (1, 5, 1)]  # 5 reaches 5 exactly: closed (>=)
    assert fill([4], [0], 5) == [(0, 4, 1)]
    assert fill([9, 2, 2], [0, 1, 2], 5) == [(0, 13, 1)]  # 2 + 2 = 4, + 9 = 13 closes: one bucket
    assert fill([9, 2, 2], [0, 1, 2], 5, frozenset({0})) == [(0, 9, 1), (9, 4, 1)]  # a shared embedding alone
    # unbucketed (size None), the last stage's tied output weight (registered last) alone: [2, 2] | [9]
    assert fill([2, 2, 9], [0, 1, 2], None, frozenset({2})) == [(0, 4, 1), (4, 9, 1)]
    assert fill([2, 2, 9], [0, 1, 2], None) == [(0, 13, 1)]
    assert fill([2, 5, 9], [0, 2], None, frozenset({1})) == [(0, 11, 1)]  # members only: 1 is another buffer's


def test_tied_embedding_shared_with_the_last_stage_gets_its_own_bucket():
    # untied: layer 0's attention (21.0M) and the embedding share the last bucket; tied with the distributed
    # optimizer they are apart (Megatron's shared_embedding): one more
    tied = {**DENSE, "model": {**DENSE["model"], **LLAMA3_8B, "tie_word_embeddings": True}}
    assert ddp_buckets.per_stage(scenario.from_dict(tied))[0] == 6


def test_one_bucket_without_overlap_or_as_given():
    plain = {**DENSE, "step": {"grad_sync": "derived", "overlap_grad_sync": False}}
    assert ddp_buckets.per_stage(scenario.from_dict(plain)) == (1,) * 8
    given = {**DENSE, "step": {**OVERLAPPED, "grad_sync_buckets": 3}}
    assert ddp_buckets.per_stage(scenario.from_dict(given)) == (3,) * 8
    typed = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}, "costs": {"forward": 1, "backward": 2},
             "step": {"grad_sync": 1.0, "overlap_grad_sync": True}}  # fmt: skip
    assert scenario.from_dict(typed).step_costs().grad_sync_buckets == (1, 1)  # no [model]: nothing to derive


# -- launch and P2P -----------------------------------------------------------------------------------------
def test_launch_and_p2p_follow_the_schedule():
    sc = scenario.from_dict(DENSE)
    assert sc.step_costs().grad_sync_launch == "pp-aligned" and sc.cost_model().p2p_mode == "async"
    one = scenario.from_dict({**DENSE, "pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8}})
    assert one.step_costs().grad_sync_launch == "ready" and one.cost_model().p2p_mode == "blocking"
    old = {**DENSE, "model": {**DENSE["model"], "runtime": "megatron-lm-2021"}}
    assert scenario.from_dict(old).cost_model().p2p_mode == "blocking"
    no_model = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}, "costs": {"forward": 1, "backward": 2}}
    assert scenario.from_dict(no_model).cost_model().p2p_mode == "async"


def test_gpt2_family_attention_is_flash_under_megatron_core():
    gpt = {"model_type": "gpt2", "n_embd": 1024, "n_layer": 4, "n_head": 16, "vocab_size": 50257, "n_positions": 2048}
    raw = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}, "model": {**gpt, "seq_length": 2048},
           "hardware": {"preset": "A100"}}  # fmt: skip
    assert not scenario.from_dict(raw).derived().setup.cfg.eager_attention
    old = {**raw, "model": {**raw["model"], "runtime": "megatron-lm-2021"}}
    assert scenario.from_dict(old).derived().setup.cfg.eager_attention


# -- the four kinds of check row run ------------------------------------------------------------------------
ROWS = {
    "dense-tp-pp-vp-dp": DENSE,
    "moe-ep": check_style({"schedule": "1f1b", "stages": 4, "microbatches": 8}, {"config": MIXTRAL},
                          {"tensor": 2, "expert": 8, "data": 8, "zero": 1}),
    "context-parallel": check_style({"schedule": "interleaved-1f1b", "stages": 4, "chunks_per_rank": 2,
                                     "microbatches": 4}, {**LLAMA3_8B, "seq_length": 32768},
                                    {"tensor": 2, "context": 4, "data": 4, "zero": 1}),
    "one-stage": check_style({"schedule": "1f1b", "stages": 1, "microbatches": 4}, LLAMA3_8B,
                             {"tensor": 1, "data": 64, "zero": 1}, preset="B200"),
}  # fmt: skip


@pytest.mark.parametrize("name", ROWS)
def test_check_style_rows_run(name):
    raw = ROWS[name]
    sc = scenario.from_dict(raw)
    res = simulation.run(sc)
    step = res.metrics.step
    p, m, par = raw["pipeline"], raw["model"], raw["parallel"]
    seq = m["seq_length"]
    assert math.isfinite(step.tokens_per_second) and step.tokens_per_second > 0
    assert step.total >= step.pipeline > 0 and step.grad_sync.time > 0
    # tokens per second is a step's tokens (M x micro-batch x sequence x data) over the step's time
    tokens = p["microbatches"] * m["micro_batch_size"] * seq * par["data"]
    assert step.tokens_per_second == pytest.approx(tokens / (step.total / 1e3), rel=1e-9)
    # the derived grad sync exists and the buckets are Megatron's: many on stage 0 (overlapped), 1 elsewhere
    buckets = sc.step_costs().grad_sync_buckets
    assert buckets[0] > 1 and set(buckets[1:]) <= {1}


def test_stage_zero_buckets_hide_the_one_stage_sync_under_the_last_backward():
    # PP 1: the whole model's reduction waits for the last backward; Megatron's buckets start it as the
    # backward frees each bucket, so less of it is exposed than as one bucket
    raw = ROWS["one-stage"]
    derived = simulation.run(scenario.from_dict(raw)).metrics.step
    one = simulation.run(scenario.from_dict({**raw, "step": {**OVERLAPPED, "grad_sync_buckets": 1}})).metrics.step
    assert derived.grad_sync.exposed < one.grad_sync.exposed


def test_a_derived_grad_sync_brings_a_derived_optimizer_unless_told_otherwise():
    """step.optimizer unset: "derived" beside a derived grad_sync with a GPU preset's kernel rates (the check's
    scenarios say only grad_sync); set, it is kept; with hardware.efficiency (no kernel rates) it stays 0."""
    unset = scenario.from_dict(DENSE).step_costs().optimizer
    explicit = scenario.from_dict({**DENSE, "step": {**OVERLAPPED, "optimizer": "derived"}}).step_costs().optimizer
    assert unset == explicit and min(unset) > 0
    zero = scenario.from_dict({**DENSE, "step": {**OVERLAPPED, "optimizer": 0}}).step_costs().optimizer
    assert set(zero) == {0.0}
    typed = {**DENSE, "hardware": {"preset": "H100", "efficiency": 0.4}}
    assert set(scenario.from_dict(typed).step_costs().optimizer) == {0.0}
    plain = {**DENSE, "step": {"grad_sync": 1.0}}  # a typed grad sync: the optimizer is not derived either
    assert set(scenario.from_dict(plain).step_costs().optimizer) == {0.0}
