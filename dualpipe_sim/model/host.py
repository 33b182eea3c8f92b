"""The host's share of an MoE layer's forward: kernel launches from Python and the syncs that drain the queue.

PyTorch runs eagerly: the CPU spends some microseconds on every call that launches a kernel, and the GPU runs
what was queued.  Without a sync the host races ahead and its time hides under the GPU's.  Megatron-core's
MoE dispatchers make the host wait for the device in every forward (docs/model.md, "Host syncs in the MoE
layer"), so after each sync the queue is empty: the GPU idles while the host launches the next kernels,
and a stretch of short kernels runs at the host's pace.

``forward_excess`` replays one forward in launch order, from one layer's last sync to the next layer's:
each step is issued ``ops x per_op`` after the one before it and starts on the GPU when both it is issued
and the GPU is free; at a sync the host waits for the GPU, then for the round trip.  What this adds
beyond the kernels' own time is the host's share.  Figures (docs/model.md, "Host syncs in the MoE layer"):

* per launched op, 13.5 us: ``torch.nn.Linear`` forward, BF16, CPU time per call on a DGX H100 (Xeon
  Platinum 8480C), NVIDIA/TransformerEngine#2053 (13.48 us);
* the wait at a sync, 7 us beyond the launch: an empty kernel launched and synchronised takes 9.65 us on
  A100 against 2.7 us launched alone (CSCS ReFrame ``gpu_kernel_latency`` references, ault:amda100);
  NVIDIA's GDRCopy README gives a cudaMemcpy 6-7 us of overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNC_WAIT = 9.65e-6 - 2.7e-6  # seconds a host sync adds beyond the launch of the op it waits for
HOST_OP_US = 13.5  # model.host_overhead_us default: one PyTorch call that launches a kernel, DGX H100 host

# Kernel rows of kernels.py and how many PyTorch calls (kernel launches or stream-event calls) each is in
# Megatron-core @ 1e057005 with Transformer Engine; rows not listed are one call.
_CALLS = {
    "rope": 2,  # q and k, one fused RoPE call each
    "q / k norms": 2,  # Qwen3's per-head q and k RMSNorms: a TE norm call each
    "router": 3,  # moe/router.py gating: input.to(fp32), weight.to(fp32), linear (--moe-router-dtype fp32)
    # moe_utils.topk_softmax_with_capacity: topk, softmax, zeros_like + scatter (probs), zeros_like + int +
    # scatter + bool (map), sum (tokens per expert)
    "router softmax + top-k": 9,
    "router random logits": 2,  # --moe-router-force-load-balancing: logits.clone(), .normal_()
    "aux loss": 6,  # switch_load_balancing_loss_func: sum, mul, sum, scale; save_to_aux_losses_tracker: div, +=
    "experts swiglu": 1,
    "permute row-id map": 2,  # TE's make_row_id_map: its two Triton kernels (its torch.empty calls launch none)
}
# DeepEP's Buffer (deepseek-ai/DeepEP csrc/deep_ep.cpp @ aae9fa9) waits onto its comm stream before its kernels and
# back after them (Megatron-core's fused_a2a.py @ 1e05700 passes previous_event=None, async_finish=False):
# ``stream_wait`` records an event on one stream and makes the other wait on it, two calls (csrc/event.hpp 34-41)
STREAM_WAIT = 2
DEEPEP_LAYOUT = STREAM_WAIT + 1 + STREAM_WAIT  # get_dispatch_layout: in, its kernel, back (lines 234-271)
# a call with the handle (the combine, and both backwards): in, the cached notify, the data kernel, back
# (intranode_combine 537-598; intranode_dispatch's cached mode 370-392, 472-495)
DEEPEP_CACHED = STREAM_WAIT + 2 + STREAM_WAIT
# the forward's all-to-all rows: the dispatch's data kernel after the poll, then the wait back; the combine
DEEPEP_A2A = {"dispatch_forward": 1 + STREAM_WAIT, "combine_forward": DEEPEP_CACHED}


@dataclass(frozen=True)
class Step:
    """One stretch of a forward: ``ops`` host calls, then ``seconds`` of GPU work; ``sync``: the host
    waits for the GPU after it."""

    label: str
    ops: int
    seconds: float
    sync: bool = False
    comm: bool = False  # an all-to-all row: on the communication stream when a pair overlaps it (host_pair.py)


def replay(steps: list[Step], per_op: float, wait: float = SYNC_WAIT) -> float:
    """Seconds from an empty queue (a sync just returned) to the end of ``steps`` (ending on a sync)."""
    host = gpu = 0.0
    for s in steps:
        share = s.seconds / max(1, s.ops)  # a step of several calls: each starts its share when issued
        for _ in range(max(1, s.ops)):
            host += per_op if s.ops else 0.0
            gpu = max(gpu, host) + share
        if s.sync:  # the host learns the GPU is done a round trip later; the queue is empty again
            host = gpu = gpu + wait
    return max(host, gpu)


def segments(steps: list[list[Step]], per_op: float) -> tuple[float, int, int]:
    """(seconds the host adds, calls, syncs) over stretches that each start at a sync and end where a long kernel
    takes over again: each replayed with that kernel's launch after it, beyond the stretch's own GPU time."""
    secs = sum(replay(seg + [Step("next launch", 1, 0.0)], per_op) - sum(x.seconds for x in seg) for seg in steps)
    return secs, sum(x.ops for seg in steps for x in seg), sum(x.sync for seg in steps for x in seg)


def calls(row, tensor: int, expert_streams: int, local_experts: int) -> int:
    """PyTorch calls behind one forward kernel row (``row``: a kernels.Kernel)."""
    if row.kind == "gemm" and row.name.startswith("experts "):
        if expert_streams <= 0:
            return 1  # one grouped kernel
        if expert_streams == 1:
            return local_experts  # SequentialMLP: a GEMM per expert
        # TE GroupedLinear: a GEMM per expert, and each of the 4 streams waits for the caller's and the
        # caller for it (cudaEventRecord / cudaStreamWaitEvent: nvte_multi_stream_cublas_gemm)
        return local_experts + 2 * min(local_experts, expert_streams)
    if row.name == "experts swiglu":
        return local_experts if expert_streams == 1 else 1
    if "(ring overlap)" in row.name:
        return tensor - 1  # userbuffers: one exchange per step of the ring
    if "(pipeline overlap)" in row.name:
        return 4  # one reduce-scatter per chunk
    if "splits" in row.shape:
        return int(row.shape.split("(")[1].split()[0])  # Table.gemm's "(4 splits, ...)": a GEMM per chunk
    return _CALLS.get(row.name, 1)


def _dispatch(dispatcher: str) -> tuple[list[Step], list[Step]]:
    """The dispatcher's own calls around the all-to-all and where it syncs (Megatron-core @ 1e057005,
    moe/token_dispatcher.py, moe/fused_a2a.py; DeepEP csrc/deep_ep.cpp): (before the dispatch, after it)."""
    if dispatcher == "deepep":
        # _DeepepManager.setup_metadata: topk; FusedDispatch: get_dispatch_layout with its stream waits, then
        # buffer.dispatch's wait onto DeepEP's stream (deep_ep.cpp @ aae9fa9 lines 228-271, 365-372); its notify
        # kernel is the token-counts row, after which the CPU polls for the received counts (forward_steps)
        before = [Step("deepep: top-k indices, dispatch layout, the dispatch's stream wait", 1 + DEEPEP_LAYOUT + 2, 0.0)]
        # get_permuted_hidden_states_by_experts, _indices_to_multihot without the experimental fused kernel
        # (ENABLE_EXPERIMENTAL = False at 1e057005): boolean-mask indexing twice and repeat_interleave with a
        # tensor of repeats, each reading a size back to the host
        after = [Step("multihot: zeros, zeros, mask, indices[mask]", 5, 0.0, sync=True),
                 Step("multihot: arange, mask.sum, repeat_interleave", 3, 0.0, sync=True),
                 Step("multihot: index_put, probs[mask]", 3, 0.0, sync=True),
                 Step("multihot: index_put, bool", 2, 0.0)]  # fmt: skip
        return before, after
    # MoEAlltoAllTokenDispatcher.preprocess (dropless, permute fusion): counts per expert, input splits, the
    # count all-gather's reshapes and sums; then _maybe_dtoh_and_synchronize: the splits copied to the host on
    # a side stream (wait_stream, 4 copies) and ``cuda_dtoh_stream.synchronize()`` before the all-to-all
    before = [Step("preprocess: counts, splits", 8, 0.0), Step("splits to host", 5, 0.0, sync=True)]
    return before, []


DISPATCH_EXTRAS = ("probs all-to-all", "etp all-gather", "etp probs all-gather")


A2A = ("dispatch_forward", "combine_forward", "dispatch_backward", "combine_backward")  # the all-to-all components


def forward_nodes(rows: list, tensor: int, expert_streams: int, local_experts: int,
                  dispatcher: str) -> dict[str, list[Step]]:  # fmt: skip
    """One MoE layer's forward in launch order, cut where Megatron-core's overlapped schedule cuts a layer
    (``attn``: attention, router, the dispatcher's preprocess and its sync; ``dispatch``: the all-to-all;
    ``mlp``: what follows it up to the combine; ``combine``: the combine and the residual)."""
    fwd = [k for k in rows if k.component in ("attn_forward", "mlp_forward")]

    def step(k) -> Step:
        deepep = dispatcher == "deepep" and k.name == "all-to-all"  # its data kernels and stream waits (DEEPEP_A2A)
        return Step(k.name, DEEPEP_A2A[k.component] if deepep else calls(k, tensor, expert_streams, local_experts),
                    k.seconds, comm=k.component in A2A)  # fmt: skip

    attn = [step(k) for k in fwd if k.component == "attn_forward"]
    mlp = [step(k) for k in fwd if k.component == "mlp_forward"]
    a2a = {k.component: k for k in rows if k.name == "all-to-all"}
    counts = [step(k) for k in rows if k.name == "token counts all-gather"]
    cut = next((i for i, s in enumerate(mlp) if s.label in ("permute row-id map", "permute", "sort by local expert")),
               len(mlp))
    before, after = _dispatch(dispatcher)
    # DeepEP: the notify kernel (the counts row) after the layout, then the host polls the received counts
    counted = (before + counts + [Step("deepep: the host polls the received counts", 0, 0.0, sync=True)]
               if dispatcher == "deepep" else counts + before)  # fmt: skip
    send = [step(a2a["dispatch_forward"])] if "dispatch_forward" in a2a else []
    # the probabilities' all-to-all; at ETP > 1 the rows' and probabilities' all-gathers (kernels._all_to_all)
    send += [step(k) for k in rows if k.component == "dispatch_forward" and k.name in DISPATCH_EXTRAS]
    back = [step(k) for k in rows if k.component == "combine_forward" and k.name == "etp reduce-scatter"]
    back += [step(a2a["combine_forward"])] if "combine_forward" in a2a else []
    tail = mlp[cut:]
    combine_at = next((i for i, s in enumerate(tail) if s.label == "residual add"), len(tail))
    return {"attn": attn + mlp[:cut] + counted, "dispatch": send, "mlp": after + tail[:combine_at],
            "combine": back + tail[combine_at:]}


def from_last_sync(order: list[Step]) -> list[Step]:
    """``order`` (one layer, or one layer pair) rotated to start just after its last sync: the layers repeat, so
    the tail stands for the previous layer's."""
    last = max((i for i, s in enumerate(order) if s.sync), default=len(order) - 1)
    return order[last + 1:] + order[:last + 1]


def forward_steps(rows: list, tensor: int, expert_streams: int, local_experts: int,
                  dispatcher: str) -> list[Step]:  # fmt: skip
    """One MoE layer's forward in launch order, from just after its last sync round to the same point in
    the next layer (the layers repeat, so the tail of this layer stands for the previous one's)."""
    nodes = forward_nodes(rows, tensor, expert_streams, local_experts, dispatcher)
    return from_last_sync(nodes["attn"] + nodes["dispatch"] + nodes["mlp"] + nodes["combine"])


def forward_excess(rows: list, per_op: float, tensor: int, expert_streams: int, local_experts: int,
                   dispatcher: str) -> tuple[float, int, int]:  # fmt: skip
    """(seconds the host adds to one MoE layer's forward, PyTorch calls, syncs)."""
    steps = forward_steps(rows, tensor, expert_streams, local_experts, dispatcher)
    gpu = sum(s.seconds for s in steps)
    return max(0.0, replay(steps, per_op) - gpu), sum(s.ops for s in steps), sum(s.sync for s in steps)
