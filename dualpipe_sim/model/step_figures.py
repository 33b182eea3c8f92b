"""[step] figures from the model: derived sync times, and the tokens and FLOPs of a step.

Kept apart from step.py so that the end-of-step simulation (and metrics, which
type its block) never import the model package.  docs/step.md gives the formulas.
"""

from __future__ import annotations

from ..step import Throughput
from . import derive, flops, params
from .config import ModelError


def throughput(scenario) -> Throughput | None:
    """The model's tokens and FLOPs per step, or None without a [model]."""
    if scenario.model is None:
        return None
    st = derive.setup(scenario)
    sh = st.sharding
    return Throughput(
        tokens=float(scenario.pipeline.microbatches * st.tokens * sh.data),
        flops_per_token=flops.per_token(st.cfg, st.seq).training,
        devices_per_rank=sh.tensor * sh.data,
        peak=st.hw.peak(st.cfg.fp8) if st.hw is not None else None,
    )


def derived_sync(scenario, key: str) -> tuple[float, ...]:
    """Per-stage times (ms) of ``grad_sync`` or ``cross_copy_sync`` from the model.

    The bytes are a rank's gradients of one stage copy: its dense parameters / tensor
    and its routed-expert parameters / expert, times the gradient dtype's size.
    * grad_sync: ring collectives over the data-parallel replicas on the NIC
      (hardware's inter-node per-GPU bandwidth): all-reduce 2(D-1)/D x bytes / bw,
      or with ZeRO >= 1 (sharded optimizer) reduce-scatter (D-1)/D x bytes / bw; the
      dense part over ``data`` ranks, the routed part over ``data x tensor / expert``.
      With ZeRO >= 2 each FSDP unit's gradient is reduce-scattered after every backward
      (model/fsdp.py), so what is left for the end of the step is the last backward's last
      reduce-scatter: the stage's first unit (its embedding, else its first layer).
    * cross_copy_sync: an all-reduce between the two ranks holding the copies,
      2(2-1)/2 x bytes / bw = bytes / bw, on the pipeline's P2P bandwidth.
    Raises model.config.ModelError when [model] or [hardware] is missing.
    """
    if scenario.model is None or scenario.hardware is None:
        raise ModelError('"derived" needs the [model] and [hardware] sections')
    st = derive.setup(scenario)
    sh, hw = st.sharding, st.hw
    out = []
    for where, stage in zip(st.stages, scenario.derived().stages):
        dense = stage.dense_params / sh.tensor * sh.grads_bytes
        routed = stage.routed_params / sh.expert * sh.grads_bytes
        if key == "grad_sync" and sh.zero >= 2:
            first = params.layer(st.cfg, where.layers[0]) if where.layers else params.mtp_module(st.cfg)
            unit_dense, unit_routed = (params.embedding(st.cfg), 0) if where.embedding else (first.dense, first.routed)
            dense = unit_dense / sh.tensor * sh.grads_bytes
            routed = unit_routed / sh.expert * sh.grads_bytes
        if key == "cross_copy_sync":
            out.append((dense + routed) / (hw.p2p_gbps * 1e9) * 1e3)
            continue
        factor = 1.0 if sh.zero >= 1 else 2.0  # reduce-scatter or all-reduce

        def ring(nbytes: float, ranks: float) -> float:
            return factor * (ranks - 1) / ranks * nbytes if ranks > 1 else 0.0

        out.append((ring(dense, sh.data) + ring(routed, sh.expert_data)) / (hw.a2a_gbps * 1e9) * 1e3)
    return tuple(out)
