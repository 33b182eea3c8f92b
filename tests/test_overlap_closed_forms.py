"""DualPipe / DualPipeV closed forms (DualPipe README, PP = stages; DualPipeV: 2 x ranks):
idle per rank (PP/2-1)(F&B+B-3W) and peak activation PP+1, checked against the
simulation where their assumptions hold (free P2P, W = F, B = 2W, F&B = F + B),
through the registered ``analytic`` function that metrics.json reports."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation

SHAPES = [("dualpipe", S, M) for S in (2, 4, 8, 12) for M in (2 * S, 2 * S + 6)] + [
    ("dualpipev", 2 * R, M) for R in (1, 3, 4, 7) for M in (2 * R, 2 * R + 3, 4 * R)
]

# One layer, no all-to-all, compute parts of 1: F = Af + Mf = 2, W = MbW + AbW = 2,
# B = MbI + MbW + AbI + AbW = 4 = 2W; an FB pair has nothing to overlap, F&B = 6 = F + B.
DENSE_CHUNK = {
    "layers": 1, "attn_forward": 1, "mlp_forward": 1, "dispatch_forward": 0, "combine_forward": 0,
    "attn_backward_input": 1, "attn_backward_weight": 1, "mlp_backward_input": 1, "mlp_backward_weight": 1,
    "dispatch_backward": 0, "combine_backward": 0,
}  # fmt: skip


def run(family, S, M, **sections):
    return simulation.run(
        scenario.from_dict({"pipeline": {"schedule": family, "stages": S, "microbatches": M}, **sections})
    )


@pytest.mark.parametrize("family,S,M", SHAPES)
def test_closed_form_matches_simulation(family, S, M):
    """F = 1.5, B = 3, W = 1.5, F&B = 4.5: every rank idles (S/2-1)(4.5+3-4.5) = 3(S/2-1)."""
    m = run(family, S, M, costs={"forward": 1.5, "backward": 3.0, "weight": 1.5, "overlapped": 4.5}).metrics.to_dict()
    bubble = 3.0 * (S / 2 - 1)
    assert m["analytic"]["bubble"] == pytest.approx(bubble) and m["analytic"]["peak_activation"] == S + 1
    for r in m["per_rank"]:
        assert r["idle"] == pytest.approx(bubble) and r["between_ops"] == pytest.approx(bubble)
    assert max(r["peak_activation"] for r in m["per_rank"]) == S + 1


@pytest.mark.parametrize("family,S,M", SHAPES[::2])
def test_closed_form_with_component_costs(family, S, M):
    """The same through [chunk]: F = 2, B = 4, W = 2, F&B = 6 -> (S/2-1)(6+4-6) = 4(S/2-1)."""
    m = run(family, S, M, chunk=DENSE_CHUNK).metrics.to_dict()
    assert m["analytic"]["bubble"] == pytest.approx(4.0 * (S / 2 - 1))
    for r in m["per_rank"]:
        assert r["idle"] == pytest.approx(4.0 * (S / 2 - 1))


def test_bubble_does_not_grow_with_microbatches():
    costs = {"forward": 1.0, "backward": 2.0, "weight": 1.0}
    idles = [[r.idle for r in run("dualpipe", 8, M, costs=costs).metrics.per_rank] for M in (16, 32, 64)]
    assert idles[0] == idles[1] == idles[2] == [6.0] * 8


def test_analytic_is_not_given_when_f_i_w_differ():
    """All components 1 (one layer): F = 4, B = 6, W = 2, so F = I = 4 != W: outside
    the range where the README's figure is the idle time, so no bubble, and the reason."""
    ones = {k: 1 for k in DENSE_CHUNK}
    a = run("dualpipe", 8, 16, chunk=ones).metrics.to_dict()["analytic"]
    assert a["bubble"] is None and "F, I and W differ" in a["reason"]
    assert a["peak_activation"] == 9


@pytest.mark.parametrize("family,S,M", [("dualpipe", 8, 16), ("dualpipev", 8, 9), ("dualpipev", 2, 2)])
def test_two_parameter_copies_per_rank(family, S, M):
    m = run(family, S, M, costs={"forward": 1.0, "backward": 2.0}, memory={"parameters": 3.0e9}).metrics.to_dict()
    for r in m["per_rank"]:
        assert r["parameter_copies"] == 2 and r["parameter_bytes"] == 6.0e9


@pytest.mark.parametrize("family,S,M", SHAPES[2::3])
@pytest.mark.parametrize("delta", [0.25, 1.0, -0.5])
def test_closed_form_is_the_middle_ranks_when_pairs_gain(family, S, M, delta):
    """F = 1, B = 2, W = 1, F&B = 3 - delta with delta <= F (so F&B >= B; a negative
    delta is a pair slower than F + B).

    The middle ranks (DualPipe's S/2-1 and S/2, DualPipeV's last) idle exactly
    the closed form.  By the phase counts (tests/test_dualpipe_schedules.py),
    a rank at distance p from its nearer end runs 2C-3L+p+1 pairs against the
    middle ranks' 2C-2L-1 (L = S/2 ranks per leg): L-2-p fewer, each replaced by
    a lone F and a lone B that take delta longer.  All ranks share the makespan,
    so that rank idles (L-2-p) x delta less than the closed form.  (Below B, the
    pairs stop setting the pace and this breaks: see docs/dualpipe.md.)
    """
    m = run(family, S, M, costs={"forward": 1.0, "backward": 2.0, "weight": 1.0, "overlapped": 3.0 - delta}).metrics.to_dict()
    L = S // 2
    closed = (S / 2 - 1) * ((3.0 - delta) + 2.0 - 3.0)
    if delta >= 0:  # the middle ranks are the most idle: the closed form is the largest idle
        assert m["analytic"]["bubble"] == pytest.approx(closed)
    else:  # F&B > F + B: the outer ranks idle more than the middle ones; not reported
        assert m["analytic"]["bubble"] is None and "F&B" in m["analytic"]["reason"]
    for r in m["per_rank"]:
        p = min(r["rank"], S - 1 - r["rank"]) if family == "dualpipe" else r["rank"]
        assert r["idle"] == pytest.approx(closed - max(0, L - 2 - p) * delta), r["rank"]
