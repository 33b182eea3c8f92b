"""Resource guards: refuse a run that would exhaust memory, and bound the engine.

Memory.  A run holds a few Python objects per op while it simulates (the
schedule's actions, the replay's per-action lists, the trace rows and the
metrics' temporaries) and the Gantt chart draws one patch per trace row while
it draws boxes.  Measured as the growth of peak RSS of ``dualpipe-sim run
--plots none`` between 1/8 and the full size (``python benchmarks/engine.py
--targets``): about 0.84 to 0.91 KB per op with one trace row per op (1F1B 64
stages with P2P, ZB-H1 16 stages), 2.9 KB per op with about 20 rows per op
(``deepseek-v3.toml``, components), so about 110 B per further row.  A chart
drawn box by box costs its picture, 4 bytes a pixel (Agg's RGBA canvas: saving
a blank 45 x 40.68 in figure at 110 dpi grows peak RSS by 89.5 MiB for its
84.5 MiB of pixels), and about 7.6 KB per box beyond that (1F1B 64 x 128:
16,384 boxes on a 4,950 x 4,474 px chart, 203 MB over ``--plots none``).  The
estimate (:func:`estimate`) rounds these up: :data:`BYTES_PER_OP` per op,
:data:`BYTES_PER_ROW` per further trace row of an op, :data:`BYTES_PER_BOX` per
box, and :func:`chart_bytes` for the picture.  gantt.png is widened after the
run until its labels fit (gantt.label_width, up to chart_geometry.MAX_WIDTH_IN), which
the run's shape cannot tell beforehand, so the picture is counted at that cap.
A scenario of S stages and M micro-batches has at most 3 S M ops (F, I
and W for every stage of every micro-batch).  Boxes are drawn only while a
rank's row holds at most :data:`BOX_ACTIONS_PER_RANK` actions (chart_geometry's
MIN_BOX_PX on its widest figure; bands beyond), and a rank runs at least M
actions (an F and a B or I per micro-batch on each stage it holds, at most two
to an action), so the chart's term is counted when M is at most that, for at
most that many actions on each of at most S ranks.  The run is refused before
anything is built when the estimate exceeds ``limits.max_memory`` (default
:data:`DEFAULT_MAX_MEMORY` = 4 GiB).  Not counted: the 50 to 60 MB any run
starts from (the interpreter, numpy, matplotlib).

Traces.  ``calibrate`` parses a profiler trace whole (json.loads): read and
parsed, DeepSeek's 3.1 MB ``train.json`` peaked at 5.2 bytes of Python memory
per byte of JSON (tracemalloc, gzip or not), :data:`TRACE_BYTES_FACTOR`
rounds that up to 6.  So a trace is refused past :data:`MAX_TRACE_BYTES` of
JSON (after gzip), the same 4 GiB budget / 6, about 716 MB: some 230 times a
one-pair trace such as DeepSeek's, which is all a calibration needs.

Events.  A rank process and a transfer each take a bounded number of SimPy
events per action, so a run that can finish does so in at most
:func:`max_events` steps; the engine stops with the stuck ops named if it ever
goes past that (a livelock guard: nothing can loop forever).
"""

from __future__ import annotations

from .chart_geometry import BOX_ACTIONS_PER_RANK, DPI, MAX_WIDTH_IN, figure_in
from .units import nbytes as _bytes

BYTES_PER_OP = 768  # per op, its one trace row included (540-660 B measured: benchmarks/engine.py --targets)
BYTES_PER_ROW = 128  # per further trace row of an op: components, all-to-all phases (about 110 B measured)
BYTES_PER_BOX = 10 * 1024  # per box the Gantt chart draws (about 9.2 KB measured)
BYTES_PER_PIXEL = 4  # RGBA
DEFAULT_MAX_MEMORY = 4 * 1024**3
OPS_PER_STAGE_AND_MICROBATCH = 3  # F, I, W: the most any schedule runs
TRACE_BYTES_FACTOR = 6  # Python memory per byte of trace JSON while it is read (5.2 measured)
MAX_TRACE_BYTES = DEFAULT_MAX_MEMORY // TRACE_BYTES_FACTOR  # JSON bytes, after gzip: about 716 MB
EVENTS_PER_OP = 32  # generous: runs use about 3 SimPy events per op, transfers included (measured)


def estimate(stages: int, microbatches: int, rows_per_op: float = 1.0) -> tuple[int, int]:
    """(most ops, bytes) a run of this shape may need, charts included; ``rows_per_op``: trace
    rows per op (1 for simple costs; the component model's parts per op)."""
    ops = OPS_PER_STAGE_AND_MICROBATCH * stages * microbatches
    boxes = min(ops, stages * BOX_ACTIONS_PER_RANK) if microbatches <= BOX_ACTIONS_PER_RANK else 0
    return ops, memory_for(ops, boxes, rows_per_op, ranks=stages)  # at most one rank per stage


def memory_for(ops: int, boxes: int, rows_per_op: float = 1.0, ranks: int = 0) -> int:
    """Bytes for ``ops`` ops of ``rows_per_op`` trace rows each, ``boxes`` of them drawn as boxes
    on a chart of ``ranks`` rows (its picture counted when it draws boxes and ``ranks`` is given)."""
    rows = max(rows_per_op, 1.0)
    picture = chart_bytes(ranks, pair=rows > 1) if boxes and ranks else 0
    return int(ops * (BYTES_PER_OP + (rows - 1) * BYTES_PER_ROW) + boxes * rows * BYTES_PER_BOX) + picture


def chart_bytes(ranks: int, pair: bool = False) -> int:
    """The pixels of a box-by-box gantt.png of ``ranks`` rows at its widest, 4 bytes each;
    ``pair``: with the pair view underneath (components).  The height as gantt_file.save_gantt
    lays it out, by the same function (chart_geometry.figure_in)."""
    height = figure_in(ranks, MAX_WIDTH_IN, pair)
    return int(MAX_WIDTH_IN * DPI) * int(height * DPI) * BYTES_PER_PIXEL  # Agg truncates, as here


def size_problem(stages: int, microbatches: int, max_memory: float, rows_per_op: float = 1.0) -> str | None:
    """None when the shape fits, else one line with the estimate and the way out."""
    ops, need = estimate(stages, microbatches, rows_per_op)
    return _problem(need, max_memory, f"{stages} stages x {microbatches} micro-batches is up to {ops:,} ops")


def ops_problem(ops: int, max_memory: float, what: str, boxes: int | None = None, ranks: int = 0) -> str | None:
    """The same rule for a known op count (e.g. a schedule file's; ``boxes``: how many of them
    the chart draws as boxes, all when not given, on ``ranks`` rows); ``what`` describes it."""
    return _problem(memory_for(ops, ops if boxes is None else boxes, ranks=ranks), max_memory, what)


def _problem(need: int, max_memory: float, what: str) -> str | None:
    if need <= max_memory:
        return None
    return (
        f"limits.max_memory: {what}, about {_bytes(need)} to simulate and chart ({BYTES_PER_OP} B "
        f"per op, {BYTES_PER_BOX // 1024} KiB per chart box, {BYTES_PER_PIXEL} B per pixel of its picture), "
        f"over the limit of {_bytes(max_memory)}; use fewer stages or micro-batches, or raise limits.max_memory"
    )


def max_events(num_ops: int, num_ranks: int) -> int:
    """Upper bound on the SimPy events of a run that finishes."""
    return EVENTS_PER_OP * (num_ops + num_ranks) + 1000


# Text inputs (scenario files, chunk.file, schedule files) are read whole; a scenario is a few
# kB, a schedule file of the largest run limits.max_memory allows (about 520 000 ops, ~20 bytes
# of JSON each) about 10 MB.  Past these a file is not one (/dev/zero, a disk image) and is
# refused before it fills memory.
MAX_SCENARIO_BYTES = 16 * 1024**2
MAX_SCHEDULE_BYTES = 256 * 1024**2


class TooBig(ValueError):
    """A text input over its size cap; the message names the file and the cap."""


def read_text(path, max_bytes: int = MAX_SCENARIO_BYTES) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark dropped), reading at most ``max_bytes`` + 1
    bytes: more is TooBig.  OSError and UnicodeDecodeError propagate for the caller to word."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise TooBig(f"{path}: more than {_bytes(max_bytes)}, too large to be one (is it the file you meant?)")
    return raw.decode("utf-8-sig")
