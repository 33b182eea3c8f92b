"""Zero-bubble schedules' activation memory against the paper's statements.

Qi et al. 2024 (Zero Bubble Pipeline Parallelism), Sec. 2.1: ZB-H1 "keeps the maximum peak memory
usage over all workers no more than that of 1F1B", and it is the same order as 1F1B with each
backward split; 1F1B's rank r keeps p - r micro-batches' activations at most (its p - r - 1 warm-up
forwards and the one in flight), m when m is smaller.  Sec. 2.2: ZB-H2 lets rank 0 hold 2p - 1.
"""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.simulation import simulate
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.registry import build


@pytest.mark.parametrize("p,m", [(4, 8), (4, 3), (3, 6), (6, 12), (2, 1)])
def test_zb_h1_peak_is_1f1bs(p, m):
    costs = CostModel.uniform(p, forward=1.0, backward=2.0, weight=1.0)
    for name in ("zb-h1", "zb-h1-megatron", "1f1b"):
        met = compute_metrics(simulate(build(name, p, m), costs))
        assert [r.peak_activation for r in met.per_rank] == [min(p - r, m) for r in range(p)], name


@pytest.mark.parametrize("p,m", [(4, 8), (3, 6)])
def test_zb_h2_rank_0_holds_2p_minus_1(p, m):
    costs = CostModel.uniform(p, forward=1.0, backward=2.0, weight=1.0)
    met = compute_metrics(simulate(build("zb-h2", p, m), costs))
    assert met.per_rank[0].peak_activation == min(2 * p - 1, m)
