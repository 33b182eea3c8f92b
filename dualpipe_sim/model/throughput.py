"""A step's tokens and FLOPs from the model (``Throughput``: tokens/s and MFU in metrics.json)."""

from __future__ import annotations

from ..step_costs import Throughput
from . import derive, flops


def throughput(scenario, derived=None) -> Throughput | None:
    """The model's tokens and FLOPs per step, or None without a [model].  ``derived``: the
    scenario's derived figures when the caller has them (their setup is the scenario's)."""
    if scenario.model is None:
        return None
    st = derive.setup(scenario) if derived is None else derived.setup
    sh = st.sharding
    return Throughput(
        tokens=float(scenario.pipeline.microbatches * st.tokens * sh.data),
        flops_per_token=flops.per_token(st.cfg, st.seq).training,
        devices_per_rank=sh.tensor * sh.data,
        peak=st.hw.peak(st.cfg.fp8) if st.hw is not None else None,
    )
