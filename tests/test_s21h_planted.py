"""Gaps the s21h planted bugs found, each closed with a hand-worked case or a closed form (tests/mutations)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from dualpipe_sim import limits
from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.costs import COMPONENTS, Chunk, CostModel
from dualpipe_sim.plan import files
from dualpipe_sim.schedules.ir import FB, Op


def test_a_pair_runs_its_backward_stages_own_chunk():
    # dense chunks (no all-to-all): every part on the one compute channel, so a pair cannot overlap anything and
    # lasts its forward's F parts plus its backward's B parts, each from its own stage's chunk (DualPipe's rank 0
    # pairs stage 0's forward with the last stage's backward, which a head costs apart)
    a = Chunk(layers=2, times=(1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 1.0, 0.0, 2.0, 1.0))
    b = Chunk(layers=2, times=(5.0, 0.0, 7.0, 0.0, 0.0, 11.0, 13.0, 0.0, 17.0, 19.0))
    costs = CostModel.from_chunk(2, (a, b))
    forward, backward = 1 + 2, 11 + 13 + 17 + 19
    assert costs.timeline(FB(Op("F", 0, 0), Op("B", 0, 1))).length == pytest.approx(2 * forward + 2 * backward)
    assert costs.timeline(FB(Op("F", 0, 1), Op("B", 0, 0))).length == pytest.approx(2 * (5 + 7) + 2 * (3 + 1 + 2 + 1))


def test_a_text_file_of_exactly_the_cap_is_read(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b"#" * 10)
    assert limits.read_text(path, max_bytes=10) == "#" * 10
    path.write_bytes(b"#" * 11)
    with pytest.raises(limits.TooBig, match="more than"):
        limits.read_text(path, max_bytes=10)


def test_a_pairs_backward_host_row_is_its_own_chunks():
    # model/host_pair.py's shares (Chunk.pair_host: a lone forward's host row in mlp_forward, a lone backward's in
    # mlp_backward_input, the pair's share): in a pair the forward's mlp_forward trades its own row for the pair's
    # share, the backward's mlp_backward_input drops its own row, each from its own stage's chunk
    a = Chunk(layers=2, times=(1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 1.0, 0.0, 2.0, 1.0), pair_host=(0.5, 0.25, 1.5))
    b = Chunk(layers=2, times=(5.0, 0.0, 7.0, 0.0, 0.0, 11.0, 13.0, 0.0, 17.0, 19.0), pair_host=(0.75, 2.0, 3.0))
    costs = CostModel.from_chunk(2, (a, b))
    forward = 1 + (2 - 0.5 + 1.5)
    backward = (11 - 2.0) + 13 + 17 + 19
    assert costs.timeline(FB(Op("F", 0, 0), Op("B", 0, 1))).length == pytest.approx(2 * forward + 2 * backward)


def test_nvlink_hand_offs_are_the_first_replicas():
    # CostModel.nvlink_pairs: per data-parallel replica its NVLink (sender, receiver) pairs; a single replay (both
    # engines) runs the first replica's, simulation.simulate each in turn
    replicas = (frozenset({(0, 1)}), frozenset({(1, 2)}))
    costs = replace(CostModel.uniform(3, p2p=1.0), nvlink_pairs=replicas, p2p_nvlink=0.25)
    assert [costs.link_p2p(0, 1), costs.link_p2p(1, 2)] == [0.25, 1.0]


@pytest.mark.parametrize("zero", ["mlp_backward_weight", "attn_backward_weight", "dispatch_forward"])
def test_a_chunk_may_have_no_weight_gradient_or_all_to_all_part(zero):
    # inputs/scenario.py's Chunk: all-to-all and weight-gradient parts may be 0 (a dense layer, no wgrad split); the
    # forward and input-gradient compute parts must be > 0
    times = {name: 1.0 for name in COMPONENTS} | {zero: 0.0}
    data = {"pipeline": {"schedule": "zb-h1", "stages": 2, "microbatches": 2}, "chunk": {"layers": 1, **times}}
    chunk = scenario.from_dict(data).cost_model().chunk
    assert chunk.total("F") + chunk.total("B") == pytest.approx(sum(times.values()))
    with pytest.raises(ScenarioError, match="attn_forward"):
        scenario.from_dict({**data, "chunk": {**data["chunk"], "attn_forward": 0.0}})


def test_plan_why_gives_each_other_schedule_against_the_best():
    # plan.md's "why": the best of another schedule, its step over the best's less 1: 125 ms against 100 is +25%
    def row(schedule, step):
        cand = SimpleNamespace(schedule=schedule, label=lambda: f"{schedule} layout")
        sim = {"step.total": step, "bubble_ratio": 0.1, "comm.exposed": 1.0, "memory.total": 1e9}
        return SimpleNamespace(candidate=cand, simulated=sim, ok=True, fits=True)

    best, other = row("dualpipev", 100.0), row("1f1b", 125.0)
    lines = files.why(SimpleNamespace(top=[best], rows=[best, other]))
    assert len(lines) == 2 and lines[1].startswith("- best 1f1b: 1f1b layout: step ")
    assert "(+25.0%)" in lines[1]
