"""DualPipe's per-rank orders at two sizes, derived by hand from the reference algorithm.

Source: deepseek-ai/DualPipe, ``dualpipe/dualpipe.py``, ``DualPipe.step()`` (read
at commit bb214e8), not this project's generator or its docstring.  The
reference, for rank r of N ranks with ``num_chunks`` = M micro-batches:

* ``num_half_ranks`` L = N/2, ``half_rank`` p = min(r, N-1-r), ``half_num_chunks`` C = M/2;
* "phase 0" of a rank in the first half (r < L) is the forward direction: its
  micro-batches 0..C-1 enter at rank 0 (here direction 0, stage r); "phase 1"
  is the reverse direction: micro-batches C..M-1 entering at rank N-1 (here
  direction 1, stage N-1-r).  In the second half the two phases swap;
* each phase takes its micro-batches in order; ``_backward_chunk(.., enable_zb=True)``
  runs only the input gradient (here I) and queues the weight gradient, which a later
  ``_weight_chunk()`` pops first in, first out (here W); otherwise the backward is
  whole (B); ``_forward_backward_chunk(a, b)`` is an overlapped pair, F of phase a
  with a whole B of phase b (here ``(F;B)OVERLAP_F_B``);
* the middle ranks are r = L-1 and r = L.

The eight steps of ``step()``:

1. (L-p-1) x 2  F0
2. p+1 x        F0, F1
3. L-p-1 x      B1 (zb), W, F1
4. C-N+p+1 x    (F0;B1), (F1;B0); on a middle rank the first (F0;B1) is F0 then a whole B1, not overlapped
5. L-p-1 x      B1, (F1;B0)
6. p+1 x        B1, B0: with k = (p+1)//2, zb switches on at round k, before B1 when p is odd,
                between B1 and B0 when p is even
7. L-p-1 x      W, B0 (zb)
8. p+1 x        W

Notation: ``2F5@1`` is stage 2, forward, micro-batch 5, direction 1 (direction 0 has no suffix).
"""

from __future__ import annotations

from collections import Counter

import pytest

from dualpipe_sim.schedules.registry import build
from dualpipe_sim.engine.validate import validate


def pair(f: str, b: str) -> str:
    return f"({f};{b})OVERLAP_F_B"


P = pair
EXPECTED = {
    # N = 4, M = 10: L = 2, C = 5; middle ranks 1 and 2.
    (4, 10): [
        # rank 0: p = 0, phase 0 = dir 0 stage 0 (mb 0-4), phase 1 = dir 1 stage 3 (mb 5-9).
        # 1: 2 F0; 2: F0 F1; 3: I1 W F1; 4: 5-4+0+1 = 2 rounds; 5: 1 round; 6: p even, k = 0:
        # B1 whole, B0 split; 7: W, I0; 8: W.
        ["0F0", "0F1", "0F2", "3F5@1", "3I5@1", "3W5@1", "3F6@1",
         P("0F3", "3B6@1"), P("3F7@1", "0B0"), P("0F4", "3B7@1"), P("3F8@1", "0B1"),
         "3B8@1", P("3F9@1", "0B2"),
         "3B9@1", "0I3", "0W3", "0I4", "0W4"],
        # rank 1: p = 1, middle; phase 0 = dir 0 stage 1, phase 1 = dir 1 stage 2.
        # 2: two F0 F1; 4: 5-4+1+1 = 3 rounds, the first F0, B1 lone; 6: p odd, k = 1: round 0 whole,
        # round 1 split; 8: two W (oldest first).
        ["1F0", "2F5@1", "1F1", "2F6@1",
         "1F2", "2B5@1", P("2F7@1", "1B0"), P("1F3", "2B6@1"), P("2F8@1", "1B1"), P("1F4", "2B7@1"),
         P("2F9@1", "1B2"),
         "2B8@1", "1B3", "2I9@1", "1I4", "2W9@1", "1W4"],
        # rank 2: p = 1, middle, second half: phase 0 = dir 1 stage 1 (mb 5-9), phase 1 = dir 0 stage 2.
        ["1F5@1", "2F0", "1F6@1", "2F1",
         "1F7@1", "2B0", P("2F2", "1B5@1"), P("1F8@1", "2B1"), P("2F3", "1B6@1"), P("1F9@1", "2B2"),
         P("2F4", "1B7@1"),
         "2B3", "1B8@1", "2I4", "1I9@1", "2W4", "1W9@1"],
        # rank 3: p = 0, second half: phase 0 = dir 1 stage 0, phase 1 = dir 0 stage 3.
        ["0F5@1", "0F6@1", "0F7@1", "3F0", "3I0", "3W0", "3F1",
         P("0F8@1", "3B1"), P("3F2", "0B5@1"), P("0F9@1", "3B2"), P("3F3", "0B6@1"),
         "3B3", P("3F4", "0B7@1"),
         "3B4", "0I8@1", "0W8@1", "0I9@1", "0W9@1"],
    ],
    # N = 6, M = 12: L = 3, C = 6; middle ranks 2 and 3.
    (6, 12): [
        # rank 0: p = 0: 1: 4 F0; 2: F0 F1; 3: two (I1 W F1); 4: 6-6+0+1 = 1 round; 5: two rounds;
        # 6: B1 whole, B0 split; 7: two (W, I0); 8: one W.
        ["0F0", "0F1", "0F2", "0F3", "0F4", "5F6@1", "5I6@1", "5W6@1", "5F7@1", "5I7@1", "5W7@1", "5F8@1",
         P("0F5", "5B8@1"), P("5F9@1", "0B0"),
         "5B9@1", P("5F10@1", "0B1"), "5B10@1", P("5F11@1", "0B2"),
         "5B11@1", "0I3", "0W3", "0I4", "0W4", "0I5", "0W5"],
        # rank 1: p = 1: 1: 2 F0; 2: two F0 F1; 3: one (I1 W F1); 4: 2 rounds; 5: one; 6: p odd, k = 1;
        # 7: W (the queued 4W11@1 first), I0; 8: two W.
        ["1F0", "1F1", "1F2", "4F6@1", "1F3", "4F7@1", "4I6@1", "4W6@1", "4F8@1",
         P("1F4", "4B7@1"), P("4F9@1", "1B0"), P("1F5", "4B8@1"), P("4F10@1", "1B1"),
         "4B9@1", P("4F11@1", "1B2"),
         "4B10@1", "1B3", "4I11@1", "1I4", "4W11@1", "1I5", "1W4", "1W5"],
        # rank 2: p = 2, middle: 2: three F0 F1; 4: 3 rounds, the first lone; 6: p even, k = 1:
        # round 0 whole, round 1 B1 whole then B0 split, round 2 both split; 8: three W.
        ["2F0", "3F6@1", "2F1", "3F7@1", "2F2", "3F8@1",
         "2F3", "3B6@1", P("3F9@1", "2B0"), P("2F4", "3B7@1"), P("3F10@1", "2B1"), P("2F5", "3B8@1"),
         P("3F11@1", "2B2"),
         "3B9@1", "2B3", "3B10@1", "2I4", "3I11@1", "2I5", "2W4", "3W11@1", "2W5"],
        # rank 3: p = 2, middle, second half: phase 0 = dir 1 stage 2, phase 1 = dir 0 stage 3.
        ["2F6@1", "3F0", "2F7@1", "3F1", "2F8@1", "3F2",
         "2F9@1", "3B0", P("3F3", "2B6@1"), P("2F10@1", "3B1"), P("3F4", "2B7@1"), P("2F11@1", "3B2"),
         P("3F5", "2B8@1"),
         "3B3", "2B9@1", "3B4", "2I10@1", "3I5", "2I11@1", "2W10@1", "3W5", "2W11@1"],
        # rank 4: p = 1, second half: phase 0 = dir 1 stage 1, phase 1 = dir 0 stage 4.
        ["1F6@1", "1F7@1", "1F8@1", "4F0", "1F9@1", "4F1", "4I0", "4W0", "4F2",
         P("1F10@1", "4B1"), P("4F3", "1B6@1"), P("1F11@1", "4B2"), P("4F4", "1B7@1"),
         "4B3", P("4F5", "1B8@1"),
         "4B4", "1B9@1", "4I5", "1I10@1", "4W5", "1I11@1", "1W10@1", "1W11@1"],
        # rank 5: p = 0, second half: phase 0 = dir 1 stage 0, phase 1 = dir 0 stage 5.
        ["0F6@1", "0F7@1", "0F8@1", "0F9@1", "0F10@1", "5F0", "5I0", "5W0", "5F1", "5I1", "5W1", "5F2",
         P("0F11@1", "5B2"), P("5F3", "0B6@1"),
         "5B3", P("5F4", "0B7@1"), "5B4", P("5F5", "0B8@1"),
         "5B5", "0I9@1", "0W9@1", "0I10@1", "0W10@1", "0I11@1", "0W11@1"],
    ],
}  # fmt: skip


@pytest.mark.parametrize("ranks,microbatches", sorted(EXPECTED))
def test_same_per_rank_order_as_the_reference(ranks, microbatches):
    sched = build("dualpipe", ranks, microbatches)
    got = [[str(a) for a in actions] for actions in sched.ranks]
    for rank, (mine, expected) in enumerate(zip(got, EXPECTED[(ranks, microbatches)])):
        assert mine == expected, f"rank {rank}"
    validate(sched)


@pytest.mark.parametrize("ranks,microbatches", sorted(EXPECTED))
def test_hand_written_orders_are_complete(ranks, microbatches):
    # The hand-written lists themselves: every stage-direction runs each of its micro-batches' F once
    # and its backward once, as B or as I then W.
    ops = [op for rank in EXPECTED[(ranks, microbatches)] for a in rank
           for op in (a[1:-len(")OVERLAP_F_B")].split(";") if a.startswith("(") else [a])]  # fmt: skip
    assert len(ops) == len(set(ops))
    kinds = Counter(op[1] for op in ops)  # stages here are one digit: the kind is the second character
    assert kinds["F"] == ranks * microbatches and kinds["B"] + kinds["I"] == ranks * microbatches
    assert kinds["I"] == kinds["W"]
