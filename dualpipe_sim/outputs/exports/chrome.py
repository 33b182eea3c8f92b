"""Chrome trace event format (opens in Perfetto and chrome://tracing).

A pure function of the trace arrays:

* one process per rank (``pid`` = rank, ``process_name`` "rank r");
* threads per rank: ``compute``, ``all-to-all`` and ``P2P send``.  Slices on
  one thread must nest, so intervals of one channel that overlap in time (two
  sends to different neighbours at once, say) go to extra threads
  ``P2P send #2``, ... ; without overlaps each channel is exactly one thread;
* every compute row and every comm row (channel P2P or A2A) is one complete
  event (``"ph": "X"``) with args micro-batch, stage, direction and kind
  (and, for component-model rows, ``part`` and its ``costs.COMPONENTS`` name);
  all-to-all slices are named after their phase (``dispatch F3``, ``combine B3``);
* end-of-step rows (step.py, with [step] figures): grad syncs on thread
  ``grad sync``, cross-copy sums on ``cross-copy sync`` (on both ranks of the
  pair), each rank's optimizer step on its ``compute`` thread (category
  ``optimizer``; it starts after the rank's pipeline work);
* activation memory is a counter track (``"ph": "C"``) per rank, with the
  level in stage-activation units and in bytes after each instant;
* each P2P send with a consumer (``action`` >= 0) gets a flow arrow
  (``"ph": "s"`` on the send, ``"ph": "f"`` with ``"bp": "e"`` on the op that
  consumes it, same ``id``); both ends sit at the middle of their slice so the
  enclosing slice is unambiguous even when slices touch.

Units: the scenario's time unit is the millisecond, and the format's ``ts``
and ``dur`` are microseconds, so ``ts = t_ms * 1000``, rounded to the
nanosecond.  Perfetto converts a fractional ``ts`` to whole nanoseconds by
truncating ``ts * 1000``; every value written here is nudged (by at most a
few units in the last place) so that truncation gives back exactly the
intended nanosecond, and touching slices still touch after import.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...schedules.components import COMPONENTS
from ...schedules.rules import KIND_NAMES
from ...engine.trace import A2A, P2P, Trace, consumer_rows
from .timeline import activation_levels

NS_PER_UNIT = 1_000_000  # scenario time unit (ms) in nanoseconds (ts/dur are written in microseconds)
# (thread id base, thread name) per group; lane k of a group is tid base + k.
THREADS = {"compute": (1, "compute"), "a2a": (101, "all-to-all"), "p2p": (201, "P2P send"),
           "grad_sync": (301, "grad sync"), "cross_copy_sync": (401, "cross-copy sync")}  # fmt: skip
P2P_KINDS = ("activation", "gradient")  # comm kind 0 / 1 on the P2P channel


def _ns(t) -> np.ndarray:
    return np.rint(np.asarray(t, dtype=float) * NS_PER_UNIT).astype(np.int64)


def _us(ns: int) -> float | int:
    """Microseconds for a whole number of nanoseconds, such that a reader
    computing int(value * 1000) (Perfetto) gets ``ns`` back exactly."""
    ns = int(ns)
    if ns % 1000 == 0:
        return ns // 1000
    v = ns / 1000
    while int(v * 1000.0) < ns:
        v = math.nextafter(v, math.inf)
    return v


def lanes(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Fewest lanes so that intervals on one lane never overlap (greedy on
    start order, each interval to the lowest free lane); times in integer ns."""
    return _greedy([], starts, ends)  # one block from no lanes: the streamed writer's greedy


def _thread_names(pid: int, group: str, count: int) -> list[dict]:
    base, name = THREADS[group]
    events = []
    for k in range(max(count, 1)):
        tid = base + k
        label = name if k == 0 else f"{name} #{k + 1}"
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": label}})
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    return events


def _component(part: int) -> str | None:
    """Name of a component-model part (costs.COMPONENTS), None for a whole op."""
    return COMPONENTS[part] if 0 <= part < len(COMPONENTS) else None


def _op_label(kind: int, microbatch: int, direction: int) -> str:
    return f"{KIND_NAMES[kind]}{microbatch}" + (f" (dir {direction})" if direction else "")


def chrome_trace(trace: Trace) -> dict:
    """The trace as a Chrome trace event document (a JSON-ready dict)."""
    comp, comm = trace.compute, trace.comm
    c0, c1 = _ns(comp["start"]), _ns(comp["end"])
    m0, m1 = _ns(comm["start"]), _ns(comm["end"])
    comp_tid = np.zeros(len(comp), dtype=np.int64)
    comm_tid = np.zeros(len(comm), dtype=np.int64)
    meta, slices, counters, flows = [], [], [], []

    for rank in range(trace.ranks):
        meta.append({"ph": "M", "pid": rank, "tid": 0, "name": "process_name", "args": {"name": f"rank {rank}"}})
        meta.append({"ph": "M", "pid": rank, "tid": 0, "name": "process_sort_index", "args": {"sort_index": rank}})
        for group, rows, starts, ends, tids, mask in (
            ("compute", comp, c0, c1, comp_tid, comp["rank"] == rank),
            ("a2a", comm, m0, m1, comm_tid, (comm["rank"] == rank) & (comm["channel"] == A2A)),
            ("p2p", comm, m0, m1, comm_tid, (comm["rank"] == rank) & (comm["channel"] == P2P)),
        ):
            idx = np.flatnonzero(mask)
            lane = lanes(starts[idx], ends[idx])
            tids[idx] = THREADS[group][0] + lane
            meta += _thread_names(rank, group, int(lane.max()) + 1 if len(lane) else 1)

        times, units, nbytes = activation_levels(trace, rank)
        for t, u, b in zip(_ns(times), units, nbytes):
            counters.append(
                {"ph": "C", "pid": rank, "tid": 0, "name": "activation memory", "ts": _us(t),
                 "args": {"units": int(u), "bytes": float(b)}}
            )

    for i, row in enumerate(comp):
        args = {
            "microbatch": int(row["microbatch"]), "stage": int(row["stage"]), "direction": int(row["direction"]),
            "kind": KIND_NAMES[row["kind"]], "action": int(row["action"]), "overlapped": bool(row["overlapped"]),
        }
        if row["part"] >= 0:
            args.update(part=int(row["part"]), component=_component(row["part"]))
        slices.append(
            {"ph": "X", "cat": "compute", "name": _op_label(row["kind"], row["microbatch"], row["direction"]),
             "pid": int(row["rank"]), "tid": int(comp_tid[i]), "ts": _us(c0[i]), "dur": _us(c1[i] - c0[i]),
             "args": args}
        )

    for i, row in enumerate(comm):
        args = {"microbatch": int(row["microbatch"]), "stage": int(row["stage"]), "direction": int(row["direction"])}
        if row["channel"] == P2P:
            what = P2P_KINDS[row["kind"]] if 0 <= row["kind"] < len(P2P_KINDS) else f"kind {row['kind']}"
            name, cat = f"{what} {row['microbatch']} to rank {row['peer']}", "p2p"
            args.update(kind=what, to=int(row["peer"]), consumer_action=int(row["action"]))
        else:
            what = KIND_NAMES[row["kind"]] if 0 <= row["kind"] < len(KIND_NAMES) else f"kind {row['kind']}"
            phase = (_component(row["part"]) or "a2a").split("_")[0]  # dispatch / combine
            name, cat = f"{phase} {what}{row['microbatch']}", "a2a"
            args.update(kind=what, action=int(row["action"]))
        if row["part"] >= 0:
            args.update(part=int(row["part"]), component=_component(row["part"]))
        slices.append(
            {"ph": "X", "cat": cat, "name": name, "pid": int(row["rank"]), "tid": int(comm_tid[i]),
             "ts": _us(m0[i]), "dur": _us(m1[i] - m0[i]), "args": args}
        )

    # Flow arrows: each P2P send to the compute slice of the op that consumes it (trace.consumer, as the streamed writer).
    consumer = trace.consumer if trace.consumer is not None else consumer_rows(comp, comm)
    for i in np.flatnonzero((comm["channel"] == P2P) & (comm["action"] >= 0)):
        row, j = comm[i], int(consumer[i])
        if j < 0:
            continue
        fid, name = len(flows) // 2, P2P_KINDS[row["kind"]] if row["kind"] < len(P2P_KINDS) else "p2p"
        flows.append({"ph": "s", "cat": "p2p-flow", "name": name, "id": fid, "pid": int(row["rank"]),
                      "tid": int(comm_tid[i]), "ts": _us((m0[i] + m1[i]) // 2)})
        flows.append({"ph": "f", "bp": "e", "cat": "p2p-flow", "name": name, "id": fid, "pid": int(comp["rank"][j]),
                      "tid": int(comp_tid[j]), "ts": _us((c0[j] + c1[j]) // 2)})

    meta_step, slices_step = _step_events(trace)
    return {
        "traceEvents": meta + meta_step + slices + slices_step + counters + flows,
        "displayTimeUnit": "ms",
        "otherData": {
            "schedule": trace.schedule,
            "stages": trace.stages,
            "ranks": trace.ranks,
            "microbatches": trace.microbatches,
            "time_unit": "ts and dur in microseconds: 1 scenario time unit (ms) = 1000",
        },
    }


def _step_events(trace: Trace) -> tuple[list[dict], list[dict]]:
    """Thread names and slices of the end-of-step rows (none without [step] work)."""
    from ...engine.trace import DRAIN, OPTIMIZER, SLOWED, STEP_KIND_NAMES

    step = trace.step
    meta, slices = [], []
    if len(step) == 0:
        return meta, slices
    s0, s1 = _ns(step["start"]), _ns(step["end"])
    for rank in range(trace.ranks):
        for kind in (0, 1):  # one thread each: a channel runs one sync at a time
            if ((step["rank"] == rank) & (step["kind"] == kind)).any():
                meta += _thread_names(rank, STEP_KIND_NAMES[kind], 1)
    for i, row in enumerate(step):
        kind, stage = int(row["kind"]), int(row["stage"])
        if kind == OPTIMIZER:
            name, tid, args = "optimizer", THREADS["compute"][0], {}
        elif kind == DRAIN:  # on the compute thread: the output layer's deferred wgrad GEMMs
            name, tid, args = f"drain stage {stage}", THREADS["compute"][0], {"stage": stage}
        elif kind == SLOWED:  # on the compute thread from the pipeline's end: what step.dp_comm_sms's slowdown added
            name, tid, args = "compute slowed beside data-parallel collectives", THREADS["compute"][0], {}
        else:
            name, tid = f"{THREADS[STEP_KIND_NAMES[kind]][1]} stage {stage}", THREADS[STEP_KIND_NAMES[kind]][0]
            args = {"stage": stage} | ({"with_rank": int(row["peer"])} if row["peer"] != row["rank"] else {})
        slices.append({"ph": "X", "cat": STEP_KIND_NAMES[kind], "name": name, "pid": int(row["rank"]), "tid": tid,
                       "ts": _us(s0[i]), "dur": _us(s1[i] - s0[i]), "args": args})  # fmt: skip
    return meta, slices


def chrome_trace_json(trace: Trace) -> str:
    """The document as text, one event per line (what :func:`write_chrome_trace` writes)."""
    out = io.StringIO()
    _write(trace, out)
    return out.getvalue()


def trace_name(trace_path: str, out_dir: str, taken=()) -> str:
    """Where a trace file asked for at ``trace_path`` goes, as a name inside the
    output folder, so that it is written with the other outputs, all-or-nothing.
    Raises ValueError (one line) for a path outside ``out_dir`` or one that
    another output (``taken``) already uses."""
    out = Path(out_dir).resolve()
    try:
        rel = Path(trace_path).resolve().relative_to(out)
    except ValueError:
        raise ValueError(
            f"must be a file inside the output folder {out_dir}, e.g. {Path(out_dir) / 'trace.json'}; "
            f"got {trace_path}"
        ) from None
    name = rel.as_posix()
    if name in ("", ".") or name in taken:
        raise ValueError(f"{trace_path} is the output folder or another output of the run")
    return name


def write_chrome_trace(trace: Trace, path) -> None:
    """The document of :func:`chrome_trace`, streamed to ``path`` one event per line."""
    with open(path, "w", encoding="utf-8") as f:
        _write(trace, f)


# -- streaming: the same events as chrome_trace(), formatted a block of rows at a time -------------
# chrome_trace() builds one dict per event, which costs ~4 KB and a json.dumps per event.  The
# writer below formats the per-op events (slices, counters, flows) column-wise from the trace
# arrays, BLOCK rows at a time.  In the engine's row order (compute by rank and start, comm by
# channel, rank and start, memory by rank) one rank's rows of one thread group are one segment,
# sorted by start, so thread lanes are assigned block by block carrying only the lanes' end times
# (the greedy of lanes(), ties of equal start taken by end as it does), and a flow arrow's end is
# the compute row trace.consumer names, read by position: the writer's memory beyond the trace
# arrays is a few blocks, whatever the ops per rank.  Rows in no such order (a trace built by hand)
# fall back to lanes of the whole segment.  Lanes are computed twice (thread names go first, slices
# later) rather than kept.  Only the per-rank metadata and the end-of-step rows (a handful per rank)
# go through chrome_trace's own builders and json.dumps.
BLOCK = 1024  # rows per block of text (~250 KB of it)
MAX_RUNS = 4096  # more runs than this: the rows are in no per-rank order; one segment, the whole table


def _segments(table: np.ndarray, keys: tuple[str, ...]) -> list[tuple[int, int]]:
    """Row ranges [a, b) of ``table`` covering it, such that all rows with one value of ``keys``
    lie in one range: the runs of equal keys when each value makes one run, else the whole table.
    Scanned BLOCK rows at a time."""
    n = len(table)
    if n == 0:
        return []
    starts = [0]
    for a in range(0, n - 1, BLOCK):
        chunk = table[a:a + BLOCK + 1]
        change = np.zeros(len(chunk) - 1, dtype=bool)
        for k in keys:
            change |= chunk[k][1:] != chunk[k][:-1]
        starts += (a + 1 + np.flatnonzero(change)).tolist()
        if len(starts) > MAX_RUNS:
            return [(0, n)]
    seen = set()
    for a in starts:
        key = tuple(table[k][a].item() for k in keys)
        if key in seen:  # a value in two runs
            return [(0, n)]
        seen.add(key)
    return list(zip(starts, starts[1:] + [n]))


def _groups(rows: np.ndarray) -> tuple[tuple[str, int | None], ...]:
    return (("a2a", A2A), ("p2p", P2P)) if "channel" in rows.dtype.names else (("compute", None),)


def _segment_tids(rows: np.ndarray, ranks: int) -> tuple[np.ndarray, dict[tuple[int, str], int]]:
    """(thread id of each row, lane count per (rank, group)) for a segment of compute or comm rows
    (one holding every row of each of its ranks); rows of no rank in range(ranks) keep tid 0."""
    tids = np.zeros(len(rows), dtype=np.int64)
    counts = {}
    for rank in np.unique(rows["rank"]).tolist():
        if not 0 <= rank < ranks:
            continue
        for group, channel in _groups(rows):
            mask = rows["rank"] == rank
            if channel is not None:
                mask &= rows["channel"] == channel
            idx = np.flatnonzero(mask)
            if len(idx):
                lane = lanes(_ns(rows["start"][idx]), _ns(rows["end"][idx]))
                tids[idx] = THREADS[group][0] + lane
                counts[rank, group] = int(lane.max()) + 1
    return tids, counts


def _one_lane_group(rows: np.ndarray) -> tuple[int, str | None] | None:
    """(rank, thread group or None for no group) when the segment is one rank's rows of one
    channel in start order (what block-wise lanes need), else None.  Read BLOCK rows at a time."""
    first = rows[0]
    channel = int(first["channel"]) if "channel" in rows.dtype.names else None
    last = None
    for c in range(0, len(rows), BLOCK):
        block = rows[c:c + BLOCK]
        start = _ns(block["start"])
        if (block["rank"] != first["rank"]).any() or (channel is not None and (block["channel"] != channel).any()):
            return None
        if (start[1:] < start[:-1]).any() or (last is not None and start[0] < last):
            return None
        last = start[-1]
    group = next((g for g, ch in _groups(rows) if ch == channel), None)
    return int(first["rank"]), group


def _greedy(lane_end: list[int], start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """lanes() continued over one more block of a segment: ``lane_end`` holds each lane's end
    time so far and is updated.  The block must hold every row of its start times."""
    order = np.lexsort((end, start))
    lane = np.zeros(len(start), dtype=np.int64)
    if len(order) and all(t <= start[order[0]] for t in lane_end) and (end[order[:-1]] <= start[order[1:]]).all():
        if not lane_end:
            lane_end.append(0)
        lane_end[0] = int(end[order[-1]])  # no overlaps: all on lane 0, as the loop below gives
        return lane
    for i in order.tolist():
        for k, t in enumerate(lane_end):
            if t <= start[i]:
                break
        else:
            k = len(lane_end)
            lane_end.append(0)
        lane_end[k] = int(end[i])
        lane[i] = k
    return lane


def _tid_blocks(rows: np.ndarray, ranks: int, counts: dict | None = None):
    """(c, d, thread ids of rows[c:d]) over a segment, in order; lane counts per (rank, group)
    go to ``counts`` once the segment is done.  One rank's rows of one channel in start order
    take constant memory (lanes carried block to block); any other segment, lanes() of all of it."""
    key = _one_lane_group(rows) if len(rows) else None
    if key is None:
        tids, segment_counts = _segment_tids(rows, ranks)
        for c in range(0, len(rows), BLOCK):
            yield c, min(c + BLOCK, len(rows)), tids[c:c + BLOCK]
        if counts is not None:
            counts.update(segment_counts)
        return
    rank, group = key
    if group is None or not 0 <= rank < ranks:
        for c in range(0, len(rows), BLOCK):
            yield c, min(c + BLOCK, len(rows)), np.zeros(min(BLOCK, len(rows) - c), dtype=np.int64)
        return
    lane_end: list[int] = []
    c = 0
    while c < len(rows):
        d = _next_cut(rows, c)
        block = rows[c:d]
        yield c, d, THREADS[group][0] + _greedy(lane_end, _ns(block["start"]), _ns(block["end"]))
        c = d
    if counts is not None:
        counts[rank, group] = len(lane_end)


def _next_cut(rows: np.ndarray, c: int) -> int:
    """The end of the block of a start-sorted segment that begins at row c: about BLOCK rows, never
    splitting a run of equal starts (ns), which lanes() orders by end, so a block holds them all."""
    n = len(rows)
    d = min(c + BLOCK, n)
    if d == n:
        return d
    start = _ns(rows["start"][c:d + 1])
    if start[-1] != start[-2]:
        return d
    e = int(np.searchsorted(start[:-1], start[-1]))  # where the run of equal starts begins
    if e > 0:
        return c + e
    while d < n:  # the whole block is one start: take the run to its end
        chunk = _ns(rows["start"][d:d + BLOCK])
        k = int(np.searchsorted(chunk, start[-1], side="right"))
        d += k
        if k < len(chunk):
            break
    return d


def _rank_segments(table: np.ndarray, segments) -> dict[int, tuple[int, int, bool]]:
    """rank -> (a, b, whether rows [a, b) are that rank's alone) for the segments of a table;
    read BLOCK rows at a time (a segment of several ranks, the whole-table fallback, is read whole)."""
    out = {}
    for a, b in segments:
        first = table["rank"][a]
        if all((table["rank"][c:min(c + BLOCK, b)] == first).all() for c in range(a, b, BLOCK)):
            out[int(first)] = (a, b, True)
        else:
            out |= dict.fromkeys(np.unique(table["rank"][a:b]).tolist(), (a, b, False))
    return out


def _level_blocks(rows: np.ndarray):
    """timeline.activation_levels() of one rank's memory rows, BLOCK rows at a time: the running
    sums go on from the last entry (np.cumsum adds in order, so the floats are the same sums), and
    each block's last entry waits for the next block (a later row at the same time replaces it)."""
    held = None  # (time, units, bytes) of the last entry so far
    for c in range(0, len(rows), BLOCK):
        block = rows[c:c + BLOCK]
        if held is None:
            times = np.concatenate([[0.0], block["time"]])
            units = np.concatenate([[0], np.cumsum(block["units"])])
            nbytes = np.concatenate([[0.0], np.cumsum(block["bytes"])])
        else:
            times = np.concatenate([[held[0]], block["time"]])
            units = np.cumsum(np.concatenate([[held[1]], block["units"]]))
            nbytes = np.cumsum(np.concatenate([[held[2]], block["bytes"]]))
        last = times[1:] != times[:-1]  # entries 0..n-2: kept when the next one is at another time
        yield times[:-1][last], units[:-1][last], nbytes[:-1][last]
        held = times[-1], units[-1], nbytes[-1]
    if held is None:
        held = 0.0, 0, 0.0
    yield np.array([held[0]]), np.array([held[1]]), np.array([held[2]])


def _write(trace: Trace, f) -> None:
    comp, comm = trace.compute, trace.comm
    comp_segments, comm_segments = _segments(comp, ("rank",)), _segments(comm, ("channel", "rank"))
    counts: dict[tuple[int, str], int] = {}
    for table, segments in ((comp, comp_segments), (comm, comm_segments)):
        for a, b in segments:
            for _ in _tid_blocks(table[a:b], trace.ranks, counts):
                pass
    meta = []
    for rank in range(trace.ranks):
        meta.append({"ph": "M", "pid": rank, "tid": 0, "name": "process_name", "args": {"name": f"rank {rank}"}})
        meta.append({"ph": "M", "pid": rank, "tid": 0, "name": "process_sort_index", "args": {"sort_index": rank}})
        for group in ("compute", "a2a", "p2p"):
            meta += _thread_names(rank, group, counts.get((rank, group), 1))
    meta_step, slices_step = _step_events(trace)
    f.write('{"traceEvents": [\n')
    first = [True]

    def put(lines: list[str]) -> None:
        if lines:
            f.write(("" if first[0] else ",\n") + ",\n".join(lines))
            first[0] = False

    put([json.dumps(e, allow_nan=False) for e in meta + meta_step])
    for table, segments, slices in ((comp, comp_segments, _compute_slices), (comm, comm_segments, _comm_slices)):
        for a, b in segments:
            rows = table[a:b]
            for c, d, tids in _tid_blocks(rows, trace.ranks):
                put(slices(rows[c:d], tids))
    put([json.dumps(e, allow_nan=False) for e in slices_step])
    memory_of = _rank_segments(trace.memory, _segments(trace.memory, ("rank",)))
    for rank in range(trace.ranks):
        a, b, alone = memory_of.get(rank, (0, 0, True))
        if alone:  # one rank's rows: its levels block by block
            for times, units, nbytes in _level_blocks(trace.memory[a:b]):
                put(_counters(rank, times, units, nbytes))
            continue
        times, units, nbytes = activation_levels(replace(trace, memory=trace.memory[a:b]), rank)
        for c in range(0, len(times), BLOCK):
            put(_counters(rank, times[c:c + BLOCK], units[c:c + BLOCK], nbytes[c:c + BLOCK]))
    for lines in _flow_blocks(trace, comp_segments, comm_segments, counts):
        put(lines)
    other = {"schedule": trace.schedule, "stages": trace.stages, "ranks": trace.ranks,
             "microbatches": trace.microbatches,
             "time_unit": "ts and dur in microseconds: 1 scenario time unit (ms) = 1000"}  # fmt: skip
    f.write("\n], " + json.dumps({"displayTimeUnit": "ms", "otherData": other}, allow_nan=False)[1:] + "\n")


def _flow_blocks(trace: Trace, comp_segments, comm_segments, counts):
    """The flow arrows' lines, a block of comm rows at a time, in comm row order (flow ids count
    the matched sends in that order).  A send's end is the compute row trace.consumer names (worked
    out here for a trace without it); its thread is the compute thread when the receiver has one
    lane, else the receiver's lanes are computed (the last two receivers' kept)."""
    comp, comm = trace.compute, trace.comm
    consumer = trace.consumer if trace.consumer is not None else consumer_rows(comp, comm)
    segment_of = {rank: (a, b) for rank, (a, b, _) in _rank_segments(comp, comp_segments).items()}
    lanes_of: dict[tuple[int, int], np.ndarray] = {}  # compute segment -> its rows' tids (several lanes only)
    next_id = 0
    for a, b in comm_segments:
        rows = comm[a:b]
        if not any((consumer[c:min(c + BLOCK, b)] >= 0).any() for c in range(a, b, BLOCK)):
            continue
        for c, d, tids in _tid_blocks(rows, trace.ranks):
            fed = consumer[a + c:a + d]
            keep = np.flatnonzero(fed >= 0)
            if not len(keep):
                continue
            fed = fed[keep]
            fed_rows = comp[fed]
            fed_tid = np.full(len(keep), THREADS["compute"][0], dtype=np.int64)
            fed_tid[(fed_rows["rank"] < 0) | (fed_rows["rank"] >= trace.ranks)] = 0
            for rank in np.unique(fed_rows["rank"]).tolist():
                if counts.get((rank, "compute"), 1) == 1:
                    continue
                segment = segment_of[rank]
                if segment not in lanes_of:
                    if len(lanes_of) >= 2:
                        del lanes_of[next(iter(lanes_of))]  # the oldest
                    lanes_of[segment] = _segment_tids(comp[segment[0]:segment[1]], trace.ranks)[0]
                mine = fed_rows["rank"] == rank
                fed_tid[mine] = lanes_of[segment][fed[mine] - segment[0]]
            yield _flows(next_id, rows[c:d][keep], tids[keep], fed_rows, fed_tid)
            next_id += len(keep)


def _us_texts(ns: np.ndarray) -> list[str]:
    """:func:`_us` of each value as JSON text, column-wise (values past 2**53 ns, where a float
    no longer holds every nanosecond, go through _us itself)."""
    ns = np.asarray(ns, dtype=np.int64)
    if len(ns) and np.abs(ns).max() >= 2**53:
        return [json.dumps(_us(v)) for v in ns.tolist()]
    whole = ns % 1000 == 0
    v = ns / 1000
    short = ~whole & ((v * 1000.0).astype(np.int64) < ns)  # int(v * 1000) must give ns back
    while short.any():
        v[short] = np.nextafter(v[short], np.inf)
        short = ~whole & ((v * 1000.0).astype(np.int64) < ns)
    return [str(i) if w else repr(x) for i, x, w in zip((ns // 1000).tolist(), v.tolist(), whole.tolist())]


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"Out of range float values are not JSON compliant: {what}")
    return values


def _part_args(parts: list[int]) -> list[str]:
    return [f', "part": {p}, "component": "{_component(p)}"' if p >= 0 else "" for p in parts]


def _compute_slices(rows: np.ndarray, tids: np.ndarray) -> list[str]:
    c0, c1 = _ns(_finite(rows["start"], "start")), _ns(_finite(rows["end"], "end"))
    ts, dur = _us_texts(c0), _us_texts(c1 - c0)
    kinds = [KIND_NAMES[k] for k in rows["kind"].tolist()]
    mbs, dirs = rows["microbatch"].tolist(), rows["direction"].tolist()
    return [
        f'{{"ph": "X", "cat": "compute", "name": "{k}{m}{f" (dir {d})" if d else ""}", "pid": {r}, "tid": {t}, '
        f'"ts": {a}, "dur": {b}, "args": {{"microbatch": {m}, "stage": {s}, "direction": {d}, "kind": "{k}", '
        f'"action": {act}, "overlapped": {"true" if o else "false"}{part}}}}}'
        for k, m, d, r, t, a, b, s, act, o, part in zip(
            kinds, mbs, dirs, rows["rank"].tolist(), tids.tolist(), ts, dur, rows["stage"].tolist(),
            rows["action"].tolist(), rows["overlapped"].tolist(), _part_args(rows["part"].tolist()))
    ]  # fmt: skip


def _comm_slices(rows: np.ndarray, tids: np.ndarray) -> list[str]:
    m0, m1 = _ns(_finite(rows["start"], "start")), _ns(_finite(rows["end"], "end"))
    ts, dur = _us_texts(m0), _us_texts(m1 - m0)
    out = []
    for ch, kind, m, s, d, r, peer, act, part, t, a, b, extra in zip(
        rows["channel"].tolist(), rows["kind"].tolist(), rows["microbatch"].tolist(), rows["stage"].tolist(),
        rows["direction"].tolist(), rows["rank"].tolist(), rows["peer"].tolist(), rows["action"].tolist(),
        rows["part"].tolist(), tids.tolist(), ts, dur, _part_args(rows["part"].tolist()),
    ):  # fmt: skip
        if ch == P2P:
            what = P2P_KINDS[kind] if 0 <= kind < len(P2P_KINDS) else f"kind {kind}"
            name, cat, more = f"{what} {m} to rank {peer}", "p2p", f'"to": {peer}, "consumer_action": {act}'
        else:
            what = KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else f"kind {kind}"
            phase = (_component(part) or "a2a").split("_")[0]  # dispatch / combine
            name, cat, more = f"{phase} {what}{m}", "a2a", f'"action": {act}'
        out.append(f'{{"ph": "X", "cat": "{cat}", "name": "{name}", "pid": {r}, "tid": {t}, "ts": {a}, "dur": {b}, '
                   f'"args": {{"microbatch": {m}, "stage": {s}, "direction": {d}, "kind": "{what}", {more}{extra}}}}}')
    return out


def _counters(rank: int, times: np.ndarray, units: np.ndarray, nbytes: np.ndarray) -> list[str]:
    return [
        f'{{"ph": "C", "pid": {rank}, "tid": 0, "name": "activation memory", "ts": {t}, '
        f'"args": {{"units": {u}, "bytes": {b!r}}}}}'
        for t, u, b in zip(_us_texts(_ns(_finite(times, "memory time"))), units.tolist(),
                           _finite(nbytes.astype(float), "memory bytes").tolist())
    ]  # fmt: skip


def _flows(first_id: int, sends: np.ndarray, send_tids: np.ndarray, fed: np.ndarray, fed_tids: np.ndarray) -> list[str]:
    """Flow arrow lines: send row i of ``sends`` to compute row i of ``fed``, ids from ``first_id``."""
    m0, m1 = _ns(sends["start"]), _ns(sends["end"])
    c0, c1 = _ns(fed["start"]), _ns(fed["end"])
    names = [P2P_KINDS[k] if k < len(P2P_KINDS) else "p2p" for k in sends["kind"].tolist()]
    out = []
    for i, (name, pid, tid, ts, cpid, ctid, cts) in enumerate(zip(
        names, sends["rank"].tolist(), send_tids.tolist(), _us_texts((m0 + m1) // 2),
        fed["rank"].tolist(), fed_tids.tolist(), _us_texts((c0 + c1) // 2),
    )):  # fmt: skip
        fid = first_id + i
        out.append(f'{{"ph": "s", "cat": "p2p-flow", "name": "{name}", "id": {fid}, "pid": {pid}, "tid": {tid}, "ts": {ts}}}')
        out.append(f'{{"ph": "f", "bp": "e", "cat": "p2p-flow", "name": "{name}", "id": {fid}, "pid": {cpid}, '
                   f'"tid": {ctid}, "ts": {cts}}}')
    return out
