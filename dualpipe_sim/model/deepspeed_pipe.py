"""What DeepSpeed v0.6.5's pipeline engine and Megatron-DeepSpeed's GPTModelPipe run each micro-batch besides the
layers (``step.runtime = "deepspeed-bf16"``, BLOOM's runtime; docs/model.md, "DeepSpeed's pipeline engine, micro-batch
by micro-batch").

Read from microsoft/DeepSpeed v0.6.5 (8164ea9) ``runtime/pipe/engine.py`` and ``runtime/utils.py``
(``PartitionedTensor``), and bigscience-workshop/Megatron-DeepSpeed 0f23a729 (the tr11 README's ``ds_ckpt_reshape``
branch as merged; the same files at 8387ae1) ``pretrain_gpt.py`` (``get_batch_pipe``), ``megatron/mpu/data.py``
(``broadcast_data``), ``megatron/utils.py`` (``get_ltor_masks_and_position_ids``), ``megatron/mpu/layers.py``
(``VocabParallelEmbedding.forward``) and ``megatron/model/gpt_model.py`` (``GPTModelPipe``):

* the first and the last stage load every micro-batch (``LoadMicroBatch`` -> ``get_batch_pipe``, get_batch.py): the
  sizes and the tokens broadcast over the tensor group, the labels and tokens sliced into copies, the s x s causal
  mask built in fp32 and compared (``ones``, ``tril``, ``< 0.5``), the loss mask and positions; the first stage
  clones the inputs twice (``LoadMicroBatch``, then ``_exec_forward_pass``) and its embedding checks
  ``torch.any(ids >= V)``;
* the attention mask travels with the activation (GPTModelPipe has no precomputed ``args.attn_mask``): each stage
  boundary sends it (one byte an element) after the activation, every receiver clones it twice;
* with tensor parallelism the boundary tensors are ``PartitionedTensor``\\ s: the sender clones its 1/t part and sends
  a meta tensor first; the receiver clones what it received, clones it again, and ``full()`` zero-fills a whole
  buffer, copies its part in, all-gathers (charged with the P2P: derive.p2p_ms) and clones the whole; before its
  backward a sender rebuilds its own output the same way (its all-gather charged here) and the gradient it received.

Host syncs (each costed by host.replay as the MoE forward's are): a CUDA tensor made from a Python list
(``torch.cuda.LongTensor(sizes)``, ``PartitionedTensor.to_meta``) or moved there (``.cuda()``) is a pageable
copy that PyTorch follows with ``cudaStreamSynchronize`` (``copy_kernel_cuda``: ``memcpy_and_sync`` unless
non-blocking); ``.cpu()``, ``.tolist()`` (``PartitionedTensor.from_meta``) and a CUDA bool in an ``if`` read the device.
"""

from __future__ import annotations

from dataclasses import replace

from . import collectives, get_batch, host
from .kernels import Kernel, Table

# PartitionedTensor.to_meta of a 3-D tensor: [ndims, 3 sizes, num_parts, rank, the t + 1 partition offsets], int64
META_FIXED = 1 + 3 + 2 + 1


def meta_bytes(t: int) -> int:
    """Bytes of a PartitionedTensor's meta tensor over ``t`` ranks."""
    return (META_FIXED + t) * 8


def rows(tb: Table, first: bool, last: bool) -> list[Kernel]:
    """The engine's per-micro-batch rows of a stage (``first``: it holds the embedding; ``last``: the head), forward
    rows in ``mlp_forward``, backward rows in ``mlp_backward_input``, the host's share as kind ``host``."""
    lay, cfg = tb.lay, tb.cfg
    n, s, t = lay.tokens, lay.seq, lay.tensor
    whole = n * cfg.hidden_size * lay.act_bytes  # the boundary activation (or its gradient), every rank whole
    part = whole / t
    mask = float(s * s)  # [1, 1, s, s] bool: one mask for the micro-batch (no reset_attention_mask)
    fw, bw = "mlp_forward", "mlp_backward_input"
    parted = t > 1  # is_pipe_partitioned / is_grad_partitioned: is_model_parallel
    # host segments: each starts at a sync (its own launch hidden under the queued work: 0 calls) and ends where a
    # long kernel takes over again
    fwd: list[list[host.Step]] = []
    back: list[list[host.Step]] = []
    if first or last:
        seg = get_batch.load(tb, fw, fn="get_batch_pipe")
        if first:  # tokens, positions, mask cloned by LoadMicroBatch and again by _exec_forward_pass
            g = tb.memory("input clones (load and forward)", fw, 2 * (2 * (16 * n) + 2 * mask), 6)
            # VocabParallelEmbedding: if torch.any(input_ >= num_embeddings): raise  (read 8, write 1; read 1)
            g += tb.memory("input ids checked (>= V, any)", fw, 10 * n, 2)
            # the clones, the check's two kernels, the bool's device-to-host copy; then the bool read: a sync
            seg[-1] = replace(seg[-1], label=seg[-1].label + ", clones, id check", ops=seg[-1].ops + 6 + 2 + 1,
                              seconds=seg[-1].seconds + g, sync=True)  # fmt: skip
            seg += get_batch.vocab_masks(tb)
        fwd.append(seg)
    if not first:  # RecvActivation's clones, _exec_forward_pass's clones; then from_meta's tolist and full()
        tb.memory("received activation and mask clones (recv, forward)", fw, 2 * (2 * part + 2 * mask),
                  4 + 2 * parted)  # fmt: skip
        if parted:
            g = _full(tb, "received activation full()", fw, whole, part, False)
            step = host.Step("meta.tolist() (from_meta)", 1, 0.0, sync=True)
            if last:  # after LoadMicroBatch's kernels in the same stretch
                fwd[-1].append(step)
                fwd[-1].append(host.Step("full()", 4, g))
            else:
                fwd.append([replace(step, ops=0), host.Step("full()", 4, g)])
    if not last:  # the output partitioned and sent: meta (when parted), part, then the mask
        if parted:
            tb.memory("output partition clone", fw, 2 * part)
            _send(tb, "meta send", fw, meta_bytes(t))
            fwd.append([host.Step("meta to the GPU (to_meta, synchronised)", 0, 0.0, sync=True)])
        _send(tb, "attention mask send", fw, mask)
    if parted and not last:  # _exec_backward_pass: the own output rebuilt, then the received gradient
        tb.memory("gradient meta buffer zeroed (recv)", bw, meta_bytes(t))
        g1 = _full(tb, "own output full() before the backward", bw, whole, part, True)
        g2 = _full(tb, "received gradient full()", bw, whole, part, False)
        back.append([host.Step("own meta.tolist()", 0, 0.0, sync=True), host.Step("full() (own output)", 4, g1),
                     host.Step("gradient meta.tolist()", 1, 0.0, sync=True), host.Step("full() (gradient)", 4, g2)])
    if parted and not first:  # _exec_send_grads
        tb.memory("input gradient partition clone", bw, 2 * part)
        _send(tb, "gradient meta send", bw, meta_bytes(t))
        back.append([host.Step("meta to the GPU (to_meta, synchronised)", 0, 0.0, sync=True)])
    tb.host_share("DeepSpeed pipe: host launches and syncs", fw, fwd)
    tb.host_share("DeepSpeed pipe: host launches and syncs", bw, back)
    return tb.rows


def _full(tb: Table, name: str, comp: str, whole: float, part: float, gather: bool) -> float:
    """PartitionedTensor.full(): zeros of the whole, the own part copied in, the all-gather (``gather``: charged
    here; else with the P2P, derive.p2p_ms), a clone of the whole; returns the GPU seconds."""
    g = tb.memory(f"{name}: zeros, copy, clone", comp, whole + 2 * part + 2 * whole, 3)
    if gather:
        g += tb.comm(f"{name}: all-gather", comp, "all_gather", whole, tb.lay.tensor, "nvlink")
    return g


def _send(tb: Table, name: str, comp: str, nbytes: float) -> None:
    """One more blocking ``dist.send`` to the pipeline neighbour (on another node: the NIC, as derive.p2p_ms), whole
    on the sender's pass: the receiver waits for it as for the activation sent before it."""
    secs = collectives.p2p(nbytes, tb.r, "nic")
    tb.rows.append(Kernel(f"DeepSpeed pipe: {name}", comp, "comm", f"send {nbytes / 1e6:.3g} MB (nic)", 0.0, nbytes,
                          secs, "communication"))  # fmt: skip
