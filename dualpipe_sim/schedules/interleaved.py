"""Interleaved 1F1B (Megatron-LM, Narayanan et al. 2021, "virtual pipeline").

Placement.  ``stages`` = v * p model stages on p ranks, v = ``chunks_per_rank``
model chunks per rank: stage s lives on rank s % p, so rank r holds chunks
c = 0..v-1 = stages r, r + p, ..., r + (v-1)p.  All micro-batches go in
direction 0.

Order: Megatron-LM's ``forward_backward_pipelining_with_interleaving`` (the
classic form, micro-batch group size = p), transcribed per rank:

* every rank walks m*v *virtual* micro-batches k = 0..mv-1; in groups of p*v,
  forward k runs chunk c = (k mod pv) // p on micro-batch
  (k // pv) * p + k mod p; backward k runs chunk v-1-c on that micro-batch;
* warm-up: (p - r - 1) * 2 + (v - 1) * p forwards (capped at mv); when m == p
  Megatron runs every forward first (all warm-up);
* steady state: forward k + warm-up, then backward k, until the forwards run
  out; cool-down: the remaining backwards.

v = 1 is Megatron's non-interleaved schedule (warm-up p - r - 1), i.e. 1F1B.

Closed form (zero communication, uniform per-stage costs f, b): every rank
idles (p - 1)(f + b) = (p - 1)(F + B)/v with F = v f, B = v b the per-rank
costs of a whole micro-batch; peak activation on rank r is the warm-up count
plus one, at most (p - r - 1) * 2 + (v - 1) * p + 1 stage-activations.
"""

from __future__ import annotations

from ..costs import mean_costs
from ..ir import Op, Schedule
from ..registry import register
from .closed_form import COMMON_RANGE, common_problem, result

DEFAULT_CHUNKS = 2


def _check(stages: int, microbatches: int, chunks_per_rank: int = DEFAULT_CHUNKS) -> str | None:
    v = chunks_per_rank
    if not isinstance(v, int) or v < 1:
        return f"pipeline.chunks_per_rank must be a whole number >= 1 for interleaved-1f1b, got {v!r}"
    if stages < 1 or stages % v:
        return (
            f"pipeline.stages must be a positive multiple of chunks_per_rank = {v} for interleaved-1f1b, "
            f"got {stages}"
        )
    p = stages // v
    if microbatches < 1 or microbatches % p:
        return (
            f"pipeline.microbatches must be a positive multiple of the {p} ranks "
            f"(stages / chunks_per_rank) for interleaved-1f1b, got {microbatches}"
        )
    return None


def _warmup(p: int, v: int, m: int, rank: int) -> int:
    total = m * v
    if v == 1:
        return min(p - rank - 1, total)
    if m == p:
        return total
    return min((p - rank - 1) * 2 + (v - 1) * p, total)


INTERLEAVED_FORMULA = "(p - 1)(f + b), f, b per stage (= (p-1)(F+B)/v per rank)"
INTERLEAVED_RANGE = f"microbatches a multiple of the ranks; {COMMON_RANGE}"


def _analytic(stages: int, microbatches: int, costs, chunks_per_rank: int = DEFAULT_CHUNKS) -> dict:
    v = chunks_per_rank
    p = stages // v
    f, b, _, _ = mean_costs(costs, stages)
    peak = max(min(_warmup(p, v, microbatches, r) + 1, microbatches * v) for r in range(p))
    reason = common_problem(costs, stages)
    return result((p - 1) * (f + b), peak, INTERLEAVED_FORMULA, INTERLEAVED_RANGE, reason)


@register(
    "interleaved-1f1b",
    check=_check,
    constraints=(
        "stages a multiple of chunks_per_rank (default 2); ranks = stages / chunks_per_rank; "
        "microbatches a multiple of the rank count"
    ),
    description="Interleaved 1F1B (Megatron-LM virtual pipeline): v chunks per rank, stage s on rank s % p",
    options=("chunks_per_rank",),
    analytic=_analytic,
)
def interleaved_1f1b(stages: int, microbatches: int, chunks_per_rank: int = DEFAULT_CHUNKS) -> Schedule:
    v, m = chunks_per_rank, microbatches
    p = stages // v
    total = m * v

    def virtual(k: int, forward: bool) -> tuple[int, int]:
        """(model stage, micro-batch) of the k-th forward or backward on rank r (stage = c*p + r)."""
        in_group = k % (p * v)
        chunk = in_group // p
        if not forward:
            chunk = v - 1 - chunk
        return chunk, (k // (p * v)) * p + in_group % p

    ranks = []
    for r in range(p):
        warmup = _warmup(p, v, m, r)
        ops: list[Op] = []

        def fwd(k: int) -> None:
            c, mb = virtual(k, True)
            ops.append(Op("F", mb, c * p + r))

        def bwd(k: int) -> None:
            c, mb = virtual(k, False)
            ops.append(Op("B", mb, c * p + r))

        for k in range(warmup):
            fwd(k)
        for k in range(total - warmup):
            fwd(k + warmup)
            bwd(k)
        for k in range(total - warmup, total):
            bwd(k)
        ranks.append(tuple(ops))
    return Schedule("interleaved-1f1b", stages, m, tuple(ranks))
