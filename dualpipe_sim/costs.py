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

from .ir import FB, Action, Op

# Component index (the trace's ``part`` field) -> name.  One layer's forward is
# 0-3 in order; its backward is 4-9 in order (combine backward first, as the
# gradient enters through the layer's output), with each weight-gradient part
# right after the input-gradient part it belongs to, as DeepSeek-V3's Figure 4
# places them.
COMPONENTS = (
    "attn_forward",  # 0 compute
    "dispatch_forward",  # 1 a2a
    "mlp_forward",  # 2 compute
    "combine_forward",  # 3 a2a
    "combine_backward",  # 4 a2a
    "mlp_backward_input",  # 5 compute
    "mlp_backward_weight",  # 6 compute (W)
    "dispatch_backward",  # 7 a2a
    "attn_backward_input",  # 8 compute
    "attn_backward_weight",  # 9 compute (W)
)
A2A_PARTS = frozenset((1, 3, 4, 7))
WEIGHT_PARTS = frozenset((6, 9))
# One layer's components per op kind: a split backward I has no W parts, a W op
# runs only the W parts.
LAYER_PARTS = {"F": (0, 1, 2, 3), "B": (4, 5, 6, 7, 8, 9), "I": (4, 5, 7, 8), "W": (6, 9)}

# A timeline row: (member, part, on_a2a, start, end).  member = 0 for a lone op
# or the forward of a pair, 1 for the backward of a pair; part = component index
# or -1 for a whole op; times are relative to the action's start.
Row = tuple[int, int, bool, float, float]


@dataclass(frozen=True)
class Chunk:
    """One model chunk (stage) as ``layers`` identical MoE layers; times per layer."""

    layers: int
    times: tuple[float, ...]  # per component, indexed like COMPONENTS
    comm_compute_slowdown: float = 1.0  # compute runs this much slower while an a2a runs beside it

    def stream(self, kind: str) -> tuple[tuple[int, bool, float], ...]:
        """(part, on_a2a, duration) of every component of a ``kind`` op, in order.

        Zero-length all-to-all parts are dropped (a dense layer has none)."""
        parts = [(p, p in A2A_PARTS, self.times[p]) for p in LAYER_PARTS[kind]]
        layer = [c for c in parts if not (c[1] and c[2] == 0)]
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

    def timeline(self, action: Action) -> tuple[float, tuple[Row, ...]]:
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
            return total, ((0, -1, False, 0.0, split), (1, -1, False, split, total))
        d = self.duration(action)
        return d, ((0, -1, False, 0.0, d),)


def _in_sequence(stream) -> tuple[float, tuple[Row, ...]]:
    """A lone op: each component starts when the one before it ends, so its
    all-to-all runs with the rank's compute idle (fully exposed)."""
    rows, t = [], 0.0
    for part, on_a2a, d in stream:
        rows.append((0, part, on_a2a, t, t + d))
        t += d
    return t, tuple(rows)


def interleave(forward, backward, slowdown: float = 1.0) -> tuple[float, tuple[Row, ...]]:
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
    rows: list[Row] = []
    t = 0.0
    while True:
        for ch in (0, 1):
            if running[ch] is None:
                want = [
                    m
                    for m in (0, 1)
                    if nxt[m] < len(streams[m])
                    and streams[m][nxt[m]][1] == bool(ch)
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
                rows.append((job[0], job[1], bool(ch), job[2], t))
                ready[job[0]] = t
                running[ch] = None
    assert nxt == [len(forward), len(backward)]
    return t, tuple(sorted(rows, key=lambda r: r[3]))


def mean_costs(costs: CostModel, stages: int) -> tuple[float, float, float, float]:
    """(F, B, W, F&B) averaged over stages: closed forms assume uniform stages."""
    mean = lambda xs: sum(xs[:stages]) / stages  # noqa: E731
    F, B, W = mean(costs.forward), mean(costs.backward), mean(costs.weight)
    FB = mean(costs.overlapped) if costs.overlapped is not None else F + B
    return F, B, W, FB
