"""The host's kernel launches at a Megatron-core step's end, counted from the code; their host time not costed.

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
  exp_avg_sq: depth 4), the FP8 weights' cast (``cast_master_weights_to_fp8``: fp8_step_casts.FP8_SHARD_KERNELS per
  FP8 piece, ``fp8_cast_fixed_launches`` and the amax all-reduce), one ``copy_`` per 16-bit piece
  (``_copy_main_params_to_model_params``).  The clip's scale (only when the norm exceeds the clip) is left out.

The shard's pieces: shard_pieces.py (the routed experts' buffer is not counted: None for MoE models).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ddp_buckets, derive
from . import fp8_step_casts
from .shard_pieces import Piece, buffers, pieces, rank_pieces  # noqa: F401 (Piece, pieces: this module's tests)

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
class Launches:
    """One rank's launches between the step's host reads (the rank with the most)."""

    after_loss: int  # from the loss's > 0 read to the norm's .item(): the GPU waits for each
    after_norm: int  # from the .item() to the optimizer's end: behind the Adam kernels' GPU time
    pieces: int  # gradient pieces in the rank's shard
    fp8_pieces: int
    adam: int  # multi_tensor_adam launches
    norm: int  # multi_tensor_l2norm launches


def count(scenario, derived) -> Launches | None:
    """The launches of the pipeline rank holding stage 0, on its data-parallel rank with the most; None where the
    step's end is not Megatron-core's distributed optimizer (optimizer_step.megatron_core_optimizer, ZeRO 1+), without the
    kernel-level model, or for MoE models (the experts' buffer is not counted)."""
    if not fp8_step_casts.shard_counted(scenario, derived.setup):
        return None
    st = derived.setup
    held = derive.stage_ranks(scenario) or [{s} for s in range(len(st.stages))]
    rank = min(held[0]) if held[0] else 0
    mine = [s for s, ranks in enumerate(held) if rank in ranks] or [0]
    buckets = ddp_buckets.per_stage(scenario, derived)
    fp8_weights_of = {s: sum(sum(fp8) for _, fp8, _, _ in buffers(scenario, st, s, st.stages[s], buckets[s]))
                      for s in mine}
    recipe = scenario.model.fp8_recipe
    # overlap_param_gather_with_optimizer_step: the first chunk's optimizer apart (optimizer/__init__.py)
    split = scenario.step.overlap_param_gather_with_optimizer_step and len(mine) > 1
    optimizers = [mine[:1], mine[1:]] if split else [mine]
    fp8_weights = [sum(fp8_weights_of[s] for s in chunks) for chunks in optimizers]
    best = None
    for by_copy in rank_pieces(scenario, derived, mine):
        own = [[p for s in chunks for p in by_copy[s]] for chunks in optimizers]
        every = [p for o in own for p in o]
        norm = multi_tensor_launches([p.size for p in every if p.decay] + [p.size for p in every if not p.decay], 1)
        # FusedAdam: one multi_tensor_adam call per parameter group (decay, no decay) of each optimizer
        adam = sum(multi_tensor_launches([p.size for p in o if p.decay is d], 4) for o in own for d in (True, False))
        fp8_own = sum(p.fp8 for p in every)
        # each optimizer casts all its FP8 weights' scales (pieces or not), then its pieces
        cast = sum(fp8_step_casts.fp8_cast_fixed_launches(recipe, n) + FP8_AMAX_REDUCE for n in fp8_weights if n)
        cast += fp8_own * fp8_step_casts.FP8_SHARD_KERNELS[recipe]
        got = Launches(len(every) + NORM_FIXED + norm, adam + cast + len(every) - fp8_own, len(every), fp8_own,
                       adam, norm)
        if best is None or got.after_loss + got.after_norm > best.after_loss + best.after_norm:
            best = got
    return best
