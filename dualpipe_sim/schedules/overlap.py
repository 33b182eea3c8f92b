"""1F1B and interleaved 1F1B with expert-parallel all-to-all overlap.

The schedules DualPipe is most often weighed against: Megatron-Core's
"Combined 1F1B" (``--overlap-moe-expert-parallel-comm``, module
``core.pipeline_parallel.combined_1f1b``) runs a steady-state forward of one
micro-batch and the backward of another as one overlapped pair, so the
all-to-all of each hides behind the other's compute, as DualPipe's pairs do.
With pipeline parallelism Megatron-Core runs it on the interleaved schedule
only; ``1f1b-overlap`` is the same pairing with one chunk per rank.  Here such a pair is the IR's FB
action: its length is ``costs.overlapped`` with the simple cost model, or the
two component streams interleaved on the rank's compute and all-to-all
channels with ``[chunk]`` (costs.py), exactly as for DualPipe.

Pairing.  Each family is its plain schedule with every steady-state step
"forward k + warm-up, backward k" turned into one pair FB(forward, backward):

* ``interleaved-1f1b-overlap``: ``interleaved-1f1b``'s order (torch's, or
  Megatron-core's with ``microbatch_group``) with one more warm-up forward on
  every rank, as Megatron-core's ``get_pp_rank_microbatches`` adds with
  ``overlap_moe_expert_parallel_comm``, steady pairs FB(forward k + warm-up,
  backward k), then the cool-down B's.  The extra forward keeps the last
  rank's first pair from holding the forward and the backward of one
  micro-batch on one stage.
* ``1f1b-overlap``: the same with one chunk per rank (v = 1): 2(p-1-r) + 1
  warm-up forwards on rank r, not 1F1B's p - r.  Why two more per hop: rank
  r's pair i waits for the backward in rank r+1's pair i, which waits for a
  forward from rank r.  With 1F1B's warm-up that forward comes from rank r's
  pair i-1, so neighbouring ranks would take turns and each idle half the time
  (a pair plus a P2P hop per pair); two forwards of lead per hop put it in
  pair i-2 and the ranks run their pairs back to back.  Megatron pairs with
  the interleaved schedule, whose warm-up has that lead built in.

The lead costs memory: rank 0 holds 2p stage-activations at its peak with
``1f1b-overlap`` (1F1B: p; DualPipe: PP + 1).  Warm-up and cool-down run lone
ops with their all-to-all exposed.  No closed form is given.
"""

from __future__ import annotations

from .ir import FB, Action, Op, Schedule
from .family import register
from .closed_form import result
from .gpipe import check_one_stage_per_rank
from .interleaved import (DEFAULT_CHUNKS, INTERLEAVED_CONSTRAINTS, INTERLEAVED_OPTIONS, check_interleaved, rank_phases,
                          warmup_forwards)

NO_FORMULA = "no closed form: nothing published for overlapped 1F1B pairs"


def _analytic_1f1b(stages: int, microbatches: int, costs) -> dict:
    # Rank 0 holds its 2p - 1 warm-up forwards and the pair's forward.
    return result(None, min(2 * stages, microbatches), "-", "-", NO_FORMULA)


def _analytic_interleaved(
    stages: int, microbatches: int, costs, chunks_per_rank: int = DEFAULT_CHUNKS, microbatch_group: int | None = None
) -> dict:
    v, m = chunks_per_rank, microbatches
    p = stages // v
    # A rank holds its warm-up forwards (one more than interleaved-1f1b's) and the pair's forward.
    peak = max(min(warmup_forwards(p, v, m, r, microbatch_group) + 2, m * v) for r in range(p))
    return result(None, peak, "-", "-", NO_FORMULA)


def _paired(warm: list[Op], steady: list[tuple[Op, Op]], cool: list[Op]) -> tuple[Action, ...]:
    return tuple(warm) + tuple(FB(f, b) for f, b in steady) + tuple(cool)


@register(
    "1f1b-overlap",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description=(
        "1F1B with expert-parallel all-to-all overlap (Megatron-Core Combined 1F1B's pairing, one chunk "
        "per rank): each steady-state forward and backward of different micro-batches run as one overlapped pair"
    ),
    analytic=_analytic_1f1b,
)
def one_f_one_b_overlap(stages: int, microbatches: int) -> Schedule:
    p, m = stages, microbatches
    # One chunk per rank: the interleaved order with v = 1, i.e. 1F1B with 2(p-1-r) + 1 warm-up forwards.
    ranks = tuple(_paired(*rank_phases(p, 1, m, r, extra_warmup=1)) for r in range(p))
    return Schedule("1f1b-overlap", p, m, ranks)


@register(
    "interleaved-1f1b-overlap",
    check=check_interleaved,
    constraints=INTERLEAVED_CONSTRAINTS,
    description=(
        "Interleaved 1F1B (torch's order, one more warm-up forward) with expert-parallel all-to-all "
        "overlap: steady-state forward/backward of different micro-batches as overlapped pairs"
    ),
    options=INTERLEAVED_OPTIONS,
    analytic=_analytic_interleaved,
)
def interleaved_1f1b_overlap(
    stages: int, microbatches: int, chunks_per_rank: int = DEFAULT_CHUNKS, microbatch_group: int | None = None
) -> Schedule:
    v, m = chunks_per_rank, microbatches
    p = stages // v
    # Megatron-core's warm-up plus one with overlap_moe_expert_parallel_comm (get_pp_rank_microbatches).
    ranks = tuple(_paired(*rank_phases(p, v, m, r, extra_warmup=1, n=microbatch_group)) for r in range(p))
    return Schedule("interleaved-1f1b-overlap", stages, m, ranks)
