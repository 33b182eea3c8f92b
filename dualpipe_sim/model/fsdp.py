"""FSDP (``parallel.zero = 3``): per-layer parameter all-gathers and gradient reduce-scatters on a
rank's data-parallel channel, and how much of them an action waits for.

Each FSDP unit (a layer, an MTP module, the embedding, the head) is all-gathered from the
data-parallel shards before its forward and again before its backward (parameters are resharded
after use), and its gradient is reduce-scattered after its backward, every micro-batch.  The rule
is FSDP's: one collective at a time on the rank's data-parallel channel (first issued, first
served); while unit j computes, unit j+1's all-gather runs (prefetch of one unit; the first unit
of an action is not prefetched); unit j's reduce-scatter is issued when its backward ends.  A unit
starts computing when the one before it has ended and its own all-gather has.  What the action
then takes beyond its compute is its exposed communication; derive.py adds it to the stage's
forward (all-gathers) and backward (all-gathers and reduce-scatters).  The last unit's
reduce-scatter runs after the action, under the next one (not counted here); the end of the step
waits for what the last backward leaves on the channel (backward_tail: that unit's reduce-scatter and any
earlier one still queued, as Megatron-FSDP's finish_grad_sync waits for every reduce-scatter its post-backward
hooks launched).  Collectives are rings over the data-parallel group on the NIC: (D - 1) / D x bytes /
bandwidth.  docs/model.md, "FSDP"; docs/step.md, "ZeRO 2 and 3: Megatron-FSDP's reduce-scatters".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    """One FSDP unit of a stage, per micro-batch on one rank (ms)."""

    forward: float  # its forward compute
    backward: float  # its backward compute (input and weight gradients)
    gather: float  # all-gathering its parameters
    reduce: float  # reduce-scattering its gradient


def ring_ms(nbytes: float, ranks: float, gbps: float) -> float:
    """An all-gather or reduce-scatter of ``nbytes`` (the whole, per rank) over ``ranks`` ranks."""
    return (ranks - 1) / ranks * nbytes / (gbps * 1e9) * 1e3 if ranks > 1 else 0.0


def exposed(compute: list[float], gathers: list[float], reduces: list[float] | None = None) -> float:
    """Time an action of units ``compute`` (in the order they run) spends waiting for its
    all-gathers, with reduce-scatters queued on the same channel after each unit."""
    return _walk(compute, gathers, reduces)[0] - sum(compute)


def beside(compute: list[float], gathers: list[float], reduces: list[float] | None = None) -> float:
    """How long (ms) the units of an action (as ``exposed`` takes them) compute while one of its collectives runs
    on the channel: the compute whose SMs the collective's NCCL kernel holds (step.dp_comm_sms)."""
    return _walk(compute, gathers, reduces)[2]


def _walk(compute: list[float], gathers: list[float], reduces: list[float] | None) -> tuple[float, float, float]:
    """(when the action's last unit ends, when its channel is next free, how long its units compute while a
    collective of the action runs), from the action's start."""
    if not compute:
        return 0.0, 0.0, 0.0
    busy = [(0.0, gathers[0])]  # the channel's collectives (start, end); the first gather starts with the action
    channel = gathers[0]  # when the channel is next free
    gathered = gathers[0]  # when the unit about to run has its parameters
    clock = 0.0  # when the unit before it ended
    spans = []  # the units' compute (start, end)
    for j, c in enumerate(compute):
        start = max(clock, gathered)
        if j + 1 < len(compute):  # prefetch the next unit's parameters
            at = max(channel, start)
            channel = at + gathers[j + 1]
            busy.append((at, channel))
            gathered = channel
        clock = start + c
        spans.append((start, clock))
        if reduces is not None:
            at = max(channel, clock)
            channel = at + reduces[j]
            busy.append((at, channel))
    # one channel: its collectives never overlap one another, nor do the units, so the sum of pairwise overlaps
    beside = sum(max(0.0, min(b, d) - max(a, c)) for a, b in spans for c, d in busy)
    return clock, channel, beside


def stage_exposure(units: list[Unit]) -> tuple[float, float]:
    """(forward, backward) exposed communication of one stage's units, given in forward order."""
    f = exposed([u.forward for u in units], [u.gather for u in units])
    back = units[::-1]
    b = exposed([u.backward for u in back], [u.gather for u in back], [u.reduce for u in back])
    return f, b


def stage_beside(units: list[Unit]) -> tuple[float, float]:
    """(forward, backward) compute of one stage's units (given in forward order) beside the action's own
    collectives (``beside``); the last unit's reduce-scatter runs after the action and is not counted."""
    back = units[::-1]
    return (beside([u.forward for u in units], [u.gather for u in units]),
            beside([u.backward for u in back], [u.gather for u in back], [u.reduce for u in back]))


def slowed(units: list[Unit], factors: tuple[float, float]) -> tuple[float, float]:
    """(forward, backward) time (ms) one stage's actions run longer when the compute beside their own collectives
    (``stage_beside``) runs ``factors`` (forward, backward) times slower (their NCCL kernels hold step.dp_comm_sms
    SMs): (factor - 1) x that time, measured on the unslowed action (one pass, as engine/step.py charges the last
    backward's)."""
    return tuple((k - 1.0) * t for k, t in zip(factors, stage_beside(units)))


def backward_tail(units: list[Unit]) -> float:
    """What a backward of ``units`` (given in forward order) leaves on the data-parallel channel when its last
    unit's compute ends (ms): that unit's reduce-scatter, launched then by its post-backward hook, queued behind
    any earlier unit's still running.  The step's end waits for it (Megatron-FSDP's finish_grad_sync)."""
    back = units[::-1]
    clock, channel, _ = _walk([u.backward for u in back], [u.gather for u in back], [u.reduce for u in back])
    return max(0.0, channel - clock)
