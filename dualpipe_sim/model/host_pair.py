"""The host's share of an MoE layer in an overlapped forward-backward pair (1f1b-overlap, DualPipe, DualPipeV).

In a lone op the all-to-all runs in line with the compute, so the host's calls hide behind it too
(host.forward_excess, host_backward.backward_excess).  In a pair one CPU thread issues both micro-batches'
calls, interleaved layer by layer, while the all-to-alls run on a communication stream beside the other
half's compute: Megatron-core's ``TransformerLayerSchedulePlan.run`` (NVIDIA/Megatron-LM @ 01cf4fb,
megatron/core/models/common/model_chunk_schedule_plan.py) issues, per layer pair, the backward's combine,
the forward's attention, the backward's MLP, the forward's dispatch, the backward's dispatch, the forward's
MLP and combine, the backward's attention; DeepSeek's DualPipe calls one ``overlapped_forward_backward`` hook
for both halves (deepseek-ai/DualPipe @ bb214e8, dualpipe/dualpipe.py ``_forward_backward_compute_chunk``).
So a pair is host-bound when both halves' calls take longer than its compute channel: the pair's layer is
replayed in that order (host.replay) with the all-to-alls taking no compute time, against the compute kernels
of both halves.  docs/model.md, "The MoE layer's host share in an overlapped pair".
"""

from __future__ import annotations

from dataclasses import replace

from . import host, host_backward

# Megatron-core's issue order of one layer pair: (half, node); "f" the forward, "b" the backward
ORDER = (("b", "combine"), ("f", "attn"), ("b", "mlp"), ("f", "dispatch"), ("b", "dispatch"), ("f", "mlp"),
         ("f", "combine"), ("b", "attn"))  # fmt: skip


def pair_steps(rows: list, tensor: int, expert_streams: int, local_experts: int,
               dispatcher: str) -> list[host.Step]:  # fmt: skip
    """One layer pair's calls in issue order, from the last sync; all-to-all rows take no compute time."""
    halves = {"f": host.forward_nodes(rows, tensor, expert_streams, local_experts, dispatcher),
              "b": host_backward.backward_nodes(rows, tensor, expert_streams, local_experts, dispatcher)}  # fmt: skip
    order = [replace(s, seconds=0.0) if s.comm else s for half, node in ORDER for s in halves[half][node]]
    return host.from_last_sync(order)


def pair_excess(rows: list, per_op: float, tensor: int, expert_streams: int, local_experts: int,
                dispatcher: str) -> float:  # fmt: skip
    """Seconds the host adds to one layer pair beyond both halves' compute kernels: replayed from one sync to the
    next, or, without a sync, both halves' calls against the compute (the host runs ahead across layers)."""
    return host_backward.excess(pair_steps(rows, tensor, expert_streams, local_experts, dispatcher), per_op)
