"""Resource guards: refuse a run that would exhaust memory, and bound the engine.

Memory.  A run holds a few Python objects per op while it simulates (the
schedule, SimPy events, trace rows) and the charts draw one patch per op.
Measured through ``dualpipe-sim run`` (zb-h1, 16 stages, 500 -> 2000
micro-batches, charts included) peak memory grew by about 6.3 KB per op, the
simulation alone by about 1 KB per op; :data:`BYTES_PER_OP` rounds that up to
8 KiB.  A scenario of S stages and M micro-batches has at most 3 S M ops (F, I
and W for every stage of every micro-batch), so it is refused before anything
is built when 3 S M x 8 KiB exceeds ``limits.max_memory`` (default
:data:`DEFAULT_MAX_MEMORY` = 4 GiB, i.e. about 520 000 ops).

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

from .units import nbytes as _bytes

BYTES_PER_OP = 8 * 1024
DEFAULT_MAX_MEMORY = 4 * 1024**3
OPS_PER_STAGE_AND_MICROBATCH = 3  # F, I, W: the most any schedule runs
TRACE_BYTES_FACTOR = 6  # Python memory per byte of trace JSON while it is read (5.2 measured)
MAX_TRACE_BYTES = DEFAULT_MAX_MEMORY // TRACE_BYTES_FACTOR  # JSON bytes, after gzip: about 716 MB
EVENTS_PER_OP = 32  # generous: runs use about 3 SimPy events per op, transfers included (measured)


def estimate(stages: int, microbatches: int) -> tuple[int, int]:
    """(most ops, bytes) a run of this shape may need."""
    ops = OPS_PER_STAGE_AND_MICROBATCH * stages * microbatches
    return ops, ops * BYTES_PER_OP


def size_problem(stages: int, microbatches: int, max_memory: float) -> str | None:
    """None when the shape fits, else one line with the estimate and the way out."""
    ops, _ = estimate(stages, microbatches)
    return ops_problem(ops, max_memory, f"{stages} stages x {microbatches} micro-batches is up to {ops:,} ops")


def ops_problem(ops: int, max_memory: float, what: str) -> str | None:
    """The same rule for a known op count (e.g. a schedule file's); ``what`` describes it."""
    need = ops * BYTES_PER_OP
    if need <= max_memory:
        return None
    return (
        f"limits.max_memory: {what}, about {_bytes(need)} to simulate and chart ({BYTES_PER_OP // 1024} KiB "
        f"per op), over the limit of {_bytes(max_memory)}; use fewer stages or micro-batches, or raise "
        f"limits.max_memory"
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
