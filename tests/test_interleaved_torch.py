"""interleaved-1f1b against torch.distributed.pipelining's ScheduleInterleaved1F1B.

The expected per-rank orders below were worked out by hand from torch's
algorithm (``ScheduleInterleaved1F1B._calculate_single_rank_operations`` and
``_get_1f1b_rank_ops``), not copied from our generator:

* rounds = max(1, M // p), round size M / rounds;
* forward step k runs chunk (k // round size) % v, backward step k chunk
  v - 1 - ((k - warm-up) // round size) % v, each chunk taking its
  micro-batches in order (stage = chunk * p + rank);
* warm-up on rank r: min((v - 1) * round size + 2 (p - 1 - r), M v) forwards,
  then forward/backward pairs, then the remaining backwards.

Notation: ``"0F0-4"`` is 0F0 0F1 0F2 0F3 0F4; ``pairs(a, b)`` interleaves two
hand-written lists (the steady state's forward, backward, forward, ...).
"""

from __future__ import annotations

import re

import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.simulation import simulate
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.registry import analytic, build


def ops(text: str) -> list[str]:
    out = []
    for token in text.split():
        stage, kind, lo, hi = re.fullmatch(r"(\d+)([FB])(\d+)(?:-(\d+))?", token).groups()
        out += [f"{stage}{kind}{mb}" for mb in range(int(lo), int(hi or lo) + 1)]
    return out


def pairs(forwards: str, backwards: str) -> list[str]:
    f, b = ops(forwards), ops(backwards)
    assert len(f) == len(b)
    return [x for pair in zip(f, b) for x in pair]


EXPECTED = {
    # p = 4, v = 2, M = 10: 2 rounds of 5; warm-up 5 + 2 (3 - r) = 11, 9, 7, 5.
    (4, 2, 10): [
        ops("0F0-4 4F0-4 0F5") + pairs("0F6-9 4F5-9", "4B0-4 0B0-3") + ops("0B4 4B5-9 0B5-9"),
        ops("1F0-4 5F0-3") + pairs("5F4 1F5-9 5F5-9", "5B0-4 1B0-4 5B5") + ops("5B6-9 1B5-9"),
        ops("2F0-4 6F0-1") + pairs("6F2-4 2F5-9 6F5-9", "6B0-4 2B0-4 6B5-7") + ops("6B8-9 2B5-9"),
        ops("3F0-4") + pairs("7F0-4 3F5-9 7F5-9", "7B0-4 3B0-4 7B5-9") + ops("3B5-9"),
    ],
    # p = 4, v = 2, M = 3: one round of 3; warm-up min(3 + 2 (3 - r), 6) = 6, 6, 5, 3.
    (4, 2, 3): [
        ops("0F0-2 4F0-2 4B0-2 0B0-2"),
        ops("1F0-2 5F0-2 5B0-2 1B0-2"),
        ops("2F0-2 6F0-1") + pairs("6F2", "6B0") + ops("6B1-2 2B0-2"),
        ops("3F0-2") + pairs("7F0-2", "7B0-2") + ops("3B0-2"),
    ],
    # p = 8, v = 2, M = 12: one round of 12; warm-up min(12 + 2 (7 - r), 24) = 24, 24, 22, ..., 12.
    (8, 2, 12): [
        ops("0F0-11 8F0-11 8B0-11 0B0-11"),
        ops("1F0-11 9F0-11 9B0-11 1B0-11"),
        ops("2F0-11 10F0-9") + pairs("10F10-11", "10B0-1") + ops("10B2-11 2B0-11"),
        ops("3F0-11 11F0-7") + pairs("11F8-11", "11B0-3") + ops("11B4-11 3B0-11"),
        ops("4F0-11 12F0-5") + pairs("12F6-11", "12B0-5") + ops("12B6-11 4B0-11"),
        ops("5F0-11 13F0-3") + pairs("13F4-11", "13B0-7") + ops("13B8-11 5B0-11"),
        ops("6F0-11 14F0-1") + pairs("14F2-11", "14B0-9") + ops("14B10-11 6B0-11"),
        ops("7F0-11") + pairs("15F0-11", "15B0-11") + ops("7B0-11"),
    ],
}


@pytest.mark.parametrize("p,v,m", sorted(EXPECTED))
def test_same_per_rank_order_as_torch(p, v, m):
    sched = build("interleaved-1f1b", p * v, m, chunks_per_rank=v)
    assert [[str(a) for a in actions] for actions in sched.ranks] == EXPECTED[(p, v, m)]


@pytest.mark.parametrize("p,v,m", [(4, 2, 10), (8, 2, 12), (4, 3, 9), (3, 2, 7)])
@pytest.mark.parametrize("f,b", [(1.0, 2.0), (1.0, 1.0), (2.0, 3.0)])
def test_idle_is_the_papers_share_of_busy_when_m_at_least_p(p, v, m, f, b):
    # Narayanan et al. 2021: bubble / busy = (p - 1) / (v M) (f, b per stage), for
    # any M >= p, rounds equal (10 = 2 x 5) or not (9 on 4 ranks: rounds of 5 and 4).
    costs = CostModel.uniform(p * v, forward=f, backward=b)
    met = compute_metrics(simulate(build("interleaved-1f1b", p * v, m, chunks_per_rank=v), costs))
    for r in met.per_rank:
        assert r.busy == pytest.approx(v * m * (f + b))
        assert r.idle == pytest.approx((p - 1) / (v * m) * r.busy)
    assert analytic("interleaved-1f1b", p * v, m, costs, chunks_per_rank=v)["bubble"] == pytest.approx((p - 1) * (f + b))


def test_fewer_microbatches_than_ranks_idles_more_and_has_no_closed_form():
    # (4, 2, 3) by hand with f = 1, b = 2: rank 0 runs 0F0-2 [0,3], then waits for
    # micro-batch 0 to come round ranks 1-3 (4F0 needs 3F0, done at 4) -> 4F0 at 4.
    costs = CostModel.uniform(8, forward=1.0, backward=2.0)
    met = compute_metrics(simulate(build("interleaved-1f1b", 8, 3, chunks_per_rank=2), costs))
    assert all(r.idle > 3 * (1.0 + 2.0) for r in met.per_rank)  # more than (p-1)(f+b)
    a = analytic("interleaved-1f1b", 8, 3, costs, chunks_per_rank=2)
    assert a["bubble"] is None and "rounds shorter than the pipe" in a["reason"]
