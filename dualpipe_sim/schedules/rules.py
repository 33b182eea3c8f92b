"""The rules of the simulation, written once: op kinds, what each needs and produces, channels.

The replay core (engine/replay.py: the simulation, and validate.py's
zero-time replay that proves a schedule can finish), the SimPy reference
engine and the exports all read these tables; none of them spells a rule out
again.  Everything the code asks of an op kind is in its :data:`RULES` entry: its
needs and results, the passes it runs (so whether it is a forward or a
backward, whether it leaves weight gradients and whether apart from its input
gradients, which [chunk] components it runs, its length), whether it frees its
stage's activation and how the charts draw it (:class:`Look`); the sets below
are read off it, and nothing else tests a kind by its letter to learn these.
Adding an op kind means a member of :class:`Kind`, its :data:`RULES` entry and
its place in :data:`WORK`; docs/architecture.md has the recipe.

Ops (ir.Op) carry a :class:`Kind`.  Results are named by *keys*
``(Data, microbatch, stage, direction)``: the data an op produced at its stage.
An op at stage ``s`` needs, per :class:`Need`, the key ``(data, m, s + offset,
d)``; a need whose stage falls outside ``0 .. stages-1`` is dropped (the first
stage reads its input from the data loader, the last stage's backward starts
from the loss).  ``offset = 0`` is a result of the same stage, hence on the same
rank; ``offset = +-1`` comes from a neighbouring stage, through the P2P link
between the two ranks when they differ.

In words:

* a forward needs the previous stage's activation;
* a full backward (B) or an input-gradient (I) needs its own stage's forward
  (the saved activations) and the next stage's gradient; the gradient goes to
  the stage's B, else to its I;
* a weight-gradient (W) needs its own I;
* an overlapped pair (ir.FB) is a forward and a B or I of two different
  micro-batches run as one action: it starts once both halves' inputs are on
  the rank, and both halves' results leave when it ends.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import NamedTuple


class Kind(str, Enum):
    """An op kind.  A ``str`` enum: ``Kind.F == "F"``, so schedules and JSON keep their letters."""

    F = "F"  # forward
    B = "B"  # full backward (input- and weight-gradient together)
    I = "I"  # noqa: E741  input-gradient part of a split backward
    W = "W"  # weight-gradient part of a split backward

    def __str__(self) -> str:
        return self.value


KINDS: tuple[Kind, ...] = tuple(Kind)
KIND_NAMES: tuple[str, ...] = tuple(k.value for k in Kind)  # trace code -> letter
KIND_CODES: dict[str, int] = {k.value: i for i, k in enumerate(Kind)}  # letter (or Kind) -> trace code
PAIR_KIND = "FB"  # schedule JSON / ir.FB: a forward overlapped with a backward (B or I)
PAIR_BACKWARDS = (Kind.B, Kind.I)  # what may be a pair's backward half


class Data(IntEnum):
    """What an op leaves behind.  ACTIVATION and GRADIENT codes are the P2P rows' ``kind`` in the trace."""

    ACTIVATION = 0  # a forward's output (sent on) and saved activations (kept for the backward)
    GRADIENT = 1  # a backward's gradient w.r.t. its input, for the stage before
    INPUT_GRAD = 2  # an input-gradient is done: its weight-gradient may run


DATA_WORDS = {Data.ACTIVATION: "activation", Data.GRADIENT: "gradient", Data.INPUT_GRAD: "input-gradient"}


class Need(NamedTuple):
    data: Data
    offset: int  # producer stage - consumer stage: 0 same stage (same rank), +-1 a neighbour


class Look(NamedTuple):
    """How the charts draw a kind (gantt.png, the bands, the pair view, report.html; plots/style.py reads it)."""

    colours: tuple[str, str]  # its box per colour family: direction 0 (blues), direction 1 (oranges)
    word: str  # legends and hover text
    # White text on its box: where white contrasts more than black (WCAG 2 contrast ratio; tests/test_s19f_planted.py).
    dark: bool = False
    # Drawn pale and hatched, its micro-batch number on a white backing, and too thin to widen the chart for its
    # number (gantt.png: the weight-gradient part, which nothing waits for).
    hatched: bool = False


class Rule(NamedTuple):
    """What an op kind is: the one declaration every reader of a kind asks."""

    needs: tuple[Need, ...]
    produces: tuple[Data, ...]
    words: str  # what the op is, for messages
    # The passes it runs, named by the kind that runs each alone: Kind.F forward, Kind.I input-gradient,
    # Kind.W weight-gradient.  A kind running the forward pass is a forward (FORWARDS), any other a backward.
    # Its length is its passes' (inputs/costs.py's kind_length).
    passes: tuple[Kind, ...]
    # Its end frees its stage's activation (the last reader of it: one kind per WORK set).  Stated, not read off
    # ``needs``: a kind may read the activation and leave it to a later op (a recompute before the backward).
    frees: bool
    look: Look


RULES: dict[Kind, Rule] = {
    Kind.F: Rule((Need(Data.ACTIVATION, -1),), (Data.ACTIVATION,), "forward", (Kind.F,), frees=False,
                 look=Look(("#a6cee3", "#fdc98a"), "forward")),
    Kind.B: Rule((Need(Data.ACTIVATION, 0), Need(Data.GRADIENT, +1)), (Data.GRADIENT,), "backward (B, or I and W)",
                 (Kind.I, Kind.W), frees=True, look=Look(("#1f5f9e", "#c1500a"), "backward", dark=True)),
    # Not dark: white on I's blue is 3.4:1 and on its orange 2.5:1, black 6.1:1 and 8.3:1.
    Kind.I: Rule((Need(Data.ACTIVATION, 0), Need(Data.GRADIENT, +1)), (Data.GRADIENT, Data.INPUT_GRAD),
                 "input-gradient part", (Kind.I,), frees=True, look=Look(("#4f8fc9", "#ec8a3c"), "input-grad")),
    Kind.W: Rule((Need(Data.INPUT_GRAD, 0),), (), "weight-gradient part", (Kind.W,), frees=False,
                 look=Look(("#dcebf5", "#fdebd6"), "weight-grad", hatched=True)),
}  # fmt: skip

# The sets of kinds one micro-batch may run on one stage: exactly one of these,
# each kind once.  The first set is the one named when ops are missing.
WORK: tuple[tuple[Kind, ...], ...] = ((Kind.F, Kind.B), (Kind.F, Kind.I, Kind.W))


def producers(data: Data) -> tuple[Kind, ...]:
    """Kinds whose ops produce ``data``, in enum order."""
    return tuple(k for k, rule in RULES.items() if data in rule.produces)


def consumers(data: Data) -> tuple[tuple[Kind, ...], int]:
    """(kinds, stage step) of the ops on another stage that consume ``data``: a result at stage s
    goes to stage s + step, to the first of those kinds the schedule holds (B, else I).
    ``((), 0)`` when it never leaves its stage."""
    kinds, step = [], 0
    for kind, rule in RULES.items():
        for need in rule.needs:
            if need.data == data and need.offset != 0:
                kinds.append(kind)
                step = -need.offset
    return tuple(kinds), step


SENT: dict[Data, tuple[tuple[Kind, ...], int]] = {d: consumers(d) for d in Data}
# Data some op reads on its own stage (so on the producing rank): engines keep a local record of it.
KEPT: frozenset[Data] = frozenset(n.data for r in RULES.values() for n in r.needs if n.offset == 0)
# Activation memory: an op that produces the activation holds it from its start until the op
# that frees it (Rule.frees: the backward, B or I) ends.
ALLOCATES: frozenset[Kind] = frozenset(k for k, r in RULES.items() if Data.ACTIVATION in r.produces)
FREES: frozenset[Kind] = frozenset(k for k, r in RULES.items() if r.frees)
# Forwards run the forward pass (F; a recompute would); backwards are the rest (B, I, W): the ops
# model.defer_embedding_wgrad lightens, drawn in a direction's backward hue, a pair's lower half.
FORWARDS: frozenset[Kind] = frozenset(k for k, r in RULES.items() if Kind.F in r.passes)
BACKWARDS: frozenset[Kind] = frozenset(RULES) - FORWARDS
# Per kind, the data it reads from another stage (a P2P transfer's reader): F the activation, B and I the gradient.
RECEIVES: dict[Kind, Data | None] = {k: next((n.data for n in r.needs if n.offset != 0), None) for k, r in RULES.items()}


def _check_rules() -> None:
    """Each micro-batch's activation on a stage is allocated once and freed once, by a kind that reads it:
    a kind that frees without reading, or a WORK set freeing twice, would take the memory timeline below zero."""
    for kind, rule in RULES.items():
        if rule.frees and Need(Data.ACTIVATION, 0) not in rule.needs:
            raise ValueError(f"rules: {kind} frees its stage's activation but never reads it (Rule.needs)")
    for work in WORK:
        for what, kinds in (("allocate", ALLOCATES), ("free", FREES)):
            if sum(k in kinds for k in work) != 1:
                raise ValueError(f"rules: WORK {tuple(k.value for k in work)} must {what} the activation once")


_check_rules()


def needs(kind: str, microbatch: int, stage: int, direction: int, stages: int) -> list[tuple[Data, int, int, int]]:
    """The keys an op needs before it may start (needs outside the pipeline dropped)."""
    out = []
    for data, offset in RULES[kind].needs:
        s = stage + offset
        if 0 <= s < stages:
            out.append((data, microbatch, s, direction))
    return out


def produced(kind: str, microbatch: int, stage: int, direction: int) -> list[tuple[Data, int, int, int]]:
    """The keys finishing an op makes available (on its own rank)."""
    return [(data, microbatch, stage, direction) for data in RULES[kind].produces]


def key_words(key: tuple) -> str:
    """A key for an error message: "0F1", "the gradient from 1B0 (or its I)"."""
    data, m, s, d = key
    kinds = producers(data)
    suffix = f"@{d}" if d else ""
    first = f"{s}{kinds[0].value}{m}{suffix}"
    if len(kinds) == 1:
        return first
    return f"the {DATA_WORDS[data]} from {first} (or its {', '.join(k.value for k in kinds[1:])})"


def pair_problem(forward, backward) -> str | None:
    """None if (forward, backward) may form an overlapped pair, else why not."""
    if forward.kind != Kind.F or backward.kind not in PAIR_BACKWARDS:
        return "must pair an F with a B or I"
    if forward.microbatch == backward.microbatch:
        # Its backward would need its own forward finished first: it can never start.
        return "overlaps a micro-batch with itself; an FB pair needs two different micro-batches"
    return None


# Ops that leave a stage's weight gradients, those running the weight-gradient pass (the end-of-step gradient
# sync waits for the last).
WEIGHT_GRADS: frozenset[Kind] = frozenset(k for k, r in RULES.items() if Kind.W in r.passes)
# Ops running the weight-gradient pass apart from the input-gradient one (W): a schedule holding one splits its
# backwards, so a rank's last op may be one after which nothing need run (plan's compute floor), and ZeRO 3 is refused.
WEIGHT_APART: frozenset[Kind] = frozenset(k for k in WEIGHT_GRADS if Kind.I not in RULES[k].passes)

# Serving order on a channel, by pass (a [chunk] component's, Component.grad; smaller first): nothing waits for a weight-gradient part
# but the end of its op, so forward and input-gradient parts go before it.
PASS_PRIORITY: dict[Kind, int] = {Kind.F: 0, Kind.B: 0, Kind.I: 0, Kind.W: 1}


class Channel(IntEnum):
    """A rank's channels: each runs one thing at a time, beside the others.

    The P2P and A2A codes are the ``channel`` column of the trace's comm rows."""

    P2P = 0  # a directed link between two ranks (one per ordered pair of ranks)
    A2A = 1  # the rank's expert-parallel all-to-all
    COMPUTE = 2  # the rank's compute stream
    GRAD_SYNC = 3  # the rank's data-parallel gradient collectives (step.py, after its pipeline work)
    CROSS_COPY = 4  # the link between the two ranks holding copies of one stage (step.py)

    @property
    def label(self) -> str:
        return CHANNEL_LABELS[self]


CHANNEL_LABELS = {Channel.P2P: "p2p", Channel.A2A: "a2a", Channel.COMPUTE: "compute",
                  Channel.GRAD_SYNC: "grad sync", Channel.CROSS_COPY: "cross-copy sync"}  # fmt: skip
