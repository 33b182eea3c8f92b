"""The host's kernel launches at a Megatron-core step's end, counted from the code; not costed.

Outside the whole-iteration CUDA graph the step's end runs eagerly, and two host reads drain the GPU's queue: the
loss reduction's ``> 0`` (NeMo's ``MaskedTokenLossReduction``) and the clip norm's ``.item()``
(``get_grad_norm_fp32``).  After each, the GPU waits for every launch the host has not yet made.  This counts those
launches per data-parallel rank, from Megatron-core 25.09-alpha.rc1 (d339190) and Transformer Engine release_v2.8
(40c69e7); docs/validation.md, "What one 8B step runs beyond its forward", has the table and why none is costed (no
measured host time per launch for this stack was reached):

* after the loss's read, up to the norm's ``.item()``: one ``.float()`` per gradient piece in the rank's shard
  (distrib_optimizer.py ``_copy_model_grads_to_main_grads``), then the norm: ``torch.zeros`` (overflow buffer),
  TE's ``at::zeros({320})``, the l2norm kernel per multi-tensor launch, its ``cleanup`` kernel, ``** 2``, the
  all-reduce and the ``.item()`` copy (clip_grads.py; TE ``multi_tensor/l2norm.cpp``, ``l2norm.cu``);
* after the ``.item()``: TE's ``FusedAdam`` per parameter group (``multi_tensor_adam`` over grad, param, exp_avg,
  exp_avg_sq: depth 4), the FP8 weights' cast (``cast_master_weights_to_fp8``: step_figures.FP8_SHARD_KERNELS per
  FP8 piece, ``fp8_cast_fixed_launches`` and the amax all-reduce), one ``copy_`` per 16-bit piece
  (``_copy_main_params_to_model_params``).  The clip's scale (only when the norm exceeds the clip) is left out.

The shard: the distributed optimizer cuts each bucket into one contiguous range per rank of data x context; a
parameter with elements in the rank's range is one piece (ranges taken without Megatron's 64-element parameter
padding).  Buckets as ddp_buckets cuts them; the routed experts' buffer is not counted (None for MoE models).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate

from . import ddp_buckets
from . import step_figures as sf

CHUNK = 2048 * 32  # elements a block takes: TE optimizers/multi_tensor_apply.py MultiTensorApply(2048 * 32)
# TE common/multi_tensor/multi_tensor_apply.cuh depth_to_max_tensors / depth_to_max_blocks, by list count
MAX_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30, 6: 24}
MAX_BLOCKS = 320
NORM_FIXED = 7  # torch.zeros, at::zeros({320}), cleanup, ** 2, all_reduce, .item()'s copy; + the l2norm launches
FP8_AMAX_REDUCE = 1  # cast_master_weights_to_fp8's all_reduce of the packed amaxes


def multi_tensor_launches(sizes: list[int], depth: int) -> int:
    """Kernels one multi_tensor_applier call launches over tensors of ``sizes`` elements: TE's loop, which
    launches when the list holds depth_to_max_tensors tensors (at a tensor's last chunk), when it holds
    MAX_BLOCKS chunks, and at the last chunk; a tensor cut by a launch carries on into the next."""
    launches = blocks = held = 0
    for t, n in enumerate(sizes):
        held += 1
        chunks = -(-n // CHUNK)
        for c in range(chunks):
            blocks += 1
            last = c == chunks - 1
            if (held == MAX_TENSORS[depth] and last) or blocks == MAX_BLOCKS or (t == len(sizes) - 1 and last):
                launches += 1
                blocks = 0
                held = 0 if last else 1
    return launches


@dataclass(frozen=True)
class Piece:
    """A parameter's elements in one rank's shard."""

    size: int
    fp8: bool  # an FP8 parameter (cast by Transformer Engine, not copied)
    decay: bool  # in the weight-decay group (Megatron: not a bias, not 1-D)


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
                out.append(Piece(n, fp8[i], decay[i]))
    return out


@dataclass(frozen=True)
class Launches:
    """One rank's launches between the step's host reads (the rank with the most)."""

    after_loss: int  # from the loss's > 0 read to the norm's .item(): the GPU waits for each
    after_norm: int  # from the .item() to the optimizer's end: behind the Adam kernels' GPU time
    pieces: int  # gradient pieces in the rank's shard
    fp8_pieces: int
    adam: int  # multi_tensor_adam launches
    norm: int  # multi_tensor_l2norm launches


def _buffers(scenario, st, s: int, where, buckets: int) -> list[tuple[list[int], list[bool], list[bool], list]]:
    """Per gradient buffer of stage copy ``s``: its parameters' sizes, FP8 and decay flags, and bucket bounds."""
    cfg, sh = st.cfg, st.sharding
    sizes = ddp_buckets.stage_zero_tensors(cfg, where, sh.tensor)
    linears = ddp_buckets.stage_zero_linears(cfg, where)
    decays = ddp_buckets.stage_zero_decays(cfg, where)
    members = [[i for i, lin in enumerate(linears) if lin], [i for i, lin in enumerate(linears) if not lin]] \
        if sh.fp8_params else [list(range(len(sizes)))]
    given = scenario.step.grad_sync_buckets != "derived"
    out = []
    for k, idx in enumerate(m for m in members if m):
        own = [sizes[i] for i in idx]
        if given and k == 0:  # the given count, as equal buckets (of the FP8 buffer with FP8 parameters)
            cut = ddp_buckets._equal(own, list(range(len(own))), buckets)
        elif s == 0 and not given:  # Megatron's fill rule on the first chunk; every other chunk is one bucket
            cut = ddp_buckets._filled(own, list(range(len(own))), ddp_buckets.bucket_size(sh.data))
        else:
            cut = [(0, sum(own), 1)]
        out.append((own, [linears[i] and sh.fp8_params for i in idx], [decays[i] for i in idx],
                    [(a, n) for a, n, _ in cut]))
    return out


def count(scenario, derived) -> Launches | None:
    """The launches of the pipeline rank holding stage 0, on its data-parallel rank with the most; None where the
    step's end is not Megatron-core's distributed optimizer (sf.megatron_core_optimizer, ZeRO 1+), without the
    kernel-level model, or for MoE models (the experts' buffer is not counted)."""
    st = derived.setup
    sh, cfg = st.sharding, st.cfg
    if not sf.megatron_core_optimizer(scenario) or st.rates is None or sh.zero < 1 or cfg.moe:
        return None
    held = sf._stage_ranks(scenario) or [{s} for s in range(len(st.stages))]
    rank = min(held[0]) if held[0] else 0
    mine = [s for s, ranks in enumerate(held) if rank in ranks] or [0]
    buckets = ddp_buckets.per_stage(scenario, derived)
    buffers = {s: _buffers(scenario, st, s, st.stages[s], buckets[s]) for s in mine}
    recipe = scenario.model.fp8_recipe
    # overlap_param_gather_with_optimizer_step: the first chunk's optimizer apart (optimizer/__init__.py)
    split = scenario.step.overlap_param_gather_with_optimizer_step and len(mine) > 1
    optimizers = [mine[:1], mine[1:]] if split else [mine]
    fp8_weights = [sum(sum(fp8) for s in chunks for _, fp8, _, _ in buffers[s]) for chunks in optimizers]
    best = None
    for r in range(sh.data):
        own = [[p for s in chunks for sizes, fp8, decay, bounds in buffers[s]
                for p in pieces(sizes, bounds, sh.data, r, fp8, decay)] for chunks in optimizers]
        every = [p for o in own for p in o]
        norm = multi_tensor_launches([p.size for p in every if p.decay] + [p.size for p in every if not p.decay], 1)
        # FusedAdam: one multi_tensor_adam call per parameter group (decay, no decay) of each optimizer
        adam = sum(multi_tensor_launches([p.size for p in o if p.decay is d], 4) for o in own for d in (True, False))
        fp8_own = sum(p.fp8 for p in every)
        # each optimizer casts all its FP8 weights' scales (pieces or not), then its pieces
        cast = sum(sf.fp8_cast_fixed_launches(recipe, n) + FP8_AMAX_REDUCE for n in fp8_weights if n)
        cast += fp8_own * sf.FP8_SHARD_KERNELS[recipe]
        got = Launches(len(every) + NORM_FIXED + norm, adam + cast + len(every) - fp8_own, len(every), fp8_own,
                       adam, norm)
        if best is None or got.after_loss + got.after_norm > best.after_loss + best.after_norm:
            best = got
    return best
