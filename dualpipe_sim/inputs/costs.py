"""The cost model: how long each op takes and how much memory it holds.

Per-stage values are tuples indexed by model stage, so heterogeneous stages
(an embedding-heavy first stage, a loss-heavy last one) need no special case.
The engine asks this object for durations; it never reads a scenario.

Two ways to cost an action:

* simple: F, B, W per stage, and F&B (``overlapped``) for an overlapped pair;
* components (:class:`Chunk`): a chunk is ``layers`` MoE layers, each made of
  compute and all-to-all (a2a) components.  :meth:`CostModel.parts` states an
  action's parts and what each needs; channels.py simulates them on the rank's
  channels and :meth:`CostModel.timeline` returns the result.

Inside an action (the component model's dependency rules, beside rules.py's
rules between ops):

* each pass runs its components as a chain, layer after layer: forward
  ``attn_forward -> dispatch_forward -> mlp_forward -> combine_forward -> next
  layer``; input-gradient ``combine_backward -> mlp_backward_input ->
  dispatch_backward -> attn_backward_input -> next layer`` (the gradient enters
  a layer through its output);
* a weight-gradient part needs only its own input-gradient part
  (``mlp_backward_weight`` the layer's ``mlp_backward_input``, ``attn_backward_weight``
  its ``attn_backward_input``); nothing waits for it but the end of the op;
* in an overlapped pair the channels serve ready parts by priority
  (rules.PASS_PRIORITY, then layer, forward before backward) and, per
  ``Chunk.order``, in a declared per-layer-pair order;
* a lone op runs its components one after the other in layer order: with no
  second micro-batch to overlap, its all-to-all runs with the compute idle
  (fully exposed), and F, B and W are the sums of their components.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from .channels import Span, Timeline, lay_out
from ..schedules.ir import FB, Action, Op
from ..schedules.rules import BACKWARDS, PASS_PRIORITY, RULES, Channel, Kind
from ..schedules.components import (  # noqa: F401 - the vocabulary, re-exported for the cost model's readers
    A2A_PARTS,
    COMPONENTS,
    LAYER_PARTS,
    OP_PASSES,
    WEIGHT_PARTS,
    Component,
)


# DeepSeek-V3's arrangement of one overlapped layer pair (forward chunk layer l,
# backward chunk's l-th layer from its end), read off deepseek-ai/profile-data's
# train.json (issue 11): the default of ``chunk.order``.
DEEPSEEK_ORDER: dict[Channel, tuple[Component, ...]] = {
    Channel.COMPUTE: (Component.attn_forward, Component.mlp_backward_input, Component.mlp_backward_weight,
                      Component.mlp_forward, Component.attn_backward_input, Component.attn_backward_weight),
    Channel.A2A: (Component.combine_backward, Component.dispatch_forward, Component.dispatch_backward,
                  Component.combine_forward),
}  # fmt: skip


class Part(NamedTuple):
    """One component of one layer of an action, as channels.lay_out simulates it."""

    member: int  # 0: a lone op or a pair's forward; 1: a pair's backward
    component: Component
    layer: int  # the op's layer in the order it runs them (a backward runs its last layer first)
    channel: Channel
    duration: float
    needs: tuple[int, ...]  # indices of the parts (in the action's list) it waits for
    turn_after: int | None  # the part before it in its channel's declared order, or None
    priority: tuple  # smaller is served first when several wait for the channel


@dataclass(frozen=True)
class Chunk:
    """One model chunk (stage) as ``layers`` identical MoE layers; times per layer."""

    layers: int
    times: tuple[float, ...]  # per component, indexed by Component
    comm_compute_slowdown: float = 1.0  # compute runs this much slower while an a2a runs beside it
    # Per channel, the declared order of a pair's components in each layer pair; () = none
    # (the channel then serves by priority alone).
    order: tuple[tuple[Channel, tuple[Component, ...]], ...] = tuple(DEEPSEEK_ORDER.items())
    # Per layer, ms: the host rows a lone op's mlp_forward and mlp_backward_input carry, and the host's share of a
    # layer pair that replaces them in an overlapped pair (model/host_pair.py), charged to the forward's mlp_forward
    pair_host: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Per layer, ms: what a lone I's mlp_backward_input carries less and a lone W's mlp_backward_weight more, the MoE
    # backward's host share worked per pass (derive.StageFigures.host_apart over the layers; CostModel.apart's)
    apart_host: tuple[float, float] = (0.0, 0.0)

    def stream(self, kind: str) -> tuple[tuple[Component, Channel, float], ...]:
        """(component, channel, duration) of every component of a ``kind`` op, in order.

        Zero-length all-to-all parts are dropped (a dense layer has none)."""
        parts = [(c, c.channel, self.times[c]) for c in LAYER_PARTS[kind]]
        layer = [p for p in parts if not (p[1] == Channel.A2A and p[2] == 0)]
        return tuple(layer) * self.layers

    def total(self, kind: str) -> float:
        return sum(d for _, _, d in self.stream(kind))

    def parts(self, kinds: tuple[str, ...], other: "Chunk | None" = None) -> tuple[Part, ...]:
        """The parts of a lone op (``kinds`` = its kind) or of a pair (forward kind, backward kind);
        ``other``: the backward's chunk when its stage is costed apart from the forward's."""
        out: list[Part] = []
        if len(kinds) == 1:  # lone: one chain in layer order
            stream = self.stream(kinds[0])
            per_layer = len(stream) // self.layers
            for n, (c, ch, d) in enumerate(stream):
                d = _alone(c, d, kinds[0], self.apart_host)
                out.append(Part(0, c, n // per_layer, ch, d, (n - 1,) if n else (), None, (n,)))
            return tuple(out)
        chunks = (self, other or self)
        per_layer = tuple(len(c.stream(k)) // c.layers for c, k in zip(chunks, kinds))
        index: dict[tuple[int, Component, int], int] = {}
        for member, kind in enumerate(kinds):
            last_in_pass: dict[Kind, int] = {}
            for n, (c, ch, d) in enumerate(chunks[member].stream(kind)):
                layer = n // per_layer[member]
                d = _pair_duration(c, d, chunks[0].pair_host, chunks[1].pair_host)
                if c.grad == Kind.W:
                    needs = (index[(member, c.input_part, layer)],)
                else:
                    needs = (last_in_pass[c.grad],) if c.grad in last_in_pass else ()
                i = len(out)
                index[(member, c, layer)] = last_in_pass[c.grad] = i
                out.append(Part(member, c, layer, ch, d, needs, None, (PASS_PRIORITY[c.grad], layer, member, int(c))))
        for _, listed in self.order:  # declared order: each part waits for the one before it to start
            previous = None
            for layer in range(max(c.layers for c in chunks)):
                for c in listed:
                    i = index.get((0 if c.grad == Kind.F else 1, c, layer))
                    if i is None:
                        continue  # not in this action (a W part of an I, a zero all-to-all)
                    out[i] = out[i]._replace(turn_after=previous)
                    previous = i
        return tuple(out)


def _alone(c: Component, d: float, kind: str, apart: tuple[float, float]) -> float:
    """A component's duration in a lone op whose kind runs the input- or the weight-gradient pass without the other
    (kind_length's rule): the layer's host share worked per pass (Chunk.apart_host) in place of the whole backward's,
    which mlp_backward_input carries."""
    runs = RULES[Kind(kind)].passes
    if c == Component.mlp_backward_input and Kind.I in runs and Kind.W not in runs:
        return d - apart[0]
    if c == Component.mlp_backward_weight and Kind.W in runs and Kind.I not in runs:
        return d + apart[1]
    return d


def _pair_duration(c: Component, d: float, forward: tuple, backward: tuple) -> float:
    """A component's duration in an overlapped pair: one host share for the layer pair (Chunk.pair_host) in place
    of each half's own; ``forward`` / ``backward``: the halves' chunks' pair_host.  A forward stage without the share
    (no MoE layer) leaves the backward its own host row."""
    if c == Component.mlp_forward:
        return max(0.0, d - forward[0] + forward[2])
    if c == Component.mlp_backward_input and forward[2] > 0:
        return max(0.0, d - backward[1])
    return d


def kind_length(kind: Kind, forward, backward, weight, apart=(0.0, 0.0)):
    """An op's length read off the passes its kind runs (rules.Rule.passes), on a stage whose forward, whole backward
    (B) and weight-gradient part (W) take ``forward``, ``backward`` and ``weight`` (floats, or numpy arrays over
    stages): the forward pass ``forward``; the input- and weight-gradient passes together ``backward`` (B's own
    figure: I's and W's need not sum to it to the bit), the input-gradient pass alone ``backward - weight - apart[0]``
    (I), the weight-gradient pass alone ``weight + apart[1]`` (W).  ``apart``: what each pass run alone carries less /
    more than B's split gives it (the MoE backward's host share, worked per pass: derive.StageFigures.host_apart)."""
    runs = RULES[kind].passes
    f, i, w = Kind.F in runs, Kind.I in runs, Kind.W in runs
    if not (i or w):
        return forward if f else 0.0
    grads = backward if i and w else backward - weight - apart[0] if i else weight + apart[1]
    return forward + grads if f else grads


def deferred_share(kind: Kind, less_i: float, less_w: float) -> tuple[float, float]:
    """What a lighter backward of ``kind`` (CostModel.light) runs less: the input-gradient pass's ``less_i`` if it runs
    that pass, the weight-gradient pass's ``less_w`` if it runs that one (else 0.0 each)."""
    runs = RULES[kind].passes
    return (less_i if Kind.I in runs else 0.0), (less_w if Kind.W in runs else 0.0)


@dataclass(frozen=True)
class CostModel:
    forward: tuple[float, ...]  # F per stage
    backward: tuple[float, ...]  # B (= I + W) per stage
    weight: tuple[float, ...]  # W per stage
    overlapped: tuple[float, ...] | None = None  # FB per forward stage; None = F + B (no gain)
    p2p: float = 0.0  # one activation or gradient between two ranks
    activation_bytes: tuple[float, ...] = (1.0,)
    parameter_bytes: tuple[float, ...] = (1.0,)
    # component model; F, B, W and F&B above are then derived from it.  One chunk for every stage,
    # or a tuple of one per stage (a model's stages costed apart: embedding, head, dense layers)
    chunk: Chunk | tuple[Chunk, ...] | None = None
    p2p_mode: str = "async"  # "async": sends run beside compute; "blocking": see engine/replay.py
    variability: object | None = None  # variability.Variability: per-op jitter, slow ranks; None = none
    # Hand-offs inside one NVLink domain (model/placement.py): per distinct data-parallel replica, the (sender,
    # receiver) rank pairs that cost p2p_nvlink instead of p2p; the engine replays the first, simulation.simulate
    # each and keeps the slowest (the step waits for every replica).  (): every hand-off costs p2p
    nvlink_pairs: tuple[frozenset, ...] = ()
    p2p_nvlink: float = 0.0
    # (rank order, tensor x context, data, NVLink domain): what simulation.simulate works nvlink_pairs out from
    # once the schedule's rank count is known; None: none
    placement: tuple[str, int, int, int] | None = None
    # per stage, (ms an input-gradient pass run alone carries less than backward - weight, ms a weight-gradient pass
    # alone more than weight): the MoE backward's host share worked per pass (derive.StageFigures.host_apart); (): none
    apart: tuple[tuple[float, float], ...] = ()
    # Micro-batches whose backward runs lighter on one stage (model.defer_embedding_wgrad, model/deferred_wgrad.py):
    # (stage, count, input-gradient ms less, weight-gradient ms less) for micro-batches 0 .. count - 1; None: none
    deferred: tuple[int, int, float, float] | None = None

    def light(self, op: Op) -> bool:
        """Whether ``op`` is a backward (rules.BACKWARDS: B, I or W) of a micro-batch whose output-layer wgrad is deferred."""
        d = self.deferred
        return d is not None and op.kind in BACKWARDS and op.stage == d[0] and op.microbatch < d[1]

    def link_p2p(self, sender: int, receiver: int) -> float:
        """One hand-off from ``sender`` to ``receiver``: on NVLink inside the first replica's domain pairs, else p2p."""
        return self.p2p_nvlink if self.nvlink_pairs and (sender, receiver) in self.nvlink_pairs[0] else self.p2p

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
    def from_chunk(cls, stages: int, chunk: Chunk | tuple[Chunk, ...], **rest) -> "CostModel":
        """Component model on every stage (one chunk, or one per stage): F, B and W are the sums of
        a lone op's components, F&B the simulated length of an overlapped F+B pair of one stage."""
        each = chunk if isinstance(chunk, tuple) else (chunk,) * stages
        # raises channels.OrderError for an impossible order
        fb = tuple(_lay_out(c, (Kind.F, Kind.B)).length for c in each)
        rest.setdefault("activation_bytes", (1.0,) * stages)
        rest.setdefault("parameter_bytes", (1.0,) * stages)
        return cls(
            forward=tuple(float(c.total("F")) for c in each),
            backward=tuple(float(c.total("B")) for c in each),
            weight=tuple(float(c.total("W")) for c in each),
            overlapped=fb,
            chunk=chunk,
            **rest,
        )

    def chunk_of(self, stage: int) -> Chunk:
        return self.chunk[stage] if isinstance(self.chunk, tuple) else self.chunk

    def duration(self, op: Op) -> float:
        s = op.stage
        length = kind_length(op.kind, self.forward[s], self.backward[s], self.weight[s],
                             self.apart[s] if self.apart else (0.0, 0.0))
        if not self.light(op):
            return length
        less_i, less_w = deferred_share(op.kind, *self.deferred[2:])
        return length - less_i - less_w

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
        lone costs (for the chart).  With components: the action's parts
        (:meth:`Chunk.parts`) simulated on the rank's channels (channels.py).
        """
        if self.chunk is not None:
            if isinstance(action, FB):
                f, b = self.chunk_of(action.forward.stage), self.chunk_of(action.backward.stage)
                return _lay_out(f, (Kind(action.forward.kind), Kind(action.backward.kind)), None if b == f else b)
            return _lay_out(self.chunk_of(action.stage), (Kind(action.kind),))
        if isinstance(action, FB):
            total = self.pair_duration(action)
            f, b = self.duration(action.forward), self.duration(action.backward)
            split = total * (f / (f + b)) if f + b > 0 else total / 2  # f / (f + b) first: no overflow near 1e308
            return Timeline(total, (Span(0, -1, Channel.COMPUTE, 0.0, split), Span(1, -1, Channel.COMPUTE, split, total)))
        d = self.duration(action)
        return Timeline(d, (Span(0, -1, Channel.COMPUTE, 0.0, d),))


def signature(action: Action, costs: CostModel | None = None) -> tuple:
    """What an action's timeline depends on: equal signatures, equal timelines (engines cache on it); with
    ``costs``, a backward whose output-layer wgrad is deferred (CostModel.light) is its own kind."""
    back = action.backward if isinstance(action, FB) else action
    light = (True,) if costs is not None and costs.light(back) else ()
    if isinstance(action, FB):
        return (action.forward.stage, action.backward.kind, action.backward.stage) + light
    return (action.kind, action.stage) + light


@lru_cache(maxsize=1024)
def _lay_out(chunk: Chunk, kinds: tuple[Kind, ...], other: Chunk | None = None) -> Timeline:
    """A chunk's parts for ``kinds`` on the rank's channels (``other``: a pair's backward chunk when
    it differs): a handful of simulations per run (SimPy is imported here, only for components)."""
    return lay_out(chunk.parts(kinds, other), chunk.comm_compute_slowdown)
