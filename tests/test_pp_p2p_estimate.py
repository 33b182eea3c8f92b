"""docs/pp_p2p_estimate.py's replay-timed reading (docs/validation.md, "Pipeline P2P kernels beside compute"), on
hand-worked traces: when Megatron's overlap_p2p_comm posts a receive, and what a compute action loses beside the
kernels resident over it."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim.engine.trace import P2P, CommRow, ComputeRow, _dtype

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = runpy.run_path(str(ROOT / "docs" / "pp_p2p_estimate.py"), run_name="doc_script_under_test")
F, B = 0, 1


class FakeTrace:
    """One rank's actions (kind, start, end) in order, and P2P rows (sender, receiver, start, end, consuming action)."""

    def __init__(self, actions_by_rank, p2p=()):
        self.ranks = len(actions_by_rank)
        rows = [(r, kind, j, 0, kind, s, e, j, False, -1)
                for r, actions in enumerate(actions_by_rank) for j, (kind, s, e) in enumerate(actions)]
        self.compute = np.array(rows, dtype=_dtype(ComputeRow))
        self.comm = np.array([(int(P2P), snd, rcv, 0, 0, 0, 0, s, e, a, -1) for snd, rcv, s, e, a in p2p],
                             dtype=_dtype(CommRow))

    def compute_of(self, rank):
        return self.compute[self.compute["rank"] == rank]


def test_a_receive_is_posted_when_the_previous_action_of_its_direction_ends():
    # warm-up F0 F1, then F2 B0 F3 B1: forward k+1's receive after forward k, backward k+1's after backward k; the
    # first backward's with the last warm-up forward's send (two actions before it); the first action at time 0
    tr = FakeTrace([[(F, 0, 1), (F, 1, 2), (F, 2, 3), (B, 3, 5), (F, 5, 6), (B, 6, 8)]])
    assert SCRIPT["_posts"](tr)[0].tolist() == [0, 1, 2, 2, 3, 5]


def test_a_resident_receive_spans_post_to_arrival_and_a_send_its_transfer_or_until_its_receive_is_posted():
    # rank 0 sends F1's output to rank 1 at 2 (arrives 2.5), consumed by rank 1's action 1, whose receive is posted
    # when rank 1's F0 ends at 4: the receive holds nothing (data first); the send waits to 4 if sends wait
    tr = FakeTrace([[(F, 0, 1), (F, 1, 2)], [(F, 1, 4), (F, 4, 5)]], p2p=[(0, 1, 2.0, 2.5, 1)])
    posts = SCRIPT["_posts"](tr)
    assert SCRIPT["_resident"](tr, 1, posts, False) == []
    assert SCRIPT["_resident"](tr, 0, posts, False) == [(2.0, 2.5)]
    assert SCRIPT["_resident"](tr, 0, posts, True) == [(2.0, 4.0)]
    late = FakeTrace([[(F, 0, 1), (F, 1, 2)], [(F, 0, 0.5), (F, 4, 5)]], p2p=[(0, 1, 2.0, 2.5, 1)])
    assert SCRIPT["_resident"](late, 1, SCRIPT["_posts"](late), False) == [(0.5, 2.5)]  # posted at 0.5, data at 2.5


def test_compute_loses_the_work_it_could_not_do_beside_each_level_of_kernels():
    # a forward [0, 10] and a backward [10, 12]; kernels over [2, 4], [3, 5], [11, 13]: the forward has one kernel
    # beside it for 2 ms (held / alone 1.5: loses 1/3 of each), two for 1 ms (2.0: loses 1/2); the backward one
    # for 1 ms (3.0: loses 2/3) -> 2/3 + 1/2 + 2/3 = 11/6 ms over 12 ms of compute, 4 of the 12 ms beside a kernel
    tr = FakeTrace([[(F, 0, 10), (B, 10, 12)]])
    ratio = {1: [(1.5, 3.0)], 2: [(2.0, 4.0)], 3: [(9.0, 9.0)], 4: [(9.0, 9.0)]}
    extra, beside = SCRIPT["_replay_slowdown"](tr, 0, [(2, 4), (3, 5), (11, 13)], ratio)
    assert extra * 12 == pytest.approx(11 / 6)
    assert beside * 12 == pytest.approx(4)
    assert SCRIPT["_replay_slowdown"](tr, 0, [], ratio) == (0.0, 0.0)
