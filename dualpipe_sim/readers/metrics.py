"""Metrics: pure functions of a trace, as a typed record with one JSON form.

:func:`compute_metrics` returns a :class:`Metrics`: dataclasses whose fields,
in declaration order, are the keys of metrics.json (``Metrics.to_dict()`` is
that document, ``outputs.metrics_json`` its canonical text).
``Metrics.scalars()`` flattens it to the one-number-per-key view that the CLI
summary, ``compare`` and the sweep's results.csv columns share ("max over
ranks" is computed there, once).

How to add a metric (touches this file, its test, README's metrics list and
docs/architecture.md if it is a new block):

1. a per-run number: add a field to :class:`Metrics` (or to
   :class:`CommMetrics`), a per-rank number to :class:`RankMetrics`; give it
   a default if older code builds the record without it; fill it in
   :func:`compute_metrics`.  Its JSON key is the field name and it goes
   where the field is declared, so add fields at the end of their class:
   the bytes of every key before it stay the same.
2. a new block (a nested object, e.g. ``"step": {...}``): a frozen dataclass
   of its own, and a field ``step: StepMetrics | None = optional_block()``
   on :class:`Metrics`.  An ``optional_block`` left as None is omitted from
   the JSON, so runs without that feature keep byte-identical metrics.json.
3. if the sweep, ``compare`` or the CLI summary should show it, add one line
   to ``_SCALARS`` below (a dotted name and how to read it off a Metrics);
   it then becomes a results.csv column too.

Definitions (also in README.md):

* ``busy`` of a rank: total length of its compute intervals; ``idle`` =
  makespan - busy (the rank's bubble, including the tail after its last op).
  The deferred output-layer wgrad drain (a DRAIN step row, compute on the
  rank after its pipeline work) counts as compute for the part of it inside
  the makespan, in ``busy`` and in ``span``.
* ``bubble_ratio`` = sum of idle / (ranks x makespan).
* ``span`` of a rank: from the start of its first op to the end of its last;
  ``span_idle`` = span - busy (idle inside the rank's own span: the start-up
  wait and the tail after its last op do not count).
* ``span_bubble_rate``: the Zero Bubble paper's bubble rate (Qi et al. 2024,
  Sec. 5.3), (cost - work) / cost with cost the longest rank span and work the
  most busy time of a rank (m (T_F + T_B + T_W) in the paper).  Not
  ``bubble_ratio``: a pipeline whose ranks each run without a gap has
  span_bubble_rate 0 but bubble_ratio > 0 (the ranks start at different times).
* ``peak_activation``: the most stage-activations alive at once on a rank (one
  unit = one micro-batch's activations for one stage), and the same in bytes.
* Communication, for P2P and all-to-all together:
  a P2P transfer is *exposed* for the part of it during which the receiving
  rank sat idle waiting for the action that consumes it, i.e. between its
  previous action's end (its last all-to-all included) and that action's start (with blocking P2P
  the sender waits for all of it: fully exposed); an all-to-all phase is
  exposed for the part of it when its rank's compute channel is idle.
* ``between_ops`` of a rank: makespan minus the time inside its actions (an
  action spans its first to its last component, all-to-all included).  This is
  what a schedule's closed-form bubble predicts; it equals ``idle`` unless ops
  hold all-to-all with the compute idle (component model).
  ``hidden`` = total - exposed; ``overlap_ratio`` = hidden / total (null when
  there is no communication).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .step_metrics import StepMetrics
from ..engine.trace import A2A, DRAIN, P2P, Trace

if TYPE_CHECKING:  # a record the run hands over (simulation.run), not read off the trace
    from ..model.validation_band import Band


def optional_block():
    """A dataclass field for a block only some runs have: omitted from the JSON while None."""
    return field(default=None, metadata={"omit_if_none": True})


def _plain(value):
    """Dataclasses -> dicts (fields in order, optional blocks left out when None), tuples -> lists."""
    if is_dataclass(value):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in fields(value)
            if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class RankMemory:
    """metrics.json ``per_rank[].memory``: bytes on one rank with a [model] (model/memory.py).
    ``total`` is the rank's peak of everything together: static memory + the activation peak."""

    parameters: float
    gradients: float
    optimizer: float
    activations_peak: float
    total: float
    # docs/model.md "Memory per rank": total = the static terms + sharding_buffers + deepep_buffers + dynamic_peak + runtime
    fp8_weights: float = 0.0  # FP8 copies and transposes of the FP8 linears' weights
    sharding_buffers: float = 0.0  # ZeRO 2/3: unsharded gradient (and, ZeRO 3, parameter) buffers
    p2p_buffers: float = 0.0  # peak of in-flight P2P buffers
    a2a_buffers: float = 0.0  # peak of all-to-all token buffers
    dynamic_peak: float = 0.0  # peak of activations + P2P + all-to-all (+ deferred wgrad, model/buffers.py) buffers together
    runtime: float = 0.0  # CUDA context, NCCL communicators, GEMM workspace
    deepep_buffers: float = 0.0  # DeepEP's persistent NVLink (and RDMA) buffers and workspace (model/deepep_buffer.py)


@dataclass(frozen=True)
class RankMetrics:
    """One rank: an element of metrics.json ``per_rank``."""

    rank: int
    busy: float  # total length of its compute intervals
    idle: float  # makespan - busy
    between_ops: float  # makespan - time inside its actions (what closed forms predict)
    peak_activation: int  # most stage-activations alive at once
    peak_activation_bytes: float
    parameter_bytes: float  # parameters of every stage it holds
    parameter_copies: int  # how many stages it holds
    stages: list[int]
    a2a_time: float
    a2a_exposed: float  # all-to-all time with the rank's compute idle
    span: float = 0.0  # first op start to last op end
    span_idle: float = 0.0  # span - busy: idle inside the rank's own span
    memory: RankMemory | None = optional_block()  # known with a [model] section only


@dataclass(frozen=True)
class CommMetrics:
    """metrics.json ``comm``: P2P and all-to-all over all ranks."""

    p2p_time: float
    a2a_time: float
    exposed: float
    hidden: float
    overlap_ratio: float | None  # hidden / total; None without communication
    p2p_exposed: float
    a2a_exposed: float


@dataclass(frozen=True)
class Analytic:
    """metrics.json ``analytic``: the family's closed forms (registry.analytic), None where none."""

    bubble: float | None = None  # time between ops, largest over ranks; None outside the formula's range
    peak_activation: float | None = None  # max over ranks, stage-activation units
    formula: str | None = None  # as docs/schedules.md writes it
    range: str | None = None  # where the formula is exact
    reason: str | None = None  # why bubble is None (None when it is given)


@dataclass(frozen=True)
class ThroughputMetrics:
    """metrics.json ``throughput`` (with a [model]): tokens and model FLOPs per second of one step.

    The step is ``step.total`` when [step] adds work, else the pipeline's makespan alone
    (``step_source`` says which: ``"step"`` or ``"pipeline"``), so without [step] the figures
    leave out gradient sync and the optimizer and are an upper bound."""

    step_source: str  # "step": step.total; "pipeline": the makespan alone (no [step] work)
    step_time: float  # ms
    tokens_per_step: float  # over all data-parallel replicas
    gpus: int  # ranks x tensor x data
    tokens_per_second: float
    tokens_per_second_per_gpu: float
    mfu: float | None  # model FLOPs / (gpus x peak FLOP/s); None without a [hardware] peak


def throughput_metrics(step_time: float, from_step: bool, ranks: int, tp) -> ThroughputMetrics | None:
    """The ``throughput`` block from a step time (ms) and a step.Throughput (None: no block)."""
    if tp is None or not step_time > 0:
        return None
    gpus = ranks * tp.devices_per_rank
    tps = tp.tokens / (step_time / 1e3)  # times are in ms
    mfu = tps * tp.flops_per_token / (gpus * tp.peak) if tp.peak else None
    return ThroughputMetrics("step" if from_step else "pipeline", step_time, tp.tokens, gpus, tps, tps / gpus, mfu)


@dataclass(frozen=True)
class Metrics:
    """Everything measured on one run; ``to_dict()`` is metrics.json."""

    schedule: str
    stages: int
    ranks: int
    microbatches: int
    makespan: float
    bubble_ratio: float
    per_rank: list[RankMetrics]
    comm: CommMetrics
    analytic: Analytic = Analytic()
    span_bubble_rate: float = 0.0  # the Zero Bubble paper's (longest span - most busy) / longest span
    device_memory: float | None = None  # bytes of HBM per GPU ([hardware]); None when unknown
    step: StepMetrics | None = optional_block()  # a whole training step, with [step] work (step.py)
    throughput: ThroughputMetrics | None = optional_block()  # with a [model]: tokens/s, per GPU, MFU
    # with a throughput: how far off the model was on published runs of its class (model/validation_band.py),
    # reported beside the prediction and never applied to it
    validation_band: Band | None = optional_block()

    def to_dict(self) -> dict:
        """The metrics.json document (README lists every key)."""
        return _plain(self)

    def max_over_ranks(self, name: str):
        """The largest value of the per-rank field ``name``."""
        return max(getattr(r, name) for r in self.per_rank)

    def memory_total(self) -> float | None:
        """Largest per-rank total memory (None without a [model])."""
        totals = [r.memory.total for r in self.per_rank if r.memory is not None]
        return max(totals) if totals else None

    def fits(self) -> bool | None:
        """Every rank within device_memory; None when the total or the capacity is unknown."""
        total = self.memory_total()
        return None if total is None or not self.device_memory else total <= self.device_memory

    def scalars(self) -> dict[str, object]:
        """One value per name of :func:`scalar_names`, in that order (per-rank numbers: max over ranks)."""
        return {name: get(self) for name, get in _SCALARS}

    def later_step_scalars(self) -> dict[str, object]:
        """One value per name of :func:`later_step_names` (None where the step has no such part)."""
        return {name: get(self) for name, get in _LATER_STEP}


# The flat view: (dotted name, how to read it).  Order = results.csv column order.
_SCALARS: tuple[tuple[str, Callable[[Metrics], object]], ...] = (
    ("ranks", lambda m: m.ranks),
    ("makespan", lambda m: m.makespan),
    ("bubble_ratio", lambda m: m.bubble_ratio),
    ("peak_activation", lambda m: m.max_over_ranks("peak_activation")),  # stage-activation units
    ("peak_activation_bytes", lambda m: m.max_over_ranks("peak_activation_bytes")),
    ("parameter_bytes", lambda m: m.max_over_ranks("parameter_bytes")),
    # the fullest rank's activations + parameters
    ("peak_memory_bytes", lambda m: max(r.peak_activation_bytes + r.parameter_bytes for r in m.per_rank)),
    ("comm.p2p_time", lambda m: m.comm.p2p_time),
    ("comm.a2a_time", lambda m: m.comm.a2a_time),
    ("comm.exposed", lambda m: m.comm.exposed),
    ("comm.hidden", lambda m: m.comm.hidden),
    ("comm.overlap_ratio", lambda m: m.comm.overlap_ratio),
    ("comm.p2p_exposed", lambda m: m.comm.p2p_exposed),
    ("comm.a2a_exposed", lambda m: m.comm.a2a_exposed),
    ("analytic.bubble", lambda m: m.analytic.bubble),
    ("analytic.peak_activation", lambda m: m.analytic.peak_activation),
    ("parameter_copies", lambda m: m.max_over_ranks("parameter_copies")),
    ("span_bubble_rate", lambda m: m.span_bubble_rate),
    # With a [model]: the fullest rank's parameters + gradients + optimizer + activation peak,
    # and whether it fits the device (None when either is unknown).
    ("memory.total", lambda m: m.memory_total()),
    ("device_memory", lambda m: m.device_memory),
    ("fits", lambda m: m.fits()),
    # The training step ([step]); empty without [step] work.
    ("step.total", lambda m: m.step and m.step.total),
    ("step.grad_sync.time", lambda m: m.step and m.step.grad_sync.time),
    ("step.grad_sync.exposed", lambda m: m.step and m.step.grad_sync.exposed),
    ("step.cross_copy_sync.time", lambda m: m.step and m.step.cross_copy_sync.time),
    ("step.cross_copy_sync.exposed", lambda m: m.step and m.step.cross_copy_sync.exposed),
    ("step.optimizer", lambda m: m.step and m.step.optimizer),
    # With a [model]: the step's throughput (the makespan alone without [step] work).
    ("throughput.step_time", lambda m: m.throughput and m.throughput.step_time),
    ("throughput.tokens_per_second", lambda m: m.throughput and m.throughput.tokens_per_second),
    ("throughput.tokens_per_second_per_gpu", lambda m: m.throughput and m.throughput.tokens_per_second_per_gpu),
    ("throughput.mfu", lambda m: m.throughput and m.throughput.mfu),
)


# The step's parts metrics.json gained after results.csv's scalar columns were set: sweep puts them after the
# validation band (sweep/point.py), report.html's table after step.optimizer; None without them.
_LATER_STEP: tuple[tuple[str, Callable[[Metrics], object]], ...] = (
    ("step.slowed", lambda m: m.step and m.step.slowed),  # s21e: step.dp_comm_sms's slowdown, the most on one rank
    ("step.drain", lambda m: m.step and m.step.drain),  # s21r: model.defer_embedding_wgrad's longest drain
)


def later_step_names() -> tuple[str, ...]:
    """The keys of ``Metrics.later_step_scalars()``, in results.csv's order."""
    return tuple(name for name, _ in _LATER_STEP)


def scalar_names() -> tuple[str, ...]:
    """The keys of ``Metrics.scalars()``, known before any run (results.csv's metric columns)."""
    return tuple(name for name, _ in _SCALARS)


def union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Length of the union of intervals [starts[i], ends[i])."""
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    # A new run starts where an interval begins after everything before it ended.
    new_run = np.empty(len(s), dtype=bool)
    new_run[0] = True
    new_run[1:] = s[1:] > e[:-1]
    run_start = s[new_run]
    # e is a running max: a run ends at the e of its last interval, just before the next run.
    run_end = e[np.r_[np.flatnonzero(new_run)[1:] - 1, len(e) - 1]]
    return float(np.sum(run_end - run_start))


def _split(rows: np.ndarray, ranks: int, key: str = "rank") -> tuple[np.ndarray, list[int]]:
    """``rows`` sorted by ``key`` (trace arrays come sorted by rank, TraceBuilder; anything else
    is sorted stably first) and where each rank's rows begin: rank r's are bounds[r]..bounds[r+1]."""
    col = rows[key]
    if len(col) > 1 and np.any(col[1:] < col[:-1]):
        rows = rows[np.argsort(col, kind="stable")]
        col = rows[key]
    return rows, np.searchsorted(col, np.arange(ranks + 1)).tolist()


def peak_activation(trace: Trace) -> tuple[list[int], list[float]]:
    units, nbytes = [0] * trace.ranks, [0.0] * trace.ranks
    rows, bounds = _split(trace.memory, trace.ranks)  # by time, frees first (TraceBuilder)
    all_units, all_bytes = rows["units"], rows["bytes"]
    for rank in range(trace.ranks):
        lo, hi = bounds[rank], bounds[rank + 1]
        if hi > lo:
            units[rank] = int(max(0, np.cumsum(all_units[lo:hi]).max()))
            nbytes[rank] = float(max(0.0, np.cumsum(all_bytes[lo:hi]).max()))
    return units, nbytes


def _actions(rank: np.ndarray, action: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Rows of several ranks' actions (compute rows, all-to-all rows) grouped per action, in
    rank then action (= execution) order: each action's key (rank << 32 | action) and its
    rows' earliest start and latest end."""
    key = rank.astype(np.int64) << 32 | action
    if len(key) > 1 and np.any(key[1:] < key[:-1]):
        order = np.argsort(key, kind="stable")
        key, start, end = key[order], start[order], end[order]
    if len(key) == 0:
        return key, np.empty(0), np.empty(0)
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    if len(first) == len(key):  # one row per action (simple costs)
        return key, start, end
    return key[first], np.minimum.reduceat(start, first), np.maximum.reduceat(end, first)


def action_spans(trace: Trace):
    """Every action's key (rank << 32 | action), first start and last end over its compute
    and all-to-all rows (an action spans its all-to-all too), in rank then action order."""
    c = trace.compute
    key, first_start, last_end = _actions(c["rank"], c["action"], c["start"], c["end"])
    a2a = channel_rows(trace.comm, A2A)
    if len(a2a):  # each action's first and last of its compute rows and of its all-to-all rows
        key2, first2, last2 = _actions(a2a["rank"], a2a["action"], a2a["start"], a2a["end"])
        key, first_start, last_end = _actions(np.concatenate([key >> 32, key2 >> 32]),
                                              np.concatenate([key, key2]) & 0xFFFFFFFF,
                                              np.concatenate([first_start, first2]), np.concatenate([last_end, last2]))
    return key, first_start, last_end


def p2p_exposed(trace: Trace) -> float:
    """Linear in the trace: each transfer clipped, with numpy, to the wait before the action
    it feeds; their union per action summed rank by rank."""
    comm = trace.comm
    feed = (comm["channel"] == P2P) & (comm["action"] >= 0)
    if not feed.any():
        return 0.0
    # Each action's window: from the end of its rank's previous action (0 for the first) to its
    # start.  The previous action ends with its last all-to-all: a transfer beside that is hidden
    # behind the rank's own all-to-all (counted there, once), not waited for.
    key, w1, last_end = action_spans(trace)
    if len(key) == 0:
        return 0.0
    rank = key >> 32
    w0 = np.r_[0.0, last_end[:-1]]
    w0[np.r_[True, rank[1:] != rank[:-1]]] = 0.0
    # The action each transfer feeds, by a table: actions numbered rank after rank.
    first = np.searchsorted(rank, np.arange(trace.ranks + 1))
    size = np.zeros(trace.ranks, dtype=np.int64)  # per rank: its largest action + 1
    has = first[1:] > first[:-1]
    size[has] = (key[first[1:][has] - 1] & 0xFFFFFFFF) + 1
    offset = np.r_[0, np.cumsum(size)]
    where = np.full(offset[-1] + 1, -1, dtype=np.int64)  # numbered action -> its index in key (-1: none)
    where[offset[rank] + (key & 0xFFFFFFFF)] = np.arange(len(key))
    peer, action = comm["peer"][feed].astype(np.int64), comm["action"][feed].astype(np.int64)
    idx = where[np.where(action < size[peer], offset[peer] + action, offset[-1])]
    known = idx >= 0
    idx = idx[known]
    s = np.clip(comm["start"][feed][known], w0[idx], w1[idx])
    e = np.clip(comm["end"][feed][known], w0[idx], w1[idx])
    if len(idx) > 1 and not np.all((idx[1:] > idx[:-1]) | ((idx[1:] == idx[:-1]) & (s[1:] >= s[:-1]))):
        order = np.argsort(idx, kind="stable")  # the transfers of each action together, in row order
        idx, s, e = idx[order], s[order], e[order]
        if not np.all((idx[1:] > idx[:-1]) | (s[1:] >= s[:-1])):  # and by start
            order = np.lexsort((s, idx))
            idx, s, e = idx[order], s[order], e[order]
    # The union per action, rank by rank: one action's clipped transfers all lie before the
    # next action's (its window starts where this action ends), so a running max of the ends
    # never crosses actions within a rank.
    bounds = np.searchsorted(rank[idx], np.arange(trace.ranks + 1)).tolist()
    exposed = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            i, si, ei = idx[lo:hi], s[lo:hi], np.maximum.accumulate(e[lo:hi])
            new_run = np.r_[True, (si[1:] > ei[:-1]) | (i[1:] != i[:-1])]
            run_end = ei[np.r_[np.flatnonzero(new_run)[1:] - 1, len(ei) - 1]]
            exposed += float(np.sum(run_end - si[new_run]))
    return exposed


def channel_rows(comm: np.ndarray, channel: int) -> np.ndarray:
    """The comm rows on ``channel``: a slice when the rows are by channel (TraceBuilder's order)."""
    col = comm["channel"]
    if len(col) > 1 and np.any(col[1:] < col[:-1]):
        return comm[col == channel]
    return comm[np.searchsorted(col, channel) : np.searchsorted(col, channel, side="right")]


def a2a_per_rank(trace: Trace) -> tuple[list[float], list[float]]:
    """Per rank: all-to-all time, and the part of it with the rank's compute idle (exposed)."""
    a2a = channel_rows(trace.comm, A2A)
    times, exposed = [0.0] * trace.ranks, [0.0] * trace.ranks
    if len(a2a) == 0:
        return times, exposed
    a2a, mine = _split(a2a, trace.ranks)
    comp, theirs = _split(trace.compute, trace.ranks)
    a_start, a_end, c_start, c_end = a2a["start"], a2a["end"], comp["start"], comp["end"]
    for rank in range(trace.ranks):
        lo, hi = mine[rank], mine[rank + 1]
        if hi > lo:
            ms, me = a_start[lo:hi], a_end[lo:hi]
            cs, ce = c_start[theirs[rank] : theirs[rank + 1]], c_end[theirs[rank] : theirs[rank + 1]]
            times[rank] = float(np.sum(me - ms))
            own = union_length(ms, me)
            hidden = own + union_length(cs, ce) - union_length(np.concatenate([ms, cs]), np.concatenate([me, ce]))
            exposed[rank] = own - hidden  # intersect_length, with the all-to-all's own union reused
    return times, exposed


def rest(whole: float, part: float) -> float:
    """whole - part, where part adds up the same intervals as whole in another order (busy
    against the makespan, exposed against all communication): a difference at rounding size is
    none, so a gapless rank has idle 0, not -2e-15 (nor a printed "hidden 454.7e-15")."""
    left = whole - part
    return left if abs(left) > 1e-12 * abs(whole) else 0.0


def between_ops(trace: Trace) -> list[float]:
    """Per rank: makespan minus the time spent inside actions, an action lasting
    from its first component to its last (its all-to-all included)."""
    makespan = trace.makespan  # a max over every row: once, not per rank
    key, first_start, last_end = action_spans(trace)
    inside = last_end - first_start
    bounds = np.searchsorted(key >> 32, np.arange(trace.ranks + 1)).tolist()
    return [rest(makespan, float(np.sum(inside[lo:hi])) if hi > lo else 0.0) for lo, hi in zip(bounds[:-1], bounds[1:])]


def compute_metrics(trace: Trace, analytic: dict | None = None) -> Metrics:
    """The metrics of a trace; ``analytic`` is the family's closed forms (registry.analytic)."""
    makespan = trace.makespan
    units, nbytes = peak_activation(trace)
    a2a_times, a2a_exposed_ = a2a_per_rank(trace)
    outside = between_ops(trace)
    per_rank = []
    compute, bounds = _split(trace.compute, trace.ranks)
    length, starts, ends = compute["end"] - compute["start"], compute["start"], compute["end"]
    drain = trace.step[trace.step["kind"] == DRAIN] if len(trace.step) else trace.step
    for rank in range(trace.ranks):
        lo, hi = bounds[rank], bounds[rank + 1]
        busy = float(np.sum(length[lo:hi]))
        span = float(ends[lo:hi].max() - starts[lo:hi].min()) if hi > lo else 0.0
        mine = drain[drain["rank"] == rank] if len(drain) else drain
        if len(mine):  # its drain: compute after its pipeline rows, the part inside the makespan
            inside = np.minimum(mine["end"], makespan) - mine["start"]
            busy += float(np.sum(np.maximum(inside, 0.0)))
            if hi > lo:
                span = max(span, float(min(mine["end"].max(), makespan) - starts[lo:hi].min()))
        per_rank.append(
            RankMetrics(
                rank=rank,
                busy=busy,
                idle=rest(makespan, busy),
                between_ops=outside[rank],
                peak_activation=units[rank],
                peak_activation_bytes=nbytes[rank],
                parameter_bytes=trace.parameter_bytes[rank],
                parameter_copies=len(trace.stages_on_rank[rank]),
                stages=trace.stages_on_rank[rank],
                a2a_time=a2a_times[rank],
                a2a_exposed=a2a_exposed_[rank],
                span=span,
                span_idle=rest(span, busy),
            )
        )
    comm = trace.comm
    p2p_time = float(np.sum(comm["end"][comm["channel"] == P2P] - comm["start"][comm["channel"] == P2P]))
    a2a_time = float(np.sum(comm["end"][comm["channel"] == A2A] - comm["start"][comm["channel"] == A2A]))
    # Blocking P2P: the sender waits for each of its sends, so all of it is exposed.
    p2p_exp = p2p_time if trace.meta.get("p2p_mode") == "blocking" else p2p_exposed(trace)
    a2a_exp = float(sum(a2a_exposed_))
    total = p2p_time + a2a_time
    exposed = p2p_exp + a2a_exp
    idle_total = sum(r.idle for r in per_rank)
    cost = max((r.span for r in per_rank), default=0.0)
    work = max((r.busy for r in per_rank), default=0.0)
    hidden = rest(total, exposed)
    return Metrics(
        schedule=trace.schedule,
        stages=trace.stages,
        ranks=trace.ranks,
        microbatches=trace.microbatches,
        makespan=makespan,
        bubble_ratio=idle_total / (trace.ranks * makespan) if makespan > 0 else 0.0,
        per_rank=per_rank,
        comm=CommMetrics(
            p2p_time=p2p_time,
            a2a_time=a2a_time,
            exposed=exposed,
            hidden=hidden,
            overlap_ratio=hidden / total if total > 0 else None,
            p2p_exposed=p2p_exp,
            a2a_exposed=a2a_exp,
        ),
        analytic=Analytic(**analytic) if analytic else Analytic(),
        span_bubble_rate=rest(cost, work) / cost if cost > 0 else 0.0,
    )
