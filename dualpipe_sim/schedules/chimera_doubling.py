"""Chimera with forward doubling (Li & Hoefler, SC'21, Sec. 3.5), in the authors' order.

Placement and micro-batch numbering are chimera.py's: D stages (D even) on D
ranks, the down pipeline (direction 0) has stage i on rank i, the up pipeline
(direction 1) stage i on rank D-1-i; basic unit u holds micro-batches
uD .. uD+D/2-1 (down) and uD+D/2 .. uD+D-1 (up).  Each pipeline runs its own
micro-batches in order and its backwards in the order of its forwards (the
authors' runtime pops the oldest stashed activation), so the j-th forward of
direction d on a rank is that direction's j-th micro-batch.

Forward doubling runs two micro-batches' forwards back to back where direct
concatenation runs one, so that with B = 2F a pair of forwards fills the slot
a backward takes.  Two basic units make one *doubling step*, hence N must be a
multiple of 2D.

Order per rank (source: Shigangli/Chimera at 7be5274,
chimera/chimera_bert/bert/main_with_runtime_forward_doubling.py, the
``doubling_steps`` loop; the gpt2 copy has the same loop).  With h = D/2, let
P be the direction whose stage on this rank is in the first half (down on
ranks < h, up on ranks >= h) and Q the other one, and
a = h - r on ranks r < h, r - h + 1 on ranks r >= h; b = h - a; c = b + h:

    per doubling step t:
        a x (F_P F_P)            if t == 0, else a x (B_P F_P F_P)
        b x (F_Q F_Q F_P F_P)
        a x (F_Q F_Q B_Q)
        c x (B_P B_Q)
    then a x B_P                 (the tail, once)

The authors' scripts that run this loop pass ``--recompute_step``
(job_scripts/daint_bert48_chimera_32nodes_8w4d_8b_16s_doubling.sh,
daint_gpt2_chimera_doubling_512nodes.sh): every forward runs without keeping
its graph and every backward first re-runs its stage's forward (runtime.py,
``run_backward``).  So this family's default ``memory.recompute`` is "full"
(``recompute`` below; scenario.Scenario.recompute applies it).
"""

from __future__ import annotations

from .ir import Op, Schedule
from .closed_form import COMMON_RANGE, common_problem, mean_costs, result
from .family import register


def _check(stages: int, microbatches: int) -> str | None:
    if stages < 2 or stages % 2:
        return f"pipeline.stages: needs an even number >= 2, got {stages}"
    if microbatches < 1 or microbatches % (2 * stages):
        return (
            f"pipeline.microbatches: needs a positive multiple of 2 x the {stages} stages = {2 * stages} "
            f"(forward doubling pairs basic units of D micro-batches), got {microbatches}"
        )
    return None


def microbatch(direction: int, j: int, stages: int) -> int:
    """The id of direction ``direction``'s j-th micro-batch (chimera.py's numbering)."""
    half = stages // 2
    return (j // half) * stages + direction * half + j % half


def _loop_counts(rank: int, stages: int) -> tuple[int, int, int, int]:
    """(P, a, b, c) of the authors' loop on ``rank``: P the direction whose stage here is < D/2."""
    half = stages // 2
    if rank < half:
        return 0, half - rank, rank, rank + half
    a = rank - half + 1
    return 1, a, half - a, half - a + half


def rank_kinds(rank: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """(kind, direction) in the order the authors' loop runs them on ``rank``."""
    P, a, b, c = _loop_counts(rank, stages)
    Q = 1 - P
    order: list[tuple[str, int]] = []
    for step in range(microbatches // (2 * stages)):
        order += (([("B", P)] if step else []) + [("F", P), ("F", P)]) * a
        order += [("F", Q), ("F", Q), ("F", P), ("F", P)] * b
        order += [("F", Q), ("F", Q), ("B", Q)] * a
        order += [("B", P), ("B", Q)] * c
    order += [("B", P)] * a
    return order


def peak_activations(stages: int) -> list[int]:
    """Peak stage-activations per rank (order-determined, any N = 2D k).

    Before rank r's first backward of direction Q it has run 2a + 4b forwards
    and then, in the (F_Q F_Q B_Q) loop, gains one per round: the most alive is
    after the last round's two forwards, 2a + 4b + a + 1 = 3h + b + 1; later
    steps start from the a forwards of P still held and reach the same count.
    With b = min(r, D-1-r): 3 D/2 + 1 + min(r, D-1-r)."""
    D = stages
    return [3 * (D // 2) + 1 + min(r, D - 1 - r) for r in range(D)]


DOUBLING_FORMULA = "(D - 2)(F + B) / 2 per iteration"
DOUBLING_RANGE = f"F <= B <= 2F; {COMMON_RANGE}"


def _analytic(stages: int, microbatches: int, costs) -> dict:
    """Every rank idles (D - 2)(F + B) / 2 whatever the number of doubling steps, while
    F <= B <= 2F (worked by hand at D = 4 in tests/test_chimera_doubling.py; checked against the
    simulation over random shapes and costs in tests/test_closed_form_ranges.py)."""
    F, B, _, _ = mean_costs(costs, stages)
    reason = common_problem(costs, stages)
    if reason is None and B < F * (1 - 1e-9):
        reason = "B < F (outside F <= B <= 2F the idle time grows with the number of doubling steps)"
    if reason is None and B > 2 * F * (1 + 1e-9):
        reason = "B > 2F (outside F <= B <= 2F the idle time grows with the number of doubling steps)"
    return result((stages - 2) * (F + B) / 2, max(peak_activations(stages)), DOUBLING_FORMULA, DOUBLING_RANGE, reason)


@register(
    "chimera-doubling",
    check=_check,
    constraints="stages even >= 2; microbatches a multiple of 2 x stages; two stages per rank (ranks = stages)",
    description=(
        "Chimera with forward doubling: two forwards per slot, basic units taken in pairs "
        "(the authors' loop in Shigangli/Chimera); default memory.recompute = full, as their scripts run it"
    ),
    analytic=_analytic,
    recompute="full",
)
def chimera_doubling(stages: int, microbatches: int) -> Schedule:
    D, N = stages, microbatches
    ranks = []
    for rank in range(D):
        seen = {(kind, d): 0 for kind in "FB" for d in (0, 1)}  # how many of each this rank has run
        ops = []
        for kind, d in rank_kinds(rank, D, N):
            j = seen[kind, d]
            seen[kind, d] += 1
            ops.append(Op(kind, microbatch(d, j, D), rank if d == 0 else D - 1 - rank, d))
        ranks.append(tuple(ops))
    return Schedule("chimera-doubling", D, N, tuple(ranks))
