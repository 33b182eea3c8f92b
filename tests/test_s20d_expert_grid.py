"""s20d: parallel.expert is checked as Megatron-core's MoE parallel folding checks it: the expert grid
(expert-tensor x expert x expert-data) fills a stage's tensor x context x data ranks (NVIDIA/Megatron-LM
@ 7c00175 (core_r0.11.0) megatron/core/parallel_state.py lines 687-694: decoder world size % (ETP x EP x PP)
raises), so with ETP 1 `expert` divides tensor x context x data, context included, and the error says so."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.plan.space import Choices, ModelShape, Request, enumerate_candidates
from dualpipe_sim.plan.shapes import shape

MOE = {"model_type": "mixtral", "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 1000,
       "num_attention_heads": 4, "intermediate_size": 512, "num_local_experts": 8, "num_experts_per_tok": 2,
       "seq_length": 64}  # fmt: skip


def sharding(**par):
    data = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4}, "costs": {"forward": 1.0, "backward": 2.0},
            "model": MOE, "parallel": par}  # fmt: skip
    return scenario.from_dict(data).derived().setup.sharding


def test_context_ranks_count_in_the_expert_grid():
    """data 4 x context 2 = 8 ranks: expert 8 fits them (Megatron-core: 8 % (1 x 8) = 0), expert-data 8 / 8 = 1;
    before s20d it was refused as 4 % 8."""
    sh = sharding(data=4, context=2, expert=8)
    assert (sh.expert, sh.expert_data) == (8, 1.0)
    assert sharding(tensor=2, data=2, context=2, expert=4).expert_data == 2.0  # 2 x 2 x 2 / 4


def test_an_expert_degree_past_tensor_x_context_x_data_is_refused_in_those_words():
    with pytest.raises(scenario.ScenarioError) as exc:
        sharding(data=2, context=2, expert=8)  # 1 x 2 x 2 = 4 ranks, 4 % 8
    assert str(exc.value).startswith("parallel.expert: must divide parallel.tensor x parallel.context x parallel.data "
                                     "(4): ")  # fmt: skip
    assert str(exc.value).endswith(", got 8")


def test_plan_keeps_an_expert_degree_that_context_ranks_make_room_for():
    """16 GPUs, context 2, pipeline 2: data 4, tensor x context x data = 8: expert 8 kept, expert 16 pruned."""
    model = ModelShape(heads=8, layers=8, experts=16)
    got = list(enumerate_candidates(model, Request(16, 32, 4096, gpus_per_node=8), [shape("1f1b")],
                                    Choices(tensor=(1,), context=(2,), pipeline=(2,), expert=(8, 16),
                                            micro_batch_size=(1,), recompute=("none",), zero=(1,))))  # fmt: skip
    assert [(r.expert, r.pruned) for r in got] == [
        (8, ""), (16, "parallel.expert: must divide parallel.tensor x parallel.context x parallel.data")]
