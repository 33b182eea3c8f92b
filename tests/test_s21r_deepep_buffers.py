"""DeepEP's all-to-all buffers hold rows as the kernel model moves them (s21r): a token once per rank it reaches,
not once per (token, expert).

DeepEP's intranode dispatch returns ``recv_x`` of ``num_recv_tokens`` rows, one per token with an expert on the rank
(deepseek-ai/DeepEP @ 9fe9021 csrc/deep_ep.cpp line 438); its own NVLink buffer is a fixed ring of chunks
(config.hpp ``get_nvl_buffer_size_hint``: channels x ranks x 256 tokens x a row's bytes, whatever the batch), not per
row.  A phase holds the rank's n tokens and the R rows it receives (buffers.deepep_rows).  Worked by hand on the
Qwen3-235B row (4,096 tokens / TP 2 = 2,048 a rank, top-8 of 128 experts, hidden 4,096, bf16).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import buffers, derive
from dualpipe_sim.schedules.components import Component

XT = Path(__file__).resolve().parents[1] / "scenarios" / "validation" / "xt-qwen3-235b-tp2ep8pp8.toml"
PHASES = (Component.dispatch_forward, Component.combine_forward, Component.dispatch_backward, Component.combine_backward)


def setup(*sets):
    return derive.setup(scenario.load(XT, ['model.moe_dispatcher="deepep"', *sets]))


def test_deepep_phase_by_hand_at_ep8():
    # a token's 8 of 128 experts miss one EP rank's 16 with probability C(112, 8) / C(128, 8): it reaches
    # 8 (1 - that) ranks; so R = 2,048 x 5.34 rows received, and the 2,048 own rows on the other side
    reached = 8 * (1 - math.prod(range(105, 113)) / math.prod(range(121, 129)))
    assert reached == pytest.approx(5.34, abs=5e-3)  # docs/model.md: 5.34 ranks a token at Qwen3-235B, EP 8
    sizes = buffers.a2a_bytes(setup())
    assert [sizes[int(c)] for c in PHASES] == [pytest.approx((2048 + 2048 * reached) * 4096 * 2, rel=1e-12)] * 4
    # the alltoall dispatcher: a send and a receive of n x k rows each
    alltoall = buffers.a2a_bytes(derive.setup(scenario.load(XT)))
    assert alltoall[int(Component.dispatch_forward)] == 2 * 2048 * 8 * 4096 * 2


def test_deepep_rows_are_the_kernel_models():
    """The buffer's received rows are those the kernel model's all-to-all moves: its bytes are R x (group - 1) / group
    rows (the share that leaves the rank) of h x 2 B."""
    st = setup()
    [row] = [k for k in derive.layer_kernels(st, 0) if k.name == "all-to-all" and k.component == "dispatch_forward"]
    received = row.bytes / (4096 * 2) * 8 / 7
    held = buffers.a2a_bytes(st)[int(Component.dispatch_forward)] / (4096 * 2)
    assert held == pytest.approx(2048 + received, rel=1e-12)
