"""Activation memory over time, per rank, read off the trace's memory events.

Both the Chrome trace counter track and memory.png draw these levels, so they
agree with each other and with ``metrics.peak_activation`` by construction of
the same events (not of the same code): the metric takes the running maximum
over every event, the timeline the level after each instant.  With frees
sorted before allocations at one instant (TraceBuilder), the two maxima agree.
"""

from __future__ import annotations

import numpy as np

from ...engine.trace import Trace
from ...units import byte_scale, nbytes as format_bytes  # noqa: F401  (kept importable from here)


def activation_levels(trace: Trace, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, units, bytes): the level held from each time until the next.

    Starts at (0, 0, 0); one entry per distinct event time after that, holding
    the level once every allocation and free at that instant has happened.
    """
    rows = trace.memory[trace.memory["rank"] == rank]
    times = np.concatenate([[0.0], rows["time"]])
    units = np.concatenate([[0], np.cumsum(rows["units"])])
    nbytes = np.concatenate([[0.0], np.cumsum(rows["bytes"])])
    # Keep the last entry of each run of equal times: the level after that instant.
    last = np.ones(len(times), dtype=bool)
    last[:-1] = times[1:] != times[:-1]
    return times[last], units[last], nbytes[last]
