"""GPipe (Huang et al. 2019): all forwards, then all backwards, one stage per rank."""

from .ir import Op, Schedule
from .family import register
from .closed_form import COMMON_RANGE, common_problem, mean_costs, result


def check_one_stage_per_rank(stages: int, microbatches: int) -> str | None:
    if stages < 1:
        return f"pipeline.stages: needs >= 1, got {stages}"
    if microbatches < 1:
        return f"pipeline.microbatches: needs >= 1, got {microbatches}"
    return None


def _analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, _, _ = mean_costs(costs, stages)
    # Fill and drain: every rank waits (p-1) forward slots and (p-1) backward slots.
    return result((stages - 1) * (F + B), microbatches, "(p-1)(F + B)", COMMON_RANGE, common_problem(costs, stages))


@register(
    "gpipe",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description="GPipe: every forward, then every backward (reverse micro-batch order)",
    analytic=_analytic,
)
def gpipe(stages: int, microbatches: int) -> Schedule:
    ranks = []
    for s in range(stages):
        forwards = [Op("F", m, s) for m in range(microbatches)]
        # Backwards in reverse order: the last micro-batch's gradient arrives first.
        backwards = [Op("B", m, s) for m in reversed(range(microbatches))]
        ranks.append(tuple(forwards + backwards))
    return Schedule("gpipe", stages, microbatches, tuple(ranks))
