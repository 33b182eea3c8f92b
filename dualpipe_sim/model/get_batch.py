"""Megatron's ``get_batch``: what loading one micro-batch runs on a rank, shared by the runtimes that call it each
micro-batch (deepspeed_pipe.py: DeepSpeed's ``LoadMicroBatch`` on the first and last stages; megatron_lm.py:
Megatron-LM 2021/2022's ``forward_step`` on every stage).

Megatron-LM 6985e58 / d898a89 ``pretrain_gpt.py`` ``get_batch`` (Megatron-DeepSpeed's ``get_batch_pipe`` the same),
``megatron/mpu/data.py`` ``broadcast_data`` and ``megatron/utils.py`` ``get_ltor_masks_and_position_ids``: the sizes
and then the tokens broadcast over the tensor group from its rank 0, the labels and tokens sliced into copies, the
s x s causal mask built in fp32 and compared (``ones``, ``tril``, ``< 0.5``), the loss mask and the positions.  Host
syncs (host.replay): ``torch.cuda.LongTensor(sizes)`` and rank 0's ``.cuda()`` are pageable copies PyTorch follows
with ``cudaStreamSynchronize``; ``sizes_cuda.cpu()`` reads the device.
"""

from __future__ import annotations

from . import host
from .kernels import Table

SIZES_BYTES = 5 * 8  # megatron/mpu/data.py _MAX_DATA_DIM int64 sizes for the one key ('text')
LOAD_OPS = 1 + 2 + 5  # the tokens' broadcast, the two copies, the masks' (ones, tril, < 0.5) and positions' kernels


def load(tb: Table, comp: str, idle: bool = False, fn: str = "get_batch") -> list[host.Step]:
    """``get_batch``'s rows on tensor rank 0 (the others wait for its copy in the broadcast), charged to ``comp``, and
    its host steps from the sizes' copy to the masks (no sync after them); ``idle``: the queue is empty before the
    sizes' copy (a sync just returned), so its launch is not hidden under queued work."""
    lay = tb.lay
    n, s, t = lay.tokens, lay.seq, lay.tensor
    mask = float(s * s)  # [1, 1, s, s]: one mask for the micro-batch (no --reset-attention-mask)
    # a sub-latency broadcast is timed as the smallest measured NVLink collective (collectives.time)
    sizes = tb.comm(f"sizes broadcast ({fn})", comp, "all_gather", SIZES_BYTES, t, "nvlink")
    tokens = tb.comm(f"tokens broadcast ({fn})", comp, "all_gather", lay.micro_batch * (s + 1) * 8, t, "nvlink")
    g = tb.memory("labels and tokens copies", comp, 2 * 2 * n * 8, 2)
    # ones (fp32 write 4), tril (4 + 4), < 0.5 (4 + 1) a mask element; the loss mask ones, the positions arange
    g += tb.memory("causal mask built (ones, tril, < 0.5)", comp, 17 * mask, 3)
    g += tb.memory("loss mask and positions", comp, 4 * n + 8 * s, 2)
    return [host.Step("sizes to the GPU (H2D copy, synchronised)", int(idle), 0.0, sync=True),
            host.Step("sizes broadcast, .cpu()", 2, sizes, sync=True),
            host.Step("tokens .cuda() (tensor rank 0, synchronised)", 1, 0.0, sync=True),
            host.Step("tokens broadcast, copies, masks, positions", LOAD_OPS, tokens + g)]  # fmt: skip


def vocab_masks(tb: Table) -> list[host.Step]:
    """The first stage's embedding after the load: with tensor parallelism its six launch-bound vocabulary-mask
    kernels (kernels.embedding) run at the host's pace on the queue the load's syncs emptied."""
    return [host.Step("vocabulary mask kernels", 6, 6 * tb.r.floor)] if tb.lay.tensor > 1 else []
