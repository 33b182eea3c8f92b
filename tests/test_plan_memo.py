"""The estimate's shared figures (model/derive.py's Memo, plan/estimate.py's FigureCache) change no figure.

A plan derives thousands of layouts through one derive.Memo.  Each derivation made through a Memo
that earlier, different layouts have filled must equal the same derivation made alone, to the bit
(dataclass equality compares every float exactly).  The pairs below differ only in one field a
table's key must cover, and the test first checks that the field does change the figure it keys,
so a key that left it out would hand back the other layout's value and fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
from dualpipe_sim.model import derive
from dualpipe_sim.plan.estimate import FigureCache
from dualpipe_sim.plan.request import base_scenario
from dualpipe_sim.plan.space import Candidate

MODELS = Path(__file__).resolve().parents[1] / "scenarios" / "models"


def scenario(model: str, hardware: str, seq: int, sets: list[str]):
    return sections_only(apply_overrides(base_scenario(MODELS / model, hardware, seq, []), sets))


def alone(sc) -> derive.Derived:
    return derive.derive(derive.setup(sc))


def through(memo: derive.Memo, sc) -> derive.Derived:
    return derive.derive(derive.setup(sc), memo)


def deepseek(stages=4, tensor=2, expert=8, data=16, zero=1, mbs=1, recompute="none", extra=()):
    return scenario("deepseek-v3.json", "H800", 4096, [
        f"pipeline.stages={stages}", f"pipeline.microbatches={2 * stages}", f"parallel.tensor={tensor}",
        f"parallel.expert={expert}", f"parallel.data={data}", f"parallel.zero={zero}",
        f"model.micro_batch_size={mbs}", f'memory.recompute="{recompute}"', *extra])  # fmt: skip


def llama(stages=4, tensor=4, data=4, zero=3, mbs=1, extra=()):
    return scenario("llama3-70b.json", "H100", 8192, [
        f"pipeline.stages={stages}", f"pipeline.microbatches={2 * stages}", f"parallel.tensor={tensor}",
        f"parallel.data={data}", f"parallel.zero={zero}", f"model.micro_batch_size={mbs}", *extra])  # fmt: skip


# (first, second): layouts differing in one field a Memo table's key must hold
PAIRS = {
    # FP8 amax reduction over tensor x data x context ranks: the chunk's kernels (chunk_passes,
    # chunk_components) read the data-parallel degree through the kernels' Layout
    "amax group (data)": (deepseek(data=16), deepseek(data=64)),
    # the layers' kernels read the Layout's tensor, expert and recompute policy
    "tensor": (deepseek(tensor=2), deepseek(tensor=4, data=8)),
    "expert": (deepseek(expert=8), deepseek(expert=16)),
    "recompute": (deepseek(recompute="none"), deepseek(recompute="full")),
    "micro-batch size": (deepseek(mbs=1), deepseek(mbs=2)),
    # the same layers cut into other stages: nothing per layer may read the stages
    "stages": (deepseek(stages=4), deepseek(stages=8, data=8)),
    # static memory reads the sharding: ZeRO stage and the data-parallel degree
    "zero": (deepseek(zero=1), deepseek(zero=2)),
    # FSDP units' collectives read the data-parallel degree (ZeRO 3, dense model)
    "fsdp data": (llama(data=4), llama(data=8)),
    # and the link of the data-parallel group (s21e): TP 2, DP 4, PP 4 on 8-GPU nodes, the data-parallel ranks 2 apart
    # (one node, NVLink) in Megatron's default order, 8 apart (across nodes) with the pipeline inside them
    "fsdp link (rank order)": (llama(tensor=2), llama(tensor=2, extra=['parallel.rank_order="tp-cp-ep-pp-dp"'])),
    # the same Sharding (data x context = 2), the data-parallel ranks tensor x pipeline = 8 apart (the NIC) or, as
    # context-parallel ranks, tensor = 2 apart (NVLink) with the pipeline inside the data ranks: the context is not in it
    "fsdp link (context)": (llama(tensor=2, data=2, extra=['parallel.rank_order="tp-cp-ep-pp-dp"']),
                            llama(tensor=2, data=1, extra=['parallel.rank_order="tp-cp-ep-pp-dp"',
                                                           "parallel.context=2"])),
    # nor the pipeline: in that order the data-parallel ranks tensor x pipeline apart, 4 (NVLink) or 8 (the NIC)
    "fsdp link (pipeline)": (llama(stages=2, tensor=2, data=2, extra=['parallel.rank_order="tp-cp-ep-pp-dp"']),
                             llama(stages=4, tensor=2, data=2, extra=['parallel.rank_order="tp-cp-ep-pp-dp"'])),
    # without kernel rates (FLOPs / efficiency) the whole Setup but its stages is the key
    "efficiency": (llama(extra=["hardware.efficiency=0.4"]), llama(extra=["hardware.efficiency=0.5"])),
    "efficiency, recompute": (llama(zero=1, extra=["hardware.efficiency=0.4", 'memory.recompute="none"']),
                              llama(zero=1, extra=["hardware.efficiency=0.4", 'memory.recompute="full"'])),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PAIRS))
def test_memo_key_holds_the_field_that_differs(name):
    first, second = PAIRS[name]
    a, b = alone(first), alone(second)
    assert a != b  # the field matters: a key without it would return a's figures for b
    memo = derive.Memo()
    assert through(memo, first) == a
    assert through(memo, second) == b  # b from a Memo a filled: its own figures, not a's
    assert through(memo, first) == a  # and a again, from a Memo holding both


def test_one_memo_through_many_layouts():
    """Every layout of a small grid derived in turn through one Memo, each equal to its derivation alone."""
    memo = derive.Memo()
    for stages, data in ((2, 32), (4, 16), (8, 8)):
        for tensor in (1, 2):
            for expert in (8, 16):
                for zero in (0, 1, 2):
                    sc = deepseek(stages=stages, tensor=tensor, expert=expert, data=data // tensor * 2, zero=zero)
                    assert through(memo, sc) == alone(sc), (stages, tensor, expert, zero)


def test_stage_memory_memo():
    """derive.stage_memory through a Memo: keyed on the model, the sharding and the stage."""
    memo = derive.Memo()
    for sc in (deepseek(zero=1), deepseek(zero=2), deepseek(zero=2, data=64), deepseek(stages=8, data=8)):
        st = derive.setup(sc)
        for stage in st.stages:
            assert derive.stage_memory(st, stage, memo) == derive.stage_memory(st, stage)


def test_figure_cache_scenario_is_the_candidates_own():
    """FigureCache.scenario keeps the last candidate's scenario: asking for another, then back, gives each its own."""
    base = base_scenario(MODELS / "llama3-70b.json", "H100", 8192, [])
    cache = FigureCache(base)
    a = Candidate(tensor=4, pipeline=2, context=1, expert=1, data=8, micro_batch_size=1, recompute="none", zero=1,
                  schedule="1f1b", stages=2, microbatches=16)  # fmt: skip
    b = Candidate(tensor=8, pipeline=4, context=1, expert=1, data=2, micro_batch_size=2, recompute="full", zero=2,
                  schedule="zb-h1", stages=4, microbatches=32)  # fmt: skip
    for cand in (a, b, a, a, b):
        sc = cache.scenario(cand)
        assert sc == sections_only(apply_overrides(base, cand.overrides()))
        assert (sc.parallel.tensor, sc.pipeline.stages, sc.pipeline.schedule) == (cand.tensor, cand.stages, cand.schedule)


def test_amax_group_reaches_the_stage_times():
    """Transformer Engine's FP8 amax reduction spans tensor x data x context ranks, so the data-parallel
    degree reaches the kernels' Layout and the stage times (not memory alone): the kernel tables'
    key must hold the Layout whole."""
    first, second = PAIRS["amax group (data)"]
    a, b = alone(first), alone(second)
    assert (a.setup.amax_group, b.setup.amax_group) == (2 * 16, 2 * 64)
    assert a.stages[0].forward != b.stages[0].forward
    memo = derive.Memo()
    assert [s.forward for s in through(memo, first).stages] == [s.forward for s in a.stages]
    assert [s.forward for s in through(memo, second).stages] == [s.forward for s in b.stages]


def test_figure_cache_times_key_holds_the_amax_groups_data_degree():
    """DeepSeek-V3 (FP8 through Transformer Engine: amaxes reduced over tensor x data x context ranks) in 16
    stages: 1F1B on 16 ranks at data 64, DualPipeV on 8 ranks at data 128.  The stage times differ (the amax
    group, derive.setup), so the FigureCache's derivation key must hold the data-parallel degree: the
    DualPipeV layout after the 1F1B one equals its figures on a cache of its own (s11d: it did not)."""
    base = base_scenario(MODELS / "deepseek-v3.json", "H800", 4096, ["model.optimizer_dtype=bf16",
                                                                      "memory.recompute=deepseek"])  # fmt: skip
    common = dict(tensor=2, context=1, expert=16, micro_batch_size=1, recompute="deepseek", zero=1, stages=16)
    first = Candidate(pipeline=16, data=64, microbatches=240, schedule="1f1b", **common)
    second = Candidate(pipeline=8, data=128, microbatches=120, schedule="dualpipev", **common)
    alone_first, alone_second = FigureCache(base).figures(first), FigureCache(base).figures(second)
    assert alone_first.costs != alone_second.costs  # the data-parallel degree reaches the times
    cache = FigureCache(base)
    assert cache.figures(first) == alone_first
    assert cache.figures(second) == alone_second
