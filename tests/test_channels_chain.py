"""channels.lay_out's chain path (``_chain``): a lone op's parts, each waiting for the one before it, laid out
without SimPy.  One part runs at a time, so none waits for its channel and no compute runs beside an
all-to-all; each starts where the one before it ends, by the same sums as SimPy's clock (which starts at the
int 0).  Checked against the SimPy path (``_simulated``) to the bit (repr: the same floats, the same int 0,
the same order) on random chunks of every kind, with and without the compute slowdown and zero all-to-alls,
and against a hand-worked chain; pairs, declared orders and negative durations still go through SimPy.
"""

from __future__ import annotations

import random

import pytest

from dualpipe_sim.inputs import channels
from dualpipe_sim.inputs.costs import Chunk, Component, Part
from dualpipe_sim.schedules.rules import Channel, Kind


def _chunk(rng: random.Random) -> Chunk:
    times = tuple(rng.choice([0.0, rng.uniform(0.0, 3.0), rng.uniform(0.0, 1e-3), rng.uniform(1e3, 1e4)])
                  for _ in Component)  # fmt: skip
    return Chunk(rng.randint(1, 6), times, rng.choice([1.0, 1.25, 2.0]))


@pytest.mark.parametrize("seed", range(8))
def test_chain_is_simpys_timeline_to_the_bit(seed):
    rng = random.Random(seed)
    for _ in range(12):
        chunk = _chunk(rng)
        for kind in (Kind.F, Kind.B, Kind.I, Kind.W):
            parts = chunk.parts((kind,))
            assert channels._is_chain(parts)
            slowdown = chunk.comm_compute_slowdown
            fast, simpy = channels.lay_out(parts, slowdown), channels._simulated(parts, slowdown)
            assert repr(fast) == repr(simpy)  # every float, the int 0 of SimPy's clock, the spans' order


def test_chain_by_hand():
    parts = (Part(0, Component(0), 0, Channel.COMPUTE, 1.5, (), None, (0,)),
             Part(0, Component(1), 0, Channel.A2A, 0.25, (0,), None, (1,)),
             Part(0, Component(2), 1, Channel.COMPUTE, 2.0, (1,), None, (2,)))  # fmt: skip
    out = channels.lay_out(parts, 3.0)  # slowdown 3: no all-to-all runs beside a compute part, so none applies
    assert out.length == 3.75
    assert [(s.channel, s.start, s.end) for s in out.spans] == [
        (Channel.COMPUTE, 0, 1.5), (Channel.A2A, 1.5, 1.75), (Channel.COMPUTE, 1.75, 3.75)]
    assert channels.lay_out((), 1.0) == channels._simulated((), 1.0) == channels.Timeline(0.0, ())


def test_what_is_not_a_chain_goes_through_simpy():
    rng = random.Random(3)
    chunk = _chunk(rng)
    pair = chunk.parts((Kind.F, Kind.B))  # two passes, a declared order
    assert not channels._is_chain(pair)
    lone = chunk.parts((Kind.F,))
    assert not channels._is_chain(lone[:1] + (lone[1]._replace(needs=()),) + lone[2:])  # a second start
    assert not channels._is_chain(lone[:1] + (lone[1]._replace(turn_after=0),) + lone[2:])
    negative = lone[:1] + (lone[1]._replace(duration=-1.0),) + lone[2:]
    assert not channels._is_chain(negative)
    with pytest.raises(ValueError, match="Negative delay"):  # SimPy's own refusal, as before
        channels.lay_out(negative, 1.0)
