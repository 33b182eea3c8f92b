"""Static memory per rank: parameters, gradients and optimizer states, sharded as ZeRO says.

ZeRO (Rajbhandari et al. 2020) stage 1 shards the optimizer states over the
data-parallel ranks, stage 2 also the gradients, stage 3 also the parameters.
A stage's dense part (attention, norms, dense FFN, shared experts, router,
embedding, head) is split over ``tensor`` ranks and replicated over ``data``;
its routed experts are split over ``expert`` ranks and replicated over the
expert-data-parallel group of ``data x tensor / expert`` ranks (Megatron's
layout with expert tensor parallelism 1).  Optimizer bytes per parameter:
an fp32 master copy (if kept) plus Adam's two moments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sharding:
    tensor: int = 1
    expert: int = 1
    data: int = 1
    zero: int = 0
    params_bytes: float = 2.0
    grads_bytes: float = 4.0
    optimizer_bytes: float = 12.0  # per parameter: master (4) + two moments (4 + 4)

    @property
    def expert_data(self) -> float:
        return self.data * self.tensor / self.expert


@dataclass(frozen=True)
class Static:
    parameters: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer

    def __add__(self, other: "Static") -> "Static":
        return Static(self.parameters + other.parameters, self.gradients + other.gradients,
                      self.optimizer + other.optimizer)  # fmt: skip


def stage_static(dense: int, routed: int, sh: Sharding) -> Static:
    """Bytes one rank holds for one stage with ``dense`` and ``routed`` parameters (whole model counts)."""
    d, r = dense / sh.tensor, routed / sh.expert  # this rank's share before ZeRO

    def kept(per_param: float, sharded: bool) -> float:
        return per_param * (d / sh.data + r / sh.expert_data if sharded else d + r)

    return Static(
        parameters=kept(sh.params_bytes, sh.zero >= 3),
        gradients=kept(sh.grads_bytes, sh.zero >= 2),
        optimizer=kept(sh.optimizer_bytes, sh.zero >= 1),
    )


def per_rank(stage_static: list[Static], stages_on_rank: list[list[int]], activations_peak: list[float]) -> list[dict]:
    """metrics.json's ``per_rank[].memory``: bytes per rank; ``total`` is the rank's peak of
    everything together (static memory is held all along, so it is static + the activation peak)."""
    out = []
    for held, peak in zip(stages_on_rank, activations_peak):
        st = sum((stage_static[s] for s in held), Static(0.0, 0.0, 0.0))
        out.append({"parameters": st.parameters, "gradients": st.gradients, "optimizer": st.optimizer,
                    "activations_peak": peak, "total": st.total + peak})  # fmt: skip
    return out


def over_capacity(metrics) -> list:
    """The ranks whose total memory exceeds device_memory (empty when either is unknown)."""
    if not metrics.device_memory:
        return []
    return [r for r in metrics.per_rank if r.memory is not None and r.memory.total > metrics.device_memory]
