"""What the end of a training step costs and yields: [step]'s inputs.

:class:`StepCosts` is the scenario's [step] resolved per stage (scenario.py
builds it; step.py simulates it); :class:`Throughput` is what a step yields in
tokens and FLOPs, filled in from [model] by model/throughput.py and read by
the step's metrics (readers/step_metrics.py).  Plain records that import
nothing: a shared leaf (like errors.py) that the scenario, the model, the
engine and the readers may all import (docs/architecture.md, the parts table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCosts:
    """What the end of a step costs, per model stage (the scenario's [step])."""

    grad_sync: tuple[float, ...]  # per stage copy: reduce its gradients over data-parallel replicas
    cross_copy_sync: tuple[float, ...]  # per stage held on two ranks: sum the two copies' gradients
    optimizer: tuple[float, ...]  # per stage copy: its share of its rank's optimizer step
    overlap_grad_sync: bool = False
    cross_copy_eager: bool = False
    grad_sync_buckets: int | tuple[int, ...] = 1  # a copy's grad sync in this many equal collectives (or per stage)
    # "ready": a copy's overlapped sync is released at its last weight-gradient op; "pp-aligned": rank r
    # releases it r weight-gradient ops later (Megatron's interleaved schedule), past its last at its end
    grad_sync_launch: str = "ready"
    nic_shared: bool = False  # the grad sync yields its rank's link to the rank's P2P transfers
    # per stage: how much longer its compute runs while a data-parallel collective holds step.dp_comm_sms of the
    # rank's SMs (model/comm_slowdown.dp_comm_slowdown); () or 1.0: not slowed
    dp_comm_slowdown: tuple[float, ...] = ()
    # per stage copy: the part of its reduction run only after its rank's pipeline and every other sync of the rank
    # (Megatron's finalize_model_grads: the tensor-parallel all-reduce of the sequence-parallel gradients, then the tied
    # all-reduce; NeMo on apex also the held bucket group in grad_sync() and the fp32 embedding all-reduce); () : none
    grad_sync_tail: tuple[float, ...] = ()
    # per stage: its grad sync's collectives as shares of grad_sync[s] in release order, group k of n ready k/n of the
    # way through its last weight-gradient op (Megatron-core's bucket groups with FP8 parameters hold the 16-bit
    # buffer in the last: model/grad_sync.grad_sync_shares); () or an empty entry: grad_sync_buckets equal ones
    grad_sync_shares: tuple[tuple[float, ...], ...] = ()
    # per stage: compute its rank runs after its pipeline work, before what finalizes the gradients (the output
    # layer's deferred wgrad GEMMs, model/deferred_wgrad.py: Megatron-core's finish_embedding_wgrad_compute); () : none
    drain: tuple[float, ...] = ()
    # per stage: the collectives (ms, release order) each of a copy's weight-gradient ops but its last releases through
    # it as grad_sync_shares' are (ZeRO 2's per-micro-batch reduce-scatters, model/grad_sync.every_backward_fsdp): grad
    # sync rows queued with the grad syncs on the rank's channel, slowing the compute beside them (dp_comm_slowdown);
    # () or an empty entry: none
    every_backward: tuple[tuple[float, ...], ...] = ()

    def active(self) -> bool:
        """False when every figure is zero: the step is then the pipeline, nothing is added."""
        return (any(self.grad_sync) or any(self.cross_copy_sync) or any(self.optimizer) or any(self.grad_sync_tail)
                or any(self.drain))

    def drains(self, stages_on_rank) -> list[float]:
        """Per rank, its drain (the sum over the stage copies it holds); zeros without one."""
        if not self.drain:
            return [0.0] * len(stages_on_rank)
        return [float(sum(self.drain[s] for s in stages)) for stages in stages_on_rank]


@dataclass(frozen=True)
class Throughput:
    """What tokens per second and MFU need besides the step time."""

    tokens: float  # per step over all data-parallel replicas: M x micro_batch_size x seq_length x data
    flops_per_token: float  # model FLOPs of training, no recomputation (model/flops.py: 3 x forward)
    devices_per_rank: int  # GPUs behind one pipeline rank: tensor x data
    peak: float | None  # dense peak FLOP/s per GPU of the precision the linears run in; None without [hardware]
