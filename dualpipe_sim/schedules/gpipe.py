"""GPipe (Huang et al. 2019): all forwards, then all backwards, one stage per rank."""

from ..ir import Op, Schedule
from ..registry import register


def _check(stages: int, microbatches: int) -> str | None:
    if stages < 1:
        return f"pipeline.stages must be >= 1, got {stages}"
    if microbatches < 1:
        return f"pipeline.microbatches must be >= 1, got {microbatches}"
    return None


@register(
    "gpipe",
    check=_check,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description="GPipe: every forward, then every backward (reverse micro-batch order)",
)
def gpipe(stages: int, microbatches: int) -> Schedule:
    ranks = []
    for s in range(stages):
        forwards = [Op("F", m, s) for m in range(microbatches)]
        # Backwards in reverse order: the last micro-batch's gradient arrives first.
        backwards = [Op("B", m, s) for m in reversed(range(microbatches))]
        ranks.append(tuple(forwards + backwards))
    return Schedule("gpipe", stages, microbatches, tuple(ranks))
