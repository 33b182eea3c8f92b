"""Interleaved 1F1B (Megatron-LM, Narayanan et al. 2021, "virtual pipeline"), in the
per-rank order of torch.distributed.pipelining's ``ScheduleInterleaved1F1B``.

Placement.  ``stages`` = v * p model stages on p ranks, v = ``chunks_per_rank``
model chunks per rank: stage s lives on rank s % p, so rank r holds chunks
c = 0..v-1 = stages r, r + p, ..., r + (v-1)p.  All micro-batches go in
direction 0.

Order (torch's "flexible" interleaving, any M >= 1 micro-batches):

* the M micro-batches form ``rounds`` = max(1, M // p) rounds of consecutive
  micro-batches; torch needs M % rounds == 0 (round size M / rounds).  For the
  M torch refuses (e.g. M = 9 on 4 ranks) the rounds differ in size by one,
  the larger ones first;
* a rank's forwards walk round by round, and within a round chunk by chunk
  (chunk 0 for every micro-batch of the round, then chunk 1, ...); its
  backwards walk the rounds the same way with the chunks in reverse;
* warm-up: (v - 1) x (size of the first round) + 2 (p - 1 - r) forwards on
  rank r (capped at M v); then one forward and one backward in turn; then the
  remaining backwards.

When M is a multiple of p (rounds of p) this is Megatron-core's
``forward_backward_pipelining_with_interleaving`` order with its default
group size N = p.  v = 1 is 1F1B with 2 (p - 1 - r) warm-up forwards instead
of p - 1 - r.

``microbatch_group`` = N (Megatron-core's ``microbatch_group_size_per_vp_stage``):
the rounds are instead Megatron-core's ``get_schedule_table`` groups, N
consecutive micro-batches each and the remainder M % N last, and the warm-up
is (v - 1) N + 2 (p - 1 - r) (``get_pp_rank_microbatches``).  Megatron-core
refuses N outside [p, M] and a last group of fewer than p; so do we.

Closed form (no communication, uniform per-stage costs f, b): every rank idles
(p - 1)(f + b) = (p - 1)/(v M) x busy (busy = v M (f + b)), the paper's bubble,
whenever M >= p or v = 1, the rounds equal or not.  With M < p and v > 1 a
round is shorter than the pipe: its micro-batches must come round all p ranks
before the rank's next chunk can start, and the ranks idle more (not reported).
Peak activation on rank r: its warm-up forwards plus one (capped at M v).
Any accepted N keeps the bubble at (p - 1)(f + b) and adds (v - 1)(N - p)
stage-activations to every rank's peak over N = p; what a larger N buys is
slack for P2P time (docs/schedules.md).
"""

from __future__ import annotations

from .ir import Op, Schedule
from .family import register
from .closed_form import COMMON_RANGE, common_problem, mean_costs, result
from ..errors import shown

DEFAULT_CHUNKS = 2


def check_interleaved(
    stages: int, microbatches: int, chunks_per_rank: int = DEFAULT_CHUNKS, microbatch_group: int | None = None
) -> str | None:
    v = chunks_per_rank
    if not isinstance(v, int) or v < 1:
        return f"pipeline.chunks_per_rank: needs a whole number >= 1, got {shown(v)}"
    if stages < 1 or stages % v:
        return (
            f"pipeline.stages: needs a positive multiple of chunks_per_rank = {v}, "
            f"got {stages} (stages counts every model chunk: pipeline ranks x chunks_per_rank, "
            f"e.g. {8 * v} for 8 ranks)"
        )
    if microbatches < 1:
        return f"pipeline.microbatches: needs >= 1, got {microbatches}"
    return group_problem(stages // v, microbatches, microbatch_group)


def group_problem(p: int, m: int, n: int | None) -> str | None:
    """Why Megatron-core would refuse microbatch_group = n on p ranks with m micro-batches
    (forward_backward_pipelining_with_interleaving's two checks), or None."""
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"pipeline.microbatch_group: needs a whole number >= 1, got {shown(n)}"
    if not p <= n <= m:
        return (
            f"pipeline.microbatch_group: needs a value between the ranks ({p}) and pipeline.microbatches ({m}), "
            f"as Megatron-core requires, got {n}"
        )
    last = m % n
    if 0 < last < p:
        return (
            f"pipeline.microbatch_group: needs a last group of at least the {p} ranks; {n} leaves a last group "
            f"of {last} micro-batch{'es' if last > 1 else ''}, fewer than the {p} ranks (Megatron-core refuses it: the pipe would stall); use a group size that "
            f"divides {m} or leaves at least {p}"
        )
    return None


def round_sizes(p: int, m: int) -> list[int]:
    """Micro-batches per round: torch's max(1, m // p) equal rounds when they divide m,
    otherwise sizes differing by one, the larger first."""
    rounds = max(1, m // p)
    base, extra = divmod(m, rounds)
    return [base + 1] * extra + [base] * (rounds - extra)


def group_sizes(p: int, m: int, n: int | None = None) -> list[int]:
    """Micro-batches per group: torch's rounds without n, else Megatron-core's
    get_schedule_table groups of n, the remainder m % n last."""
    if n is None:
        return round_sizes(p, m)
    return [n] * (m // n) + ([m % n] if m % n else [])


def warmup_forwards(p: int, v: int, m: int, rank: int, n: int | None = None) -> int:
    # Megatron-core's (v - 1) N + 2 (p - 1 - r); the first group is N long (n <= m).
    return min((v - 1) * group_sizes(p, m, n)[0] + 2 * (p - 1 - rank), m * v)


INTERLEAVED_FORMULA = "(p - 1)(f + b), f, b per stage (= (p-1)(F+B)/v per rank)"
INTERLEAVED_RANGE = f"M >= p or v = 1; {COMMON_RANGE}"


def _analytic(
    stages: int, microbatches: int, costs, chunks_per_rank: int = DEFAULT_CHUNKS, microbatch_group: int | None = None
) -> dict:
    v = chunks_per_rank
    p = stages // v
    f, b, _, _ = mean_costs(costs, stages)
    # The bubble does not depend on N (every accepted N is >= p); the peak does, through the warm-up.
    peak = max(min(warmup_forwards(p, v, microbatches, r, microbatch_group) + 1, microbatches * v) for r in range(p))
    reason = common_problem(costs, stages)
    if reason is None and microbatches < p and v > 1:
        reason = f"microbatches {microbatches} < {p} ranks with {v} chunks per rank (rounds shorter than the pipe)"
    return result((p - 1) * (f + b), peak, INTERLEAVED_FORMULA, INTERLEAVED_RANGE, reason)


def rank_phases(p: int, v: int, m: int, r: int, extra_warmup: int = 0, n: int | None = None):
    """Rank r's (warm-up forwards, steady (forward, backward) pairs, cool-down backwards);
    ``extra_warmup`` more forwards before the steady state (the overlapped variant's);
    ``n`` the microbatch_group (None: torch's rounds)."""
    # The k-th forward (backward) of every rank: (chunk, micro-batch), group by group.
    forwards: list[tuple[int, int]] = []
    backwards: list[tuple[int, int]] = []
    first = 0
    for size in group_sizes(p, m, n):
        mbs = range(first, first + size)
        forwards += [(c, mb) for c in range(v) for mb in mbs]
        backwards += [(c, mb) for c in reversed(range(v)) for mb in mbs]
        first += size
    warmup = min(warmup_forwards(p, v, m, r, n) + extra_warmup, m * v)
    fwd = [Op("F", mb, c * p + r) for c, mb in forwards]
    bwd = [Op("B", mb, c * p + r) for c, mb in backwards]
    steady = list(zip(fwd[warmup:], bwd))
    return fwd[:warmup], steady, bwd[len(steady) :]


INTERLEAVED_OPTIONS = ("chunks_per_rank", "microbatch_group")
INTERLEAVED_CONSTRAINTS = (
    "stages a multiple of chunks_per_rank (default 2); ranks = stages / chunks_per_rank; microbatches >= 1; "
    "microbatch_group (optional, Megatron-core's order) between ranks and microbatches, leaving no last group "
    "smaller than ranks"
)


@register(
    "interleaved-1f1b",
    check=check_interleaved,
    constraints=INTERLEAVED_CONSTRAINTS,
    description=(
        "Interleaved 1F1B (Megatron-LM virtual pipeline) in torch.distributed.pipelining's order: "
        "v chunks per rank, stage s on rank s % p, any number of micro-batches"
    ),
    options=INTERLEAVED_OPTIONS,
    analytic=_analytic,
)
def interleaved_1f1b(
    stages: int, microbatches: int, chunks_per_rank: int = DEFAULT_CHUNKS, microbatch_group: int | None = None
) -> Schedule:
    v, m = chunks_per_rank, microbatches
    p = stages // v
    ranks = []
    for r in range(p):
        warm, steady, cool = rank_phases(p, v, m, r, n=microbatch_group)
        ranks.append(tuple(warm + [op for pair in steady for op in pair] + cool))
    return Schedule("interleaved-1f1b", stages, m, tuple(ranks))
