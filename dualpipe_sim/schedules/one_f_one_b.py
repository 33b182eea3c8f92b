"""1F1B (PipeDream-Flush, Narayanan et al. 2019): warm-up forwards, then one forward
one backward in turn, then cool-down backwards; one stage per rank."""

from .ir import Op, Schedule
from .family import register
from .closed_form import COMMON_RANGE, common_problem, mean_costs, result
from .gpipe import check_one_stage_per_rank


def _analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, _, _ = mean_costs(costs, stages)
    # Same fill and drain as GPipe; 1F1B only caps how many activations are alive.
    return result(
        (stages - 1) * (F + B), min(stages, microbatches), "(p-1)(F + B)", COMMON_RANGE, common_problem(costs, stages)
    )


@register(
    "1f1b",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description="1F1B: stage s runs min(S-s, M) warm-up forwards, then alternates B and F",
    analytic=_analytic,
)
def one_f_one_b(stages: int, microbatches: int) -> Schedule:
    ranks = []
    for s in range(stages):
        warmup = min(stages - s, microbatches)
        ops = [Op("F", m, s) for m in range(warmup)]
        next_f, next_b = warmup, 0
        while next_b < microbatches:
            ops.append(Op("B", next_b, s))
            next_b += 1
            if next_f < microbatches:
                ops.append(Op("F", next_f, s))
                next_f += 1
        ranks.append(tuple(ops))
    return Schedule("1f1b", stages, microbatches, tuple(ranks))
