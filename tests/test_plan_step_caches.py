"""The caches behind the plan's step figures (model/derived_step.py and the modules it draws on) change no figure.

A plan asks for the [step] figures of thousands of layouts.  Two caches serve them across layouts:

* ``_slowed_compute``: each stage's compute on the SMs a data-parallel collective leaves, kept by what
  its kernels read of the Setup (derive.times_key: the model, the rates, the kernels' Layout) and
  the stage (its layers, embedding, head and MTP modules), and the SMs taken;
* ``derive.stage_ranks``: the ranks holding each stage, kept by the schedule family, the stage count, the
  micro-batch count built and the schedule options.

As tests/test_plan_memo.py does for derive.Memo: each pair differs in one field the key must hold; the
field is first shown to change the figure (so a key without it would hand back the other's value), then
the second is asked for from a cache the first filled and must equal its own figure worked out
without any cache, to the bit.  Fields the key leaves out (the data-parallel degree, ZeRO) must hit
the cache and still give the figure worked out alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
from dualpipe_sim.model import derive
from dualpipe_sim.model import comm_slowdown
from dualpipe_sim.model.layout import Stage
from dualpipe_sim.plan.request import base_scenario
from dualpipe_sim.schedules import registry

MODELS = Path(__file__).resolve().parents[1] / "scenarios" / "models"


def scenario(model: str, hardware: str, seq: int, sets: list[str]):
    return sections_only(apply_overrides(base_scenario(MODELS / model, hardware, seq, []), sets))


def deepseek(stages=4, tensor=2, expert=8, data=16, zero=1, mbs=1, recompute="none", hardware="H800", extra=()):
    return scenario("deepseek-v3.json", hardware, 4096, [
        f"pipeline.stages={stages}", f"pipeline.microbatches={2 * stages}", f"parallel.tensor={tensor}",
        f"parallel.expert={expert}", f"parallel.data={data}", f"parallel.zero={zero}",
        f"model.micro_batch_size={mbs}", f'memory.recompute="{recompute}"', *extra])  # fmt: skip


def llama(stages=4, tensor=4, data=4, zero=1, schedule="1f1b", extra=()):
    return scenario("llama3-70b.json", "H100", 8192, [
        f"pipeline.stages={stages}", f"pipeline.microbatches={4 * stages}", f"parallel.tensor={tensor}",
        f"parallel.data={data}", f"parallel.zero={zero}", f'pipeline.schedule="{schedule}"', *extra])  # fmt: skip


def cold_compute(st, sms: int) -> tuple[float, ...]:
    """Each stage's compute on fewer SMs, worked out without any cache (a fresh per-layer table per stage)."""
    slow = replace(st, rates=comm_slowdown.fewer_sms(st.rates, sms))
    return tuple(comm_slowdown._stage_compute(slow, stage, {}) for stage in st.stages)


# (first Setup, second Setup, SMs of each): differing in one field _slowed_compute's key must hold
def _setups(first, second, sms=(16, 16)):
    return derive.setup(first), derive.setup(second), sms


COMPUTE_PAIRS = {
    "tensor (the Layout)": lambda: _setups(deepseek(tensor=2), deepseek(tensor=4, data=8)),
    "expert (the Layout)": lambda: _setups(deepseek(expert=8), deepseek(expert=16)),
    "recompute (the Layout)": lambda: _setups(deepseek(recompute="none"), deepseek(recompute="full")),
    "micro-batch size (the Layout)": lambda: _setups(deepseek(mbs=1), deepseek(mbs=2)),
    # the FP8 amax reduction's group is the Setup's (data x tensor x context), read through the Layout
    "amax group (the Layout)": lambda: _setups(deepseek(data=16), deepseek(data=64)),
    "rates (H800 / H100)": lambda: _setups(deepseek(hardware="H800"), deepseek(hardware="H100")),
    "model (FP8 or not)": lambda: _setups(deepseek(), deepseek(extra=["model.fp8=false"])),
    # the same layers staged otherwise: the per-stage figures are keyed by the stage
    "stages": lambda: _setups(deepseek(stages=4), deepseek(stages=8, data=8)),
    "SMs taken": lambda: (derive.setup(deepseek()), derive.setup(deepseek()), (16, 32)),
    # the same layers with or without the embedding, the head and an MTP module
    "the stage's embedding": lambda: _restaged(Stage((3, 4)), Stage((3, 4), embedding=True)),
    "the stage's head": lambda: _restaged(Stage((3, 4)), Stage((3, 4), head=True)),
    "the stage's MTP modules": lambda: _restaged(Stage((3, 4)), Stage((3, 4), mtp=1)),
}


def _restaged(first: Stage, second: Stage):
    st = derive.setup(deepseek())
    return replace(st, stages=(first,)), replace(st, stages=(second,)), (16, 16)


@pytest.mark.parametrize("name", list(COMPUTE_PAIRS))
def test_slowed_compute_key_holds_the_field_that_differs(name):
    a, b, (sms_a, sms_b) = COMPUTE_PAIRS[name]()
    cold_a, cold_b = cold_compute(a, sms_a), cold_compute(b, sms_b)
    assert cold_a != cold_b  # the field matters: a key without it would return a's figures for b
    comm_slowdown._slowed_kernels.cache_clear()
    assert comm_slowdown._slowed_compute(a, sms_a) == cold_a
    assert comm_slowdown._slowed_compute(b, sms_b) == cold_b  # b from a cache a filled: its own figures
    assert comm_slowdown._slowed_compute(a, sms_a) == cold_a  # and a again, from a cache holding both


@pytest.mark.parametrize("field", ["data", "zero"])
def test_slowed_compute_shared_where_the_kernels_read_nothing_different(field):
    """The plan's candidates take the shared derivation's Setup with their own sharding (data-parallel degree,
    ZeRO): the kernels read neither, so one entry serves them, each still its figure worked out alone."""
    st = derive.setup(deepseek(data=16, zero=1))
    other = replace(st, sharding=replace(st.sharding, **{field: 64 if field == "data" else 2}))
    assert other.sharding != st.sharding
    comm_slowdown._slowed_kernels.cache_clear()
    assert comm_slowdown._slowed_compute(st, 16) == cold_compute(st, 16)
    assert comm_slowdown._slowed_compute(other, 16) == cold_compute(other, 16) == cold_compute(st, 16)
    info = comm_slowdown._slowed_kernels.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_slowed_compute_reaches_the_step_figures():
    """dp_comm_slowdown (step.dp_comm_sms) through a cache another layout filled equals it with none."""
    first, second = deepseek(tensor=2), deepseek(tensor=4, data=8)
    comm_slowdown._slowed_kernels.cache_clear()
    wanted = comm_slowdown.dp_comm_slowdown(second, 16)
    comm_slowdown._slowed_kernels.cache_clear()
    comm_slowdown.dp_comm_slowdown(first, 16)
    assert comm_slowdown.dp_comm_slowdown(second, 16) == wanted
    assert all(x > 1.0 for x in wanted)  # fewer SMs: every stage slower


def cold_ranks(sc) -> list[set[int]]:
    """The ranks holding each stage, read off the scenario's own schedule at its own micro-batch count."""
    p = sc.pipeline
    held = [set() for _ in range(p.stages)]
    for rank, stages in enumerate(registry.build(p.schedule, p.stages, p.microbatches, **sc.options()).stages_on_rank()):
        for s in stages:
            held[s].add(rank)
    return held


# pairs differing in one field stage_ranks' key must hold
RANK_PAIRS = {
    "schedule family": (llama(schedule="1f1b"), llama(schedule="dualpipev")),
    "stages": (llama(stages=4), llama(stages=8, data=2)),
    "chunks per rank (an option)": (llama(schedule="interleaved-1f1b", extra=["pipeline.chunks_per_rank=2"]),
                                    llama(schedule="interleaved-1f1b", extra=["pipeline.chunks_per_rank=4"])),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RANK_PAIRS))
def test_stage_ranks_key_holds_the_field_that_differs(name):
    first, second = RANK_PAIRS[name]
    a, b = cold_ranks(first), cold_ranks(second)
    assert a != b
    derive._ranks_holding.cache_clear()
    assert derive.stage_ranks(first) == a
    assert derive.stage_ranks(second) == b
    assert derive.stage_ranks(first) == a


def test_stage_ranks_hands_out_its_own_copy():
    """A caller changing the sets it was given does not change what the next caller gets."""
    sc = llama(schedule="dualpipev")
    derive._ranks_holding.cache_clear()
    held = derive.stage_ranks(sc)
    assert held == [{0}, {1}, {1}, {0}]  # DualPipeV's V: 4 stages on 2 ranks, stages s and 3 - s on one
    held[0].add(99)
    assert derive.stage_ranks(sc) == [{0}, {1}, {1}, {0}]
    assert derive._ranks_holding.cache_info().hits >= 1
