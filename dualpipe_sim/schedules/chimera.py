"""Chimera (Li & Hoefler, SC'21): two 1F1B pipelines running in opposite directions.

Placement.  D model stages (D even) on D ranks.  The *down* pipeline
(direction 0) has stage i on rank i; the *up* pipeline (direction 1) has stage
i on rank D-1-i.  Every rank therefore holds two stages: down stage r and up
stage D-1-r.

Micro-batches.  N is a multiple of D and is processed as N/D *basic units* of
D micro-batches each.  In unit u, micro-batches uD .. uD+D/2-1 go down
(direction 0) and uD+D/2 .. uD+D-1 go up (direction 1), the same split as the
reference (first unit: 0..D/2-1 down, D/2..D-1 up).

Variant implemented: the reference implementation's order
(Shigangli/Chimera, ``chimera_pipeline_rank.py``: ``AutoGeneratePipelineRank``
/ ``MyPipeLine``), which is the paper's basic unit with **direct
concatenation** for N > D (paper Sec. 3.5; not forward doubling nor backward
halving).  The reference steps both pipelines on a slot clock in which a
forward and a backward each take one slot; the per-rank order is the order of
those slots.  In closed form, for the k-th micro-batch (k = 0..D/2-1) of a
pipeline in unit u, at its stage s:

* forward  in slot 2uD + 2k + s,
* backward in slot 2uD + 2k + 2D - 1 - s,

i.e. each pipeline injects a micro-batch every other slot and runs its
backward as soon as the gradient arrives (1F1B inside the unit), and unit u+1
starts 2D slots after unit u: in the reference a new unit of a direction is
pushed the moment that direction's first micro-batch of the previous unit
leaves the pipeline.  The two directions never want the same rank in the same
slot (parity argument), so the slot order is a total order per rank.

What is true of this variant (tests check it on the engine):

* with F = B and no communication the slot clock is the real timeline, so the
  makespan is (2N + D - 2) F and **every rank idles (D - 2) F in total**, for
  any number of units: the concatenated units fill each other's drain and fill
  bubbles, so the D - 2 idle slots are per iteration, not per unit.  This is
  the paper's bubble ratio (D - 2) / (2N + D - 2), and the only closed form
  reported (``analytic.bubble`` is null for B != F).
* when B != F (B = 2F is typical) the concatenation leaves intermediate
  bubbles between units, growing with N/D: at D = 8 with B = 2F and no P2P
  time the bubble ratio is 33% at N = 8 and 22% at N = 64, where 1F1B's falls
  from 47% to 10%.  Forward doubling (chimera_doubling.py, the authors'
  loop) addresses this; backward halving is not built (docs/schedules.md
  says why).
* peak activations on rank r are D/2 + 1 + min(r, D-1-r) stage-activations:
  D/2 + 1 on the end ranks, rising to D on the two middle ranks, so within the
  paper's activation-memory range [D/2 + 1, D].

Equal, worker by worker, to the direct loop of the authors'
``main_with_runtime_direct.py`` at (D, N) = (4, 8) and (8, 16)
(tests/test_chimera_doubling.py).  Checked against the reference by running its generator: same per-rank order
(directions, F/B and micro-batch ids) for D = 2..10 and N = D, 2D (and 3D for
D = 4).  For D >= 6 with three or more units the reference pushes a new unit
each time *any* earlier micro-batch of a direction leaves the pipeline, so its
units overlap and collide in the same slot; we keep the intended one-unit-
after-another concatenation (period 2D slots), which it produces for D = 4 and
for the first two units of any D.
"""

from __future__ import annotations

from .ir import Op, Schedule
from .family import register
from .closed_form import COMMON_RANGE, common_problem, mean_costs, result


def _check(stages: int, microbatches: int) -> str | None:
    if stages < 2 or stages % 2:
        return f"pipeline.stages: needs an even number >= 2, got {stages}"
    if microbatches < 1 or microbatches % stages:
        return (
            f"pipeline.microbatches: needs a positive multiple of the {stages} stages "
            f"(whole basic units of D micro-batches), got {microbatches}"
        )
    return None


def peak_activations(stages: int) -> list[int]:
    """Peak stage-activations per rank for this variant (order-determined)."""
    D = stages
    return [D // 2 + 1 + min(r, D - 1 - r) for r in range(D)]


CHIMERA_FORMULA = "(D - 2) F per iteration (paper Sec. 3.3, F = B)"
CHIMERA_RANGE = f"B = F; {COMMON_RANGE}"


def _analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, _, _ = mean_costs(costs, stages)
    D = stages
    reason = common_problem(costs, stages)
    if reason is None and abs(B - F) > 1e-9 * F:
        reason = "B != F (direct concatenation leaves gaps between units the paper's formula does not count)"
    return result((D - 2) * F, max(peak_activations(stages)), CHIMERA_FORMULA, CHIMERA_RANGE, reason)


@register(
    "chimera",
    check=_check,
    constraints="stages even >= 2; microbatches a multiple of stages; two stages per rank (ranks = stages)",
    description=(
        "Chimera: down and up 1F1B pipelines on the same ranks, basic units of D micro-batches "
        "joined by direct concatenation (reference order of Shigangli/Chimera)"
    ),
    analytic=_analytic,
)
def chimera(stages: int, microbatches: int) -> Schedule:
    D, N = stages, microbatches
    half = D // 2
    timed: list[list[tuple[int, Op]]] = [[] for _ in range(D)]
    for unit in range(N // D):
        base_slot = 2 * D * unit
        for direction in (0, 1):
            for k in range(half):
                mb = unit * D + direction * half + k
                for s in range(D):
                    rank = s if direction == 0 else D - 1 - s
                    timed[rank].append((base_slot + 2 * k + s, Op("F", mb, s, direction)))
                    timed[rank].append((base_slot + 2 * k + 2 * D - 1 - s, Op("B", mb, s, direction)))
    ranks = []
    for rank_ops in timed:
        rank_ops.sort(key=lambda item: item[0])
        slots = [slot for slot, _ in rank_ops]
        assert len(set(slots)) == len(slots), "two ops of one rank in one slot"
        ranks.append(tuple(op for _, op in rank_ops))
    return Schedule("chimera", D, N, tuple(ranks))
