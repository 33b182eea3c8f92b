"""The cost model: how long each op takes and how much memory it holds.

Per-stage values are tuples indexed by model stage, so heterogeneous stages
(an embedding-heavy first stage, a loss-heavy last one) need no special case.
The engine asks this object for durations; it never reads a scenario.

Two ways to cost an action:

* simple: F, B, W per stage, and F&B (``overlapped``) for an overlapped pair;
* components (:class:`Chunk`): a chunk is ``layers`` MoE layers, each made of
  compute components and all-to-all (a2a) components.  :meth:`CostModel.timeline`
  lays an action's components out on the rank's two channels (compute, a2a):
  a lone op runs them in sequence, an FB pair interleaves the two ops' streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from .ir import FB, Action, Op
from .rules import Channel, Kind


class Component(IntEnum):
    """A component of one MoE layer; the value is the trace's ``part`` index, the name the [chunk] key.

    One layer's forward is 0-3 in order; its backward is 4-9 in order (combine
    backward first, as the gradient enters through the layer's output), with
    each weight-gradient part right after the input-gradient part it belongs
    to, as DeepSeek-V3's Figure 4 places them."""

    attn_forward = 0
    dispatch_forward = 1
    mlp_forward = 2
    combine_forward = 3
    combine_backward = 4
    mlp_backward_input = 5
    mlp_backward_weight = 6
    dispatch_backward = 7
    attn_backward_input = 8
    attn_backward_weight = 9

    @property
    def channel(self) -> Channel:
        return _CHANNEL.get(self, Channel.COMPUTE)

    @property
    def grad(self) -> Kind:
        """Which pass the component belongs to: F (forward), I (input-gradient) or W (weight-gradient)."""
        return _PASS[self]

    @property
    def may_be_zero(self) -> bool:
        """All-to-all (a dense layer has none) and weight-gradient parts may cost 0."""
        return self.channel == Channel.A2A or self.grad == Kind.W


_CHANNEL = {c: Channel.A2A for c in (Component.dispatch_forward, Component.combine_forward,
                                    Component.combine_backward, Component.dispatch_backward)}  # fmt: skip
_PASS = {c: Kind.F if c.name.endswith("_forward") else Kind.W if c.name.endswith("_weight") else Kind.I
         for c in Component}  # fmt: skip
COMPONENTS = tuple(c.name for c in Component)  # part index -> name
A2A_PARTS = tuple(c for c in Component if c.channel == Channel.A2A)
WEIGHT_PARTS = tuple(c for c in Component if c.grad == Kind.W)
# Which passes an op kind runs: a split backward I has no W parts, a W op runs only the W parts.
OP_PASSES = {Kind.F: (Kind.F,), Kind.B: (Kind.I, Kind.W), Kind.I: (Kind.I,), Kind.W: (Kind.W,)}
# One layer's components per op kind, in layer order.
LAYER_PARTS = {k: tuple(c for c in Component if c.grad in passes) for k, passes in OP_PASSES.items()}


class Span(NamedTuple):
    """One interval of an action's timeline, relative to the action's start."""

    member: int  # 0: a lone op or a pair's forward; 1: a pair's backward
    part: int  # Component index, -1 for a whole op
    channel: Channel  # COMPUTE or A2A
    start: float
    end: float


class Timeline(NamedTuple):
    """What an action costs: its length and its intervals on the rank's channels."""

    length: float
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Chunk:
    """One model chunk (stage) as ``layers`` identical MoE layers; times per layer."""

    layers: int
    times: tuple[float, ...]  # per component, indexed by Component
    comm_compute_slowdown: float = 1.0  # compute runs this much slower while an a2a runs beside it

    def stream(self, kind: str) -> tuple[tuple[Component, Channel, float], ...]:
        """(component, channel, duration) of every component of a ``kind`` op, in order.

        Zero-length all-to-all parts are dropped (a dense layer has none)."""
        parts = [(c, c.channel, self.times[c]) for c in LAYER_PARTS[kind]]
        layer = [p for p in parts if not (p[1] == Channel.A2A and p[2] == 0)]
        return tuple(layer) * self.layers

    def total(self, kind: str) -> float:
        return sum(d for _, _, d in self.stream(kind))


@dataclass(frozen=True)
class CostModel:
    forward: tuple[float, ...]  # F per stage
    backward: tuple[float, ...]  # B (= I + W) per stage
    weight: tuple[float, ...]  # W per stage
    overlapped: tuple[float, ...] | None = None  # FB per forward stage; None = F + B (no gain)
    p2p: float = 0.0  # one activation or gradient between two ranks
    activation_bytes: tuple[float, ...] = (1.0,)
    parameter_bytes: tuple[float, ...] = (1.0,)
    chunk: Chunk | None = None  # component model; F, B, W and F&B above are then derived from it
    p2p_mode: str = "async"  # "async": sends run beside compute; "blocking": see engine.py
    variability: object | None = None  # variability.Variability: per-op jitter, slow ranks; None = none

    @classmethod
    def uniform(
        cls,
        stages: int,
        forward: float = 1.0,
        backward: float = 2.0,
        weight: float | None = None,
        overlapped: float | None = None,
        p2p: float = 0.0,
        activation_bytes: float = 1.0,
        parameter_bytes: float = 1.0,
        p2p_mode: str = "async",
    ) -> "CostModel":
        """Same costs on every stage; W defaults to half of B."""
        rep = lambda x: (float(x),) * stages  # noqa: E731
        return cls(
            forward=rep(forward),
            backward=rep(backward),
            weight=rep(backward / 2 if weight is None else weight),
            overlapped=None if overlapped is None else rep(overlapped),
            p2p=float(p2p),
            activation_bytes=rep(activation_bytes),
            parameter_bytes=rep(parameter_bytes),
            p2p_mode=p2p_mode,
        )

    @classmethod
    def from_chunk(cls, stages: int, chunk: Chunk, **rest) -> "CostModel":
        """Component model on every stage: F, B and W are the sums of a lone op's
        components, F&B the simulated length of an overlapped F+B pair."""
        rep = lambda x: (float(x),) * stages  # noqa: E731
        fb = interleave(chunk.stream("F"), chunk.stream("B"), chunk.comm_compute_slowdown)[0]
        rest.setdefault("activation_bytes", rep(1.0))
        rest.setdefault("parameter_bytes", rep(1.0))
        return cls(
            forward=rep(chunk.total("F")),
            backward=rep(chunk.total("B")),
            weight=rep(chunk.total("W")),
            overlapped=rep(fb),
            chunk=chunk,
            **rest,
        )

    def duration(self, op: Op) -> float:
        s = op.stage
        if op.kind == "F":
            return self.forward[s]
        if op.kind == "B":
            return self.backward[s]
        if op.kind == "I":
            return self.backward[s] - self.weight[s]
        return self.weight[s]  # W

    def pair_duration(self, pair: FB) -> float:
        """Wall time of an overlapped forward+backward pair on one rank."""
        if self.chunk is not None:
            return self.timeline(pair)[0]
        if self.overlapped is not None:
            return self.overlapped[pair.forward.stage]
        return self.duration(pair.forward) + self.duration(pair.backward)

    def timeline(self, action: Action) -> Timeline:
        """(length, rows) of one action, times relative to its start.

        Without components a lone op is one row; a pair takes ``pair_duration``
        and is split between its forward and backward in proportion to their
        lone costs (for the chart).  With components see :func:`interleave`.
        """
        if self.chunk is not None:
            if isinstance(action, FB):
                return interleave(
                    self.chunk.stream("F"), self.chunk.stream(action.backward.kind), self.chunk.comm_compute_slowdown
                )
            return _in_sequence(self.chunk.stream(action.kind))
        if isinstance(action, FB):
            total = self.pair_duration(action)
            f, b = self.duration(action.forward), self.duration(action.backward)
            split = total * f / (f + b) if f + b > 0 else total / 2
            return Timeline(total, (Span(0, -1, Channel.COMPUTE, 0.0, split), Span(1, -1, Channel.COMPUTE, split, total)))
        d = self.duration(action)
        return Timeline(d, (Span(0, -1, Channel.COMPUTE, 0.0, d),))


def signature(action: Action) -> tuple:
    """What an action's timeline depends on: equal signatures, equal timelines (engines cache on it)."""
    if isinstance(action, FB):
        return (action.forward.stage, action.backward.kind, action.backward.stage)
    return (action.kind, action.stage)


def _in_sequence(stream) -> Timeline:
    """A lone op: each component starts when the one before it ends, so its
    all-to-all runs with the rank's compute idle (fully exposed)."""
    rows, t = [], 0.0
    for part, channel, d in stream:
        rows.append(Span(0, int(part), channel, t, t + d))
        t += d
    return Timeline(t, tuple(rows))


def interleave(forward, backward, slowdown: float = 1.0) -> Timeline:
    """An overlapped pair: two component streams sharing one compute and one a2a channel.

    Each stream runs its components in order, each after the previous one ends.
    A channel, when free, takes the next component of whichever stream wants it;
    if both do, the one that has waited longer, and the forward on a tie (the
    order two SimPy processes queueing FIFO on two shared resources would give).
    Compute progresses at 1/``slowdown`` of its speed while an a2a runs.
    """
    streams = (forward, backward)
    nxt = [0, 0]  # next component per stream
    ready = [0.0, 0.0]  # when that component became ready
    running = [None, None]  # per channel (0 compute, 1 a2a): [member, part, start, work left or end]
    rows: list[Span] = []
    t = 0.0
    while True:
        for ch in (0, 1):
            if running[ch] is None:
                want = [
                    m
                    for m in (0, 1)
                    if nxt[m] < len(streams[m])
                    and (streams[m][nxt[m]][1] == Channel.A2A) == bool(ch)
                    and all(r is None or r[0] != m for r in running)
                ]
                if want:
                    m = min(want, key=lambda k: (ready[k], k))
                    part, _, d = streams[m][nxt[m]]
                    nxt[m] += 1
                    running[ch] = [m, part, t, d if ch == 0 else t + d]
        comp, a2a = running
        if comp is None and a2a is None:
            break
        factor = slowdown if a2a is not None else 1.0
        t_comp = t + comp[3] * factor if comp is not None else float("inf")
        t_a2a = a2a[3] if a2a is not None else float("inf")
        t_next = min(t_comp, t_a2a)
        if comp is not None:
            comp[3] -= (t_next - t) / factor
        t = t_next
        for ch, t_end in ((0, t_comp), (1, t_a2a)):
            job = running[ch]
            if job is not None and t_end == t:
                rows.append(Span(job[0], int(job[1]), Channel.A2A if ch else Channel.COMPUTE, job[2], t))
                ready[job[0]] = t
                running[ch] = None
    assert nxt == [len(forward), len(backward)]
    return Timeline(t, tuple(sorted(rows, key=lambda r: r.start)))


def mean_costs(costs: CostModel, stages: int) -> tuple[float, float, float, float]:
    """(F, B, W, F&B) averaged over stages: closed forms assume uniform stages."""
    mean = lambda xs: sum(xs[:stages]) / stages  # noqa: E731
    F, B, W = mean(costs.forward), mean(costs.backward), mean(costs.weight)
    FB = mean(costs.overlapped) if costs.overlapped is not None else F + B
    return F, B, W, FB
