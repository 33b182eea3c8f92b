"""The compute slowed beside a data-parallel collective (``step.dp_comm_sms``): each stage's kernels timed again
on the SMs the collective leaves (StepCosts.dp_comm_slowdown).  docs/step.md gives the model.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from . import derive, kernels


def fewer_sms(rates, sms: int):
    """The GPU's kernel rates with ``sms`` SMs taken by a communication kernel the compute was not told
    about (a data-parallel NCCL collective): KernelRates.held."""
    return rates.held(sms)


def dp_comm_slowdown(scenario, sms: int, derived=None) -> tuple[float, ...]:
    """Per stage, how much longer its compute (forward + backward, ms) runs while a data-parallel
    collective holds ``sms`` of the GPU's SMs: the stage derived again on fewer_sms' rates, over the
    stage as derived (its forward + backward, which FSDP's exposed collectives are part of).  () when the compute is
    not timed from a preset's kernel rates.

    The engine stretches a whole row overlapping the collective (engine/step.py _stretch) and a row's length holds
    FSDP's exposed waits, which NCCL's SMs do not slow (the wait is on the collective, not on a kernel), so the factor
    is the kernels' extra time over the row: 1 + (slowed - compute) / (forward + backward).  Taken over the compute
    alone, a stage whose waits recomputation fills (ZeRO 3: the recomputed forward hides under the re-gathers) came
    out with a smaller factor on the same row, and the step ended earlier with more compute (s19l's fuzz)."""
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    if st.rates is None:
        return ()
    out = []
    for fig, less in zip(derived.stages, _slowed_compute(st, sms)):
        # the stage as derived: the same sum (_stage_compute), plus FSDP's exposed collectives and its in-action
        # slowdown (fig.fsdp_slowed), which are not compute
        row = fig.forward + fig.backward
        base = row - sum(fig.fsdp_exposed or ()) - sum(fig.fsdp_slowed or ())
        out.append(1.0 + (less - base) / row if base > 0 else 1.0)
    return tuple(out)


def _slowed_compute(st, sms: int) -> tuple[float, ...]:
    """Each stage's compute (ms, _stage_compute) on fewer_sms' rates; kept for the plan's candidates, whose
    step figures ask twice (grad sync's slowdown and the optimizer's gather term) and whose layouts differ
    often only in what this does not read (the data-parallel degree, ZeRO, how the layers are staged)."""
    slowed = _slowed_kernels(_KernelReads(st), sms)
    return tuple(slowed.stage(stage) for stage in st.stages)


class _KernelReads:
    """A Setup seen through what its kernels read of it (derive.times_key: with rates the model, the rates
    and the kernels' Layout); equal keys, equal per-layer and per-stage figures."""

    __slots__ = ("st", "key")

    def __init__(self, st) -> None:
        self.st, self.key = st, derive.times_key(st)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _KernelReads) and self.key == other.key


class _Slowed:
    """One Setup's kernels on fewer SMs: each stage's compute (_stage_compute) worked out once, its
    layers' times shared between stages (keyed by stage: the layers, embedding, head and MTP it holds)."""

    def __init__(self, st, sms: int) -> None:
        self.slow = replace(st, rates=fewer_sms(st.rates, sms))
        self.per_layer: dict = {}
        self.stages: dict = {}

    def stage(self, stage) -> float:
        if stage not in self.stages:
            self.stages[stage] = _stage_compute(self.slow, stage, self.per_layer)
        return self.stages[stage]


@functools.lru_cache(maxsize=256)
def _slowed_kernels(reads: _KernelReads, sms: int) -> _Slowed:
    return _Slowed(reads.st, sms)


def _stage_compute(st, stage, per_layer: dict) -> float:
    """A stage's forward + backward kernels for one micro-batch (ms), summed as derive.derive sums them
    (its layers, all-to-all included, its embedding, head and MTP modules, its per-chunk kernels), without
    running derive() again (a run derives once); tests/test_dp_comm_sms.py holds it equal to derive's."""
    total = 0.0
    for i in stage.layers:
        key = st.cfg.layer_kind(i)  # layers of one kind (MoE, NoPE, window) cost alike
        if key not in per_layer:
            t = derive.layer_times(st, i)
            per_layer[key] = t.forward + t.backward + t.dispatch_forward + t.combine_forward + \
                t.dispatch_backward + t.combine_backward
        total += per_layer[key]
    extras = ("extras", stage.embedding, stage.head, stage.mtp)  # all extra_times reads of the stage
    if extras not in per_layer:  # the last stage's head and MTP modules, whichever layers it holds
        per_layer[extras] = sum(derive.extra_times(st, stage))
    return total + per_layer[extras] + sum(ms for _, ms in kernels.passes(derive.chunk_kernels(st, stage)))
