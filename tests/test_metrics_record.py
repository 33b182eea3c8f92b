"""The typed Metrics record: its JSON form, its flat scalars, optional blocks.

The numbers are checked against a hand-worked 1F1B case (p = 2 ranks,
m = 3 micro-batches, F = 1, B = 2, no P2P): makespan (m + p - 1)(F + B) = 12,
each rank busy m(F + B) = 9 and idle 3; rank 0 holds min(p, m) = 2
activations at its peak, rank 1 one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.readers.metrics import Metrics, _plain, optional_block, scalar_names
from dualpipe_sim.outputs.files import metrics_json

TOP_KEYS = ["schedule", "stages", "ranks", "microbatches", "makespan", "bubble_ratio", "per_rank", "comm", "analytic",
            "span_bubble_rate", "device_memory"]  # device_memory: null without [hardware] (issue 14)
RANK_KEYS = ["rank", "busy", "idle", "between_ops", "peak_activation", "peak_activation_bytes", "parameter_bytes",
             "parameter_copies", "stages", "a2a_time", "a2a_exposed", "span", "span_idle"]
COMM_KEYS = ["p2p_time", "a2a_time", "exposed", "hidden", "overlap_ratio", "p2p_exposed", "a2a_exposed"]


@pytest.fixture(scope="module")
def small() -> Metrics:
    data = {
        "pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 3},
        "costs": {"forward": 1.0, "backward": 2.0},
        "memory": {"activation": 3.0, "parameters": [5.0, 7.0]},
    }
    return simulation.run(scenario.from_dict(data)).metrics


def test_json_form_keys_in_order(small):
    doc = small.to_dict()
    assert list(doc) == TOP_KEYS
    assert [list(r) for r in doc["per_rank"]] == [RANK_KEYS, RANK_KEYS]
    assert list(doc["comm"]) == COMM_KEYS
    assert list(doc["analytic"]) == ["bubble", "peak_activation", "formula", "range", "reason"]
    assert json.loads(metrics_json(small)) == doc  # plain JSON types all the way down
    assert metrics_json(small) == metrics_json(doc)


def test_hand_worked_1f1b(small):
    assert small.makespan == pytest.approx(12.0)
    assert [r.busy for r in small.per_rank] == pytest.approx([9.0, 9.0])
    assert [r.idle for r in small.per_rank] == pytest.approx([3.0, 3.0])
    assert [r.peak_activation for r in small.per_rank] == [2, 1]
    assert small.comm.overlap_ratio is None  # no communication at all
    assert small.analytic.bubble == pytest.approx(3.0)  # (p - 1)(F + B)
    # By hand: rank 0 runs F0 [0,1] F1 [1,2], waits for B0 [4,6], F2 [6,7], B1 [7,9],
    # B2 [10,12]: span 12, 3 idle inside it; rank 1 runs F0 [1,2] B0 [2,4] F1 [4,5]
    # B1 [5,7] F2 [7,8] B2 [8,10] without a gap: span 9.
    assert [r.span for r in small.per_rank] == pytest.approx([12.0, 9.0])
    assert [r.span_idle for r in small.per_rank] == pytest.approx([3.0, 0.0])
    assert small.span_bubble_rate == pytest.approx((12.0 - 9.0) / 12.0)  # the Zero Bubble paper's rate


def test_scalars_are_max_over_ranks(small):
    s = small.scalars()
    assert list(s) == list(scalar_names())
    assert s["peak_activation"] == 2 and s["peak_activation_bytes"] == 6.0
    assert s["parameter_bytes"] == 7.0  # rank 1 holds the larger stage
    # The fullest rank by activations + parameters: rank 0 has 6 + 5 = 11, rank 1 3 + 7 = 10.
    assert s["peak_memory_bytes"] == 11.0
    assert s["parameter_copies"] == 1
    assert s["makespan"] == small.makespan and s["ranks"] == 2
    assert s["comm.overlap_ratio"] is None and s["analytic.bubble"] == small.analytic.bubble
    # No [model]: total memory unknown, so whether it fits is unknown too.
    assert s["memory.total"] is None and s["device_memory"] is None and s["fits"] is None


def test_optional_block_left_out_while_none():
    @dataclass(frozen=True)
    class Block:
        x: float

    @dataclass(frozen=True)
    class Doc:
        a: float | None
        block: Block | None = optional_block()

    assert _plain(Doc(None)) == {"a": None}  # a plain None field stays (JSON null)
    assert _plain(Doc(1.0, Block(2.0))) == {"a": 1.0, "block": {"x": 2.0}}
