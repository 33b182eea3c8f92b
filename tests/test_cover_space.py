"""plan/space.py's pruning rules that the s16g coverage run found no test reaching: each rule, alone,
on a search space pinned down to the one branch it cuts, so the rows can be counted by hand."""

from __future__ import annotations

from dualpipe_sim.plan.shapes import shape
from dualpipe_sim.plan.space import Choices, ModelShape, Request, _experts, enumerate_candidates

DENSE = ModelShape(heads=8, layers=8, experts=0)
MOE6 = ModelShape(heads=8, layers=8, experts=6)
ONE = dict(tensor=(1,), context=(1,), micro_batch_size=(1,), recompute=("none",), zero=(1,))


def rows(model=DENSE, gpus=16, global_batch=32, seq=4096, **pins):
    return list(enumerate_candidates(model, Request(gpus, global_batch, seq, gpus_per_node=8), [shape("1f1b")],
                                     Choices(**{**ONE, **pins})))  # fmt: skip


def test_tensor_past_a_node_is_pruned_at_the_first_column():
    (row,) = rows(tensor=(16,))
    assert row.pruned == "parallel.tensor: must be at most the 8 GPUs of an NVLink domain" and not row.complete()
    assert (row.tensor, row.context, row.pipeline) == (16, None, None)  # the row stands for its whole branch


def test_context_must_divide_the_gpus_and_split_the_sequence_in_two_x_context_chunks():
    (row,) = rows(context=(3,))  # 16 GPUs are not 1 x 3 x something
    assert row.pruned == "GPUs: must be a multiple of parallel.tensor x parallel.context"
    (row,) = rows(context=(2,), seq=4098, min_context_tokens=1)  # 4098 = 4 x 1024 + 2
    assert row.pruned == "parallel.context: must divide the sequence in 2 x parallel.context chunks"
    (row,) = rows(context=(2,), seq=4096, pipeline=(2,))  # 4096 / 2 = 2048 tokens a rank: not fewer than 2048
    assert row.pruned == "" and row.context == 2 and row.data == 16 // (2 * 2)


def test_a_pipeline_that_does_not_divide_the_gpus_left_has_no_data_degree():
    (row,) = rows(pipeline=(3,))  # 16 / (1 x 1) = 16 ranks left, 16 % 3 = 1
    assert row.pruned == "GPUs: must be a multiple of parallel.tensor x parallel.context x the pipeline ranks"
    assert (row.pipeline, row.data, row.expert) == (3, None, None)


def test_expert_degrees_on_a_dense_and_on_a_six_expert_model():
    (row,) = rows(pipeline=(2,), expert=(2,))
    assert row.pruned == "parallel.expert: must be 1: the model has no experts"
    assert _experts(MOE6, Choices()) == (1, 2, 4)  # the powers of two up to 6
    assert _experts(DENSE, Choices()) == (1,)
    assert _experts(MOE6, Choices(expert=(3,))) == (3,)  # a pin is taken as given
    got = rows(MOE6, pipeline=(2,))
    # 16 GPUs / PP2 = DP8; 32 sequences / (DP8 x mbs 1) = 4 micro-batches on 2 stages of 1F1B.
    assert [(r.expert, r.pruned) for r in got] == [(1, ""), (2, ""), (4, "parallel.expert: must divide the model's 6 experts")]
    assert all(r.complete() for r in got[:2]) and not got[2].complete()
    assert [(r.data, r.microbatches, r.stages) for r in got[:2]] == [(8, 4, 2), (8, 4, 2)]
    assert "parallel.expert=2" in got[1].overrides()
