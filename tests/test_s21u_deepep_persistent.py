"""DeepEP's persistent buffer per rank (s21u): the bytes ``deep_ep.Buffer`` allocates once per process, worked by hand
from deepseek-ai/DeepEP @ 9fe9021 ``csrc/config.hpp`` (``get_nvl_buffer_size_hint``, ``get_rdma_buffer_size_hint``),
``deep_ep/buffer.py`` (num_sms 20, the dispatch / combine configs by group size) and ``csrc/deep_ep.cpp`` (the NVLink
bytes + a FIFO of 32,768 ints + 2 x 8 pointers, a 32 MiB workspace), sized as Megatron-core's ``fused_a2a.get_buffer``
sizes it (@ 1e05700: hidden x 2 B a token, the larger of the two configs' hints).

A received token's slot in either ring: its row, 8 B of source meta, 128 int64 top-k indices, 128 fp32 weights,
128 fp32 scales = row + 8 + 1,024 + 512 + 512 = row + 2,056 B (the RDMA ring adds an int4: + 16 B).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tomllib

from dualpipe_sim import run
from dualpipe_sim.cli import memory_lines
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.scenario import apply_overrides
from dualpipe_sim.model import deepep_buffer, derive, layout, report
from dualpipe_sim.plan.estimate import FigureCache, memory_estimate, static_floor
from dualpipe_sim.plan.space import Candidate

ROOT = Path(__file__).resolve().parents[1]
XT = ROOT / "scenarios" / "validation" / "xt-qwen3-235b-tp2ep8pp8.toml"
FIXED = 4 * 32768 + 2 * 8 * 8 + 32 * 2**20  # the FIFO and peer pointers after the NVLink bytes, the workspace

# Qwen3-235B (hidden 4,096: 8,192 B a row) on one node, EP 8: 10 channels (20 SMs / 2) x 8 peers x (the counters,
# (2 x 1 node + 3) ints, + 256 receive tokens x (8,192 + 2,056) B) = 209,880,640, rounded up to 128 B; no RDMA
QWEN_EP8_NVL = 209_880_704
assert 10 * 8 * (5 * 4 + 256 * (8192 + 2056)) == 209_880_640 and QWEN_EP8_NVL % 128 == 0
# DeepSeek-V3 (hidden 7,168: 14,336 B) at EP 64 over 8 nodes: NVLink 10 x 8 x ((2 x 8 + 3) x 4 + 288 x 16,392), rounded
# up; RDMA 10 channels x 8 nodes x 2 (send, receive) x ((8 x 2 + 2) x 4 + 140 x (16,392 + 16)), its 128 receive
# tokens aligned up to the send chunk of 28 (dispatch) or 20 (combine): 140 both
DSV3_EP64_NVL, DSV3_EP64_RDMA = 377_677_824, 367_550_720
assert 10 * 8 * (19 * 4 + 288 * 16392) == 377_677_760 and DSV3_EP64_RDMA == 10 * 8 * 2 * (18 * 4 + 140 * 16408)


def test_qwen3_235b_ep8_inside_a_node():
    hint = deepep_buffer.nvl_bytes(8192, 8, deepep_buffer.DISPATCH[8])
    assert hint == QWEN_EP8_NVL
    assert deepep_buffer.rdma_bytes(8192, 8, deepep_buffer.DISPATCH[8]) == 0  # "legacy mode": within 8 ranks
    assert deepep_buffer.persistent_bytes(4096, 8) == QWEN_EP8_NVL + FIXED == 243_566_336


def test_deepseek_v3_ep64_across_nodes():
    assert deepep_buffer.persistent_bytes(7168, 64) == DSV3_EP64_NVL + DSV3_EP64_RDMA + FIXED == 778_914_176


def test_group_sizes_deepep_does_not_list():
    assert deepep_buffer.persistent_bytes(4096, 1) == 0.0  # no dispatch over one rank
    # 12 ranks: DeepEP asserts; the estimate reads 16's configs (and 16 ranks)
    assert deepep_buffer.persistent_bytes(4096, 12) == deepep_buffer.persistent_bytes(4096, 16)
    assert deepep_buffer.persistent_bytes(4096, 512) == deepep_buffer.persistent_bytes(4096, 160)
    assert deepep_buffer.persistent_bytes(4096, 16) > deepep_buffer.persistent_bytes(4096, 8)


def _run(*sets):
    s = scenario.load(XT, ["pipeline.microbatches=8", *sets])
    return run(s).metrics.per_rank


def test_per_rank_memory_holds_it_once_under_deepep_only():
    deepep = _run('model.moe_dispatcher="deepep"')
    for r in deepep:
        m = r.memory
        assert m.deepep_buffers == QWEN_EP8_NVL + FIXED  # TP 2, EP 8, ETP 1: the tensor x expert group is 8 ranks
        assert m.total == pytest.approx(m.parameters + m.fp8_weights + m.gradients + m.optimizer + m.sharding_buffers
                                        + m.deepep_buffers + m.dynamic_peak + m.runtime, rel=1e-12)  # fmt: skip
    plain = _run()
    assert all(r.memory.deepep_buffers == 0.0 for r in plain)  # the alltoall dispatcher has no such buffer


def test_run_prints_its_column_under_deepep_only():
    flex = "\n".join(memory_lines(run(scenario.load(XT, ["pipeline.microbatches=8", 'model.moe_dispatcher="deepep"'])).metrics))
    assert "deepep" in flex and "+ deepep buf +" in flex and "0.24" in flex  # 243.6 MB
    assert "deepep" not in "\n".join(memory_lines(run(scenario.load(XT, ["pipeline.microbatches=8"])).metrics))


def test_expert_tensor_widens_the_group():
    st = derive.setup(scenario.load(XT, ['model.moe_dispatcher="deepep"', "parallel.expert_tensor=2",
                                          "parallel.expert=4"]))  # fmt: skip
    assert derive.stage_deepep_bytes(st, st.stages[1]) == QWEN_EP8_NVL + FIXED  # ETP 2 x EP 4: 8 ranks


def test_a_stage_without_moe_layers_holds_none():
    st = derive.setup(scenario.load(XT, ['model.moe_dispatcher="deepep"']))
    assert derive.stage_deepep_bytes(st, st.stages[1]) > 0
    dense = layout.Stage(layers=(), embedding=True)
    assert derive.stage_deepep_bytes(st, dense) == 0.0


def test_plan_floor_adds_it():
    base = tomllib.loads(XT.read_text())
    cand = Candidate(tensor=2, context=1, pipeline=8, data=16, expert=8, micro_batch_size=1, microbatches=8,
                     schedule="1f1b", stages=8, recompute="selective", zero=1)  # fmt: skip
    plain, flex = FigureCache(base), FigureCache(apply_overrides(base, ['model.moe_dispatcher="deepep"']))
    assert static_floor(flex, cand) - static_floor(plain, cand) == QWEN_EP8_NVL + FIXED
    # the estimate's floor too (a stage's activations do not depend on the dispatcher)
    assert memory_estimate(flex, cand).memory_floor - memory_estimate(plain, cand).memory_floor == pytest.approx(
        QWEN_EP8_NVL + FIXED, rel=1e-9)


def test_model_json_gives_it_per_stage():
    flex = report.summary(scenario.load(XT, ['model.moe_dispatcher="deepep"']).derived())["stages"]
    assert [s["deepep_buffer_bytes_per_rank"] for s in flex] == [QWEN_EP8_NVL + FIXED] * 8
    assert all("deepep_buffer_bytes_per_rank" not in s for s in report.summary(scenario.load(XT).derived())["stages"])
