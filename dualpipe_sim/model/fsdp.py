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
    # its forward / backward on the SMs a data-parallel collective beside it leaves (step.dp_comm_sms): its kernels
    # on KernelRates.held, its tensor-parallel collectives as fast as alone; None: as fast as alone
    forward_held: float | None = None
    backward_held: float | None = None


def ring_ms(nbytes: float, ranks: float, gbps: float) -> float:
    """An all-gather or reduce-scatter of ``nbytes`` (the whole, per rank) over ``ranks`` ranks."""
    return (ranks - 1) / ranks * nbytes / (gbps * 1e9) * 1e3 if ranks > 1 else 0.0


def exposed(compute: list[float], gathers: list[float], reduces: list[float] | None = None) -> float:
    """Time an action of units ``compute`` (in the order they run) spends waiting for its
    all-gathers, with reduce-scatters queued on the same channel after each unit."""
    return _walk(compute, gathers, reduces)[0] - sum(compute)


def beside_channel(compute: float, held: float, busy: float) -> float:
    """How long (ms) a unit runs that takes ``compute`` alone and ``held`` beside a collective, the channel busy for
    ``busy`` ms from its start: ``held``'s pace while the collective runs, its own after (a share 1 - busy / held
    of its work left).  Slowed compute that fits under the collective hides under it, as param_gather's chain."""
    return held if held <= busy else busy + (1.0 - busy / held) * compute


def _walk(compute: list[float], gathers: list[float], reduces: list[float] | None,
          held: list[float] | None = None) -> tuple[float, float]:
    """(when the action's last unit ends, when its channel is next free), from the action's start; ``held``: each
    unit's compute beside a collective of the action (None: as fast as alone)."""
    if not compute:
        return 0.0, 0.0
    channel = gathers[0]  # when the channel is next free; the first gather starts with the action
    gathered = gathers[0]  # when the unit about to run has its parameters
    clock = 0.0  # when the unit before it ended
    for j, c in enumerate(compute):
        start = max(clock, gathered)
        if j + 1 < len(compute):  # prefetch the next unit's parameters
            channel = max(channel, start) + gathers[j + 1]
            gathered = channel
        # the channel is busy from the unit's start to ``channel``: the reduce-scatter before it was issued when the
        # unit before ended and runs once its own gather has, i.e. from ``start``; the prefetch queues behind it
        clock = start + (c if held is None else beside_channel(c, held[j], max(0.0, channel - start)))
        if reduces is not None:
            channel = max(channel, clock) + reduces[j]
    return clock, channel


def stage_exposure(units: list[Unit]) -> tuple[float, float]:
    """(forward, backward) exposed communication of one stage's units, given in forward order."""
    f = exposed([u.forward for u in units], [u.gather for u in units])
    back = units[::-1]
    b = exposed([u.backward for u in back], [u.gather for u in back], [u.reduce for u in back])
    return f, b


def _held(units: list[Unit], forward: bool) -> list[float] | None:
    """The units' compute beside a collective in one direction (in the order given), or None where none is slowed."""
    held = [u.forward_held if forward else u.backward_held for u in units]
    if all(h is None for h in held):
        return None
    return [(u.forward if forward else u.backward) if h is None else h for u, h in zip(units, held)]


def slowed(units: list[Unit]) -> tuple[float, float]:
    """(forward, backward) time (ms) one stage's actions run longer when the compute beside their own collectives runs
    at its held pace (Unit.forward_held / backward_held: step.dp_comm_sms SMs held by their NCCL kernels): the walk
    with each unit's pace set by the channel beside it (beside_channel) against the walk at full speed."""
    back = units[::-1]
    walks = (([u.forward for u in units], [u.gather for u in units], None, _held(units, True)),
             ([u.backward for u in back], [u.gather for u in back], [u.reduce for u in back], _held(back, False)))
    return tuple(_walk(c, g, r, h)[0] - _walk(c, g, r)[0] for c, g, r, h in walks)


def backward_tail(units: list[Unit]) -> float:
    """What a backward of ``units`` (given in forward order) leaves on the data-parallel channel when its last
    unit's compute ends (ms), at its held pace where it has one: that unit's reduce-scatter, launched then by its
    post-backward hook, queued behind any earlier unit's still running.  The step's end waits for it
    (Megatron-FSDP's finish_grad_sync)."""
    back = units[::-1]
    clock, channel = _walk([u.backward for u in back], [u.gather for u in back], [u.reduce for u in back],
                           _held(back, False))
    return max(0.0, channel - clock)
