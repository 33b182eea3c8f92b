"""s19r: two of plan's repeated costs kept once, without changing a bit.

* an override's TOML value is read once per text (inputs/scenario.py ``_toml_value``): a scalar is shared, an
  array or a table comes back a fresh copy each time, so a scenario that changes its own cannot change another's;
* a build's NVLink links are read once per set of rank pairs (plan/step_estimate.py ``_nvlink_links``): each
  (NIC, NVLink, pairs) gets the links replay.link_hops gives, worked by hand on 1F1B's four ranks.
"""

from __future__ import annotations

import pytest

from dualpipe_sim.engine import replay
from dualpipe_sim.inputs.scenario import ScenarioError, apply_overrides, parse_override
from dualpipe_sim.plan.step_estimate import _link_hops, built


def test_override_values_read_as_toml():
    assert parse_override("pipeline.stages=8") == (["pipeline", "stages"], 8)
    assert parse_override("costs.jitter = 0.25") == (["costs", "jitter"], 0.25)
    assert parse_override("step.overlap_grad_sync=true") == (["step", "overlap_grad_sync"], True)
    assert parse_override("pipeline.schedule=1f1b") == (["pipeline", "schedule"], "1f1b")  # bare word: the text
    assert parse_override('pipeline.schedule="dualpipe"') == (["pipeline", "schedule"], "dualpipe")


def test_an_array_or_table_value_is_each_callers_own():
    # the same text twice: equal values, never the same list or dict (a change to one stays in its scenario)
    (_, a), (_, b) = parse_override("ranks.slowdown=[1.0, 2.0]"), parse_override("ranks.slowdown=[1.0, 2.0]")
    assert a == b == [1.0, 2.0] and a is not b
    a.append(3.0)
    assert parse_override("ranks.slowdown=[1.0, 2.0]")[1] == [1.0, 2.0]
    (_, t), (_, u) = parse_override("x.y={a = [1]}"), parse_override("x.y={a = [1]}")
    assert t == u == {"a": [1]} and t is not u and t["a"] is not u["a"]
    one, two = apply_overrides({}, ["x.y=[1]"]), apply_overrides({}, ["x.y=[1]"])
    one["x"]["y"].append(2)
    assert two == {"x": {"y": [1]}}


def test_a_value_nested_too_deeply_is_still_refused():
    with pytest.raises(ScenarioError, match="value nested too deeply"):
        parse_override("a.b=" + "[" * 5000 + "]" * 5000)


def test_nvlink_links_by_hand_and_per_pairs():
    # 1F1B on 4 ranks: links 0: 0->1, 1: 1->0, 2: 1->2, 3: 2->1, 4: 2->3, 5: 3->2 (one per direction and neighbour)
    b = built("1f1b", 4, 8, None)
    front, back = frozenset({(0, 1), (1, 0)}), frozenset({(2, 3)})
    assert _link_hops(b, (5.0, 1.0, front)) == [1.0, 1.0, 5.0, 5.0, 5.0, 5.0]
    assert _link_hops(b, (5.0, 1.0, back)) == [5.0, 5.0, 5.0, 5.0, 1.0, 5.0]
    # again, after the other pairs, and with other figures: each its own links and figures
    assert _link_hops(b, (7.0, 0.5, front)) == [0.5, 0.5, 7.0, 7.0, 7.0, 7.0]
    assert _link_hops(b, (7.0, 0.5, frozenset())) == [7.0] * 6
    assert _link_hops(b, 3) == 3.0
    # on another build, the same pairs: its own links (interleaved 1F1B, 2 ranks, 2 chunks each: 0->1 and 1->0 both)
    other = built("interleaved-1f1b", 4, 4, 2)
    for pairs in (front, back, frozenset({(1, 0)})):
        assert _link_hops(other, (5.0, 1.0, pairs)) == replay.link_hops(other.transfers, 5.0, 1.0, pairs)
