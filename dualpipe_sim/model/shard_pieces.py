"""The distributed optimizer's shard of a rank as pieces of parameters.

Megatron-core's distributed optimizer (25.09-alpha.rc1 d339190, ``distrib_optimizer.py``) cuts each gradient bucket
into one contiguous range per rank of data x context; a parameter with elements in the rank's range is one piece
(ranges taken without Megatron's 64-element parameter padding).  Buckets as ddp_buckets cuts them; the routed
experts' buffer is not counted (callers keep MoE models out).  step_launches counts the host's launches over these
pieces; fp8_step_casts.fp8_master_cast_ms launches the FP8 cast's per-weight kernels only for weights with a piece.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, replace
from itertools import accumulate

from . import ddp_buckets


@dataclass(frozen=True)
class Piece:
    """A parameter's elements in one rank's shard."""

    size: int
    fp8: bool  # an FP8 parameter (cast by Transformer Engine, not copied)
    decay: bool  # in the weight-decay group (Megatron: not a bias, not 1-D)
    weight: object = field(default=None, compare=False)  # which parameter it is a piece of


def pieces(sizes: list[int], bounds: list[tuple[int, int]], ranks: int, rank: int,
           fp8: list[bool], decay: list[bool]) -> list[Piece]:
    """The pieces of rank ``rank`` of ``ranks``: parameters of ``sizes`` (one buffer, forward order, back to
    back) cut into buckets at ``bounds`` ((first element, elements) each), each bucket's range split evenly."""
    starts = [0, *accumulate(sizes)]
    out = []
    for start, length in bounds:
        lo, hi = start + rank * length // ranks, start + (rank + 1) * length // ranks
        for i in range(max(0, bisect_right(starts, lo) - 1), bisect_left(starts, hi)):  # the tensors it meets
            n = min(starts[i + 1], hi) - max(starts[i], lo)
            if n > 0:
                out.append(Piece(n, fp8[i], decay[i], i))
    return out


def buffers(scenario, st, s: int, where, buckets: int) -> list[tuple[list[int], list[bool], list[bool], list]]:
    """Per gradient buffer of stage copy ``s``: its parameters' sizes, FP8 and decay flags, and bucket bounds."""
    cfg, sh = st.cfg, st.sharding
    sizes = ddp_buckets.stage_zero_tensors(cfg, where, sh.tensor)
    linears = ddp_buckets.stage_zero_linears(cfg, where)
    decays = ddp_buckets.stage_zero_decays(cfg, where)
    members = [[i for i, lin in enumerate(linears) if lin], [i for i, lin in enumerate(linears) if not lin]] \
        if sh.fp8_params else [list(range(len(sizes)))]
    given = scenario.step.grad_sync_buckets != "derived"
    size, alone = ddp_buckets.fill_size(scenario.step, s, sh.data), ddp_buckets.alone(cfg, where, sh)
    out = []
    for k, idx in enumerate(m for m in members if m):
        own = [sizes[i] for i in idx]
        if given and k == 0:  # the given count, as equal buckets (of the FP8 buffer with FP8 parameters)
            cut = ddp_buckets._equal(own, list(range(len(own))), buckets)
        elif not given:  # Megatron's fill rule where its DDP buckets (ddp_buckets.fill_size), else one bucket
            mine = frozenset(j for j, i in enumerate(idx) if i in alone)  # a shared embedding, as this buffer numbers it
            cut = ddp_buckets.fill(own, list(range(len(own))), size, mine)
        else:
            cut = [(0, sum(own), 1)]
        out.append((own, [linears[i] and sh.fp8_params for i in idx], [decays[i] for i in idx],
                    [(a, n) for a, n, _ in cut]))
    return out


def rank_pieces(scenario, derived, mine: list[int]) -> list[dict[int, list[Piece]]]:
    """Per data-parallel rank, the pieces of each stage copy in ``mine`` (one pipeline rank's copies); a piece's
    ``weight`` is (buffer, parameter) within its copy."""
    st = derived.setup
    buckets = ddp_buckets.per_stage(scenario, derived)
    cut = {s: buffers(scenario, st, s, st.stages[s], buckets[s]) for s in mine}
    return [{s: [replace(p, weight=(k, p.weight)) for k, (sizes, fp8, decay, bounds) in enumerate(cut[s])
                 for p in pieces(sizes, bounds, st.sharding.data, r, fp8, decay)]
             for s in mine} for r in range(st.sharding.data)]


def fp8_pieces(scenario, derived, held: list[set[int]]) -> list[int]:
    """Per stage copy, the FP8 weights with a piece in the shard of the data-parallel rank with the most of them over
    all the copies its pipeline rank holds (``held``: the pipeline ranks holding each copy): the weights
    cast_master_weights_to_fp8 casts there (one without a piece launches nothing of its own).  A weight counts once:
    Megatron keeps a parameter in one bucket, so its shard on a rank is one range; the model's equal buckets (a given
    step.grad_sync_buckets) may cut it."""
    out = [0] * len(derived.setup.stages)
    for rank in sorted(set().union(*held)):
        mine = [s for s, ranks in enumerate(held) if rank in ranks]
        per_rank = [{s: len({p.weight for p in own[s] if p.fp8}) for s in mine}
                    for own in rank_pieces(scenario, derived, mine)]
        most = max(per_rank, key=lambda got: sum(got.values()))
        for s in mine:
            out[s] = max(out[s], most[s])
    return out
