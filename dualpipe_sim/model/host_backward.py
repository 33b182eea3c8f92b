"""The host's share of an MoE layer's backward: the PyTorch calls autograd makes, and where they set the pace.

The backward has no sync of its own with the all-to-all dispatcher, so the host runs ahead from layer to layer
and only its total can bound the GPU: per layer, ``max(0, calls x per_op - GPU)`` (a host that is slower than the
GPU over one layer falls further behind each layer; a faster one builds a lead that hides every stretch).  With
DeepEP the multihot's backward reads a size back (``probs[mask]``'s gradient is an ``index_put`` with the bool
mask: ``nonzero``), so each layer's backward drains the queue once and is replayed like the forward
(``host.replay``), from one layer's sync to the next layer's.  docs/model.md, "The MoE backward on the host", has
the code read for each count (Megatron-LM @ 1e05700, TransformerEngine v2.3, DeepEP, PyTorch autograd).
"""

from __future__ import annotations

import re

from . import host

BACKWARD = ("combine_backward", "mlp_backward_input", "mlp_backward_weight", "dispatch_backward",
            "attn_backward_input", "attn_backward_weight")  # fmt: skip
WEIGHT = ("mlp_backward_weight", "attn_backward_weight")  # the weight-gradient pass's rows

# Backward rows whose PyTorch calls differ from the forward rule (host.calls); every other row is one call per
# kernel it launches ("(N kernels)" in its shape).
_CALLS = {
    "rope backward": 2,  # q and k, as the forward
    "q / k norms backward": 2,
    # the aux-loss graph (router.py apply_load_balancing_loss, moe_utils.py 182-207 and 30-75): the autoscaler's
    # ones_like and * scale; * constant, * tokens_per_expert (the sums' backwards are expands); the scores'
    # softmax backward; autograd's sum of the two gradients into the logits
    "aux loss backward": 6,
    # topk_softmax_with_capacity (moe_utils.py 491-583): scatter -> gather, softmax backward, topk -> zeros + scatter
    "router backward": 4,
    "router dgrad": 3,  # mm; input.to(fp32) -> a cast back; the norm output's two gradients summed (router, tokens)
    "router wgrad": 2,  # mm; weight.to(fp32) -> a cast back
    "experts swiglu backward": 2,  # weighted_swiglu_back (torch.compile): the input's gradient, the probs' (a sum)
}
# autograd sums the two gradients where the residual stream feeds a norm and the skip: before each block
GRAD_SUMS = 2


def calls(row, tensor: int, expert_streams: int, local_experts: int, dispatcher: str) -> int:
    """PyTorch calls behind one backward kernel row (``row``: a kernels.Kernel)."""
    if row.name in _CALLS:
        return local_experts if row.name == "experts swiglu backward" and expert_streams == 1 else _CALLS[row.name]
    if row.name == "all-to-all" and dispatcher == "deepep":
        return host.DEEPEP_CACHED  # cached notify + the data kernel (the handle's layout), in and out of its stream
    n = re.search(r"\((\d+) kernels\)", row.shape)
    return int(n.group(1)) if n and row.kind == "memory" else host.calls(row, tensor, expert_streams, local_experts)


def _deepep(tensor: int) -> tuple[list[host.Step], list[host.Step]]:
    """The flex dispatcher's own backward calls (token_dispatcher.py @ 1e05700): (before its dispatch's backward,
    after it).  ``multihot_probs[rows, cols] = probs[mask]``: index_put's backward indexes the gradient; the
    mask indexing's backward (derivatives.yaml ``index.Tensor``: ``index_backward``) zero-fills and puts with the
    bool mask, which ``nonzero`` turns into indices: a device-to-host read of the count."""
    before = [host.Step("multihot backward: grad[rows, cols], new_zeros, nonzero", 3, 0.0, sync=True),
              host.Step("multihot backward: index_put (accumulate)", 1, 0.0)]  # fmt: skip
    # setup_metadata's topk (zeros + scatter); _initialize_metadata's expand over the tensor ranks (a sum)
    after = [host.Step("top-k backward, expand backward", 2 + (tensor > 1), 0.0)]
    return before, after


def backward_nodes(rows: list, tensor: int, expert_streams: int, local_experts: int,
                   dispatcher: str) -> dict[str, list[host.Step]]:  # fmt: skip
    """One MoE layer's backward in launch order, cut as host.forward_nodes cuts the forward: ``combine``: the
    combine's backward; ``mlp``: the experts' (each GroupedLinear's dgrad then wgrad) and the permute's;
    ``dispatch``: the dispatch's; ``attn``: the router's, the norm's, the attention's.  Reruns of the forward
    (their syncs are the forward's replay) and host rows are left out."""
    bwd = [k for k in rows if k.component in BACKWARD and k.kind != "host" and not k.name.endswith("(recompute)")]

    def steps(keep) -> list[host.Step]:
        return [host.Step(k.name, calls(k, tensor, expert_streams, local_experts, dispatcher), k.seconds,
                          comm=k.component in host.A2A) for k in bwd if keep(k)]  # fmt: skip

    mlp = ("mlp_backward_input", "mlp_backward_weight")
    # the experts' backward and the (un)permutes around them run before the dispatch's backward; the router after
    moe = lambda k: k.name.startswith("experts ") or "permute" in k.name or "sort by" in k.name  # noqa: E731
    before, after = _deepep(tensor) if dispatcher == "deepep" else ([], [])
    sums = [host.Step("gradient sums (residual stream)", GRAD_SUMS, 0.0)]
    return {"combine": steps(lambda k: k.component == "combine_backward"),
            "mlp": steps(lambda k: k.component in mlp and moe(k)),
            "dispatch": before + steps(lambda k: k.component == "dispatch_backward") + after,
            "attn": steps(lambda k: k.component in mlp and not moe(k)) + sums
            + steps(lambda k: k.component.startswith("attn_backward"))}  # fmt: skip


def backward_steps(rows: list, tensor: int, expert_streams: int, local_experts: int,
                   dispatcher: str) -> list[host.Step]:  # fmt: skip
    """One MoE layer's backward in launch order (backward_nodes, one after the other), from its last sync."""
    nodes = backward_nodes(rows, tensor, expert_streams, local_experts, dispatcher)
    return host.from_last_sync(nodes["combine"] + nodes["mlp"] + nodes["dispatch"] + nodes["attn"])


def excess(steps: list[host.Step], per_op: float) -> float:
    """Seconds the host adds to one layer's backward beyond its kernels: with a sync, the replay from one
    layer's sync to the next; without, what the host's calls take beyond the GPU's time, if anything."""
    gpu = sum(s.seconds for s in steps)
    if any(s.sync for s in steps):
        return max(0.0, host.replay(steps, per_op) - gpu)
    return max(0.0, sum(s.ops for s in steps) * per_op - gpu)


def backward_excess(rows: list, per_op: float, tensor: int, expert_streams: int, local_experts: int,
                    dispatcher: str) -> tuple[float, int, int]:  # fmt: skip
    """(seconds the host adds to one MoE layer's backward, PyTorch calls, syncs)."""
    steps = backward_steps(rows, tensor, expert_streams, local_experts, dispatcher)
    return excess(steps, per_op), sum(s.ops for s in steps), sum(s.sync for s in steps)


def apart_excess(rows: list, per_op: float, tensor: int, expert_streams: int, local_experts: int,
                 dispatcher: str) -> tuple[float, float]:  # fmt: skip
    """(seconds the host adds to one MoE layer's input-gradient pass run alone, to its weight-gradient pass alone):
    where a schedule runs W apart, I's autograd calls go out against I's GPU time only and W's (its wgrad GEMMs,
    popped later) against W's, not the two together (backward_excess)."""
    weight = [k for k in rows if k.component in WEIGHT and k.kind != "host"]
    steps = backward_steps([k for k in rows if k.component not in WEIGHT], tensor, expert_streams, local_experts,
                           dispatcher)  # fmt: skip
    w_calls = sum(calls(k, tensor, expert_streams, local_experts, dispatcher) for k in weight)
    return excess(steps, per_op), max(0.0, w_calls * per_op - sum(k.seconds for k in weight))
