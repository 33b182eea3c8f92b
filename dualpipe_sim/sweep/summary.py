"""summary.md: for each shape, the fastest schedule that fits in memory.

A shape is one combination of every grid key except ``pipeline.schedule``
(at least stages x micro-batches).  A schedule fits when its peak memory on
its fullest rank is at most the memory limit or, without one, the point's
``device_memory`` (a ``[hardware]`` section).  Peak memory is ``memory.total``
(parameters, gradients, optimizer states and activations) where a ``[model]``
gives it, else ``peak_memory_bytes`` = peak activation bytes + parameter bytes.  Fastest = smallest makespan, or
with [step] work the smallest training step (``step.total``); a tie goes to
the schedule name that sorts first, so the choice is deterministic.

Points of one sweep may run on different numbers of GPUs (``gpus``: more stages,
or DualPipeV's half as many ranks as DualPipe).  Then the fastest step is not
the best use of the GPUs, and the summary also names the *most efficient* point
that fits: the most tokens/s per GPU where the step has tokens (a [model]), else
the least step time x GPUs (GPU-milliseconds per step).
"""

from __future__ import annotations

import re

from ..model import validation_band
from ..units import count, number, percent
from ..units import nbytes as human_bytes
from .errors import SweepError
from ..errors import shown

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | float) -> float:
    """``80e9``, ``80GB`` (10^9) or ``80GiB`` (2^30), or a number -> bytes (the memory limit)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _BYTES.match(str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise SweepError("memory_limit", f"expected a size in bytes such as 80e9, 80GB or 80GiB, got {shown(text)}")
        value = float(match.group(1)) * _UNITS[unit]
    if not value > 0 or value == float("inf"):
        raise SweepError("memory_limit", f"must be a finite size > 0, got {shown(text)}")
    return value


def shape_keys(cols: list[str]) -> list[str]:
    """Grid keys that define a shape: every column before ``status`` but the schedule."""
    return [c for c in cols[: cols.index("status")] if c != "pipeline.schedule"]


def row_memory(row: dict[str, str]) -> float:
    """The fullest rank's memory: everything with a [model], else activations + parameters."""
    return float(row.get("memory.total") or row["peak_memory_bytes"])


def row_limit(row: dict[str, str], limit: float | None) -> float | None:
    """--memory-limit, else the point's device memory ([hardware]), else None (no limit)."""
    return limit if limit is not None else (float(row["device_memory"]) if row.get("device_memory") else None)


def fastest_fitting(rows: list[dict[str, str]], limit: float | None) -> tuple[dict | None, list[dict]]:
    """(fastest ok row within the limit or None, ok rows over the limit)."""
    fits = _fitting(rows, limit)
    over = [r for r in rows if r["status"] == "ok" and r not in fits]
    best = min(fits, key=lambda r: (step_time(r), r["pipeline.schedule"]), default=None)
    return best, over


def step_time(row: dict[str, str]) -> float:
    """A row's whole training step: step.total with [step] work, else the makespan."""
    return float(row.get("step.total") or row["makespan"])


def row_gpus(row: dict[str, str]) -> int | None:
    return int(row["gpus"]) if row.get("gpus") else None


def tokens_per_gpu(row: dict[str, str]) -> float:
    """tokens/s of the step over every GPU the point runs on (pipeline ranks x tensor x data x context)."""
    return float(row["throughput.tokens_per_second"]) / int(row["gpus"])


def has_tokens(rows: list[dict[str, str]]) -> bool:
    return bool(rows) and all(r.get("throughput.tokens_per_second") and r.get("gpus") for r in rows)


def efficiency_key(rows: list[dict[str, str]]):
    """Smaller is better: minus tokens/s per GPU when every row has tokens, else step time x GPUs."""
    if has_tokens(rows):
        return lambda r: -tokens_per_gpu(r)
    return lambda r: step_time(r) * int(r["gpus"])


def criterion(rows: list[dict[str, str]]) -> str:
    """The efficiency rule in words (``rows`` decide whether there are tokens)."""
    return ("most tokens/s per GPU: the step's tokens/s over every GPU the point runs on" if has_tokens(rows)
            else "least step time x GPUs: the GPU-milliseconds one step costs; no [model], so no tokens")


def efficiency_text(row: dict[str, str], tokens: bool) -> str:
    if tokens:
        return f"{number(tokens_per_gpu(row))} tokens/s per GPU"
    return f"{number(step_time(row) * int(row['gpus']), 6)} GPU-ms per step"


def most_efficient(rows: list[dict[str, str]]) -> dict | None:
    """The row that uses its GPUs best (efficiency_key); a tie goes to the schedule name that sorts first."""
    usable = [r for r in rows if r.get("gpus")]
    key = efficiency_key(usable)
    return min(usable, key=lambda r: (key(r), r["pipeline.schedule"]), default=None)


def _fitting(rows: list[dict[str, str]], limit: float | None) -> list[dict[str, str]]:
    return [r for r in rows if r["status"] == "ok"
            and (row_limit(r, limit) is None or row_memory(r) <= row_limit(r, limit))]


def _label(row: dict[str, str], keys: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys)


def across_points(rows: list[dict[str, str]], cols: list[str], limit: float | None) -> list[str]:
    """The section naming, over the whole sweep, the fastest point and the most efficient one
    (only when the points that fit run on different numbers of GPUs; [] otherwise)."""
    fits = _fitting(rows, limit)
    counts = sorted({g for r in fits if (g := row_gpus(r)) is not None})
    if len(counts) < 2:
        return []
    keys = cols[: cols.index("status")]
    order = {id(r): i for i, r in enumerate(rows)}  # a tie goes to the point that comes first in the grid
    fastest = min(fits, key=lambda r: (step_time(r), order[id(r)]))
    usable = [r for r in fits if r.get("gpus")]
    key, tokens = efficiency_key(usable), has_tokens(usable)
    best = min(usable, key=lambda r: (key(r), order[id(r)]))
    step = "training step" if any(r.get("step.total") for r in rows) else "makespan"

    def line(row):
        return (f"`{_label(row, keys)}`: {step} {number(step_time(row), 6)} ms on {count(row_gpus(row))} GPUs, "
                f"{efficiency_text(row, tokens)}")

    return [
        "",
        "## Across points on different numbers of GPUs",
        "",
        f"The points that fit run on {count(counts[0])} to {count(counts[-1])} GPUs, so the fastest step is not "
        f"necessarily the best use of the GPUs. Over every point that fits:",
        "",
        f"- fastest (smallest {step}, whatever the GPUs): {line(fastest)}",
        f"- most efficient ({criterion(usable)}): "
        + ("the same point" if best is fastest else line(best)),
    ]


def _cell(row: dict[str, str], key: str, fmt) -> str:
    return fmt(float(row[key])) if row.get(key) else "-"


def summary_markdown(rows: list[dict[str, str]], cols: list[str], limit: float | None) -> str:
    keys = shape_keys(cols)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
    devices = any(r.get("device_memory") for r in rows)
    step = any(r.get("step.total") for r in rows)  # [step] work: rank by the whole step
    tput = any(r.get("throughput.tokens_per_second_per_gpu") for r in rows)  # a [model]: throughput columns
    # Points on different numbers of GPUs: each shape's pick's GPUs and its most efficient schedule too
    ok = [r for r in rows if r["status"] == "ok" and r.get("gpus")]
    spread = len({r["gpus"] for r in ok}) > 1
    tokens = has_tokens(ok)
    limit_text = (
        f"memory limit {human_bytes(limit)} ({count(round(limit))} bytes) per rank"
        if limit is not None
        else "no memory limit given: each point's device memory from `[hardware]`"
        if devices
        else "no memory limit given, so every schedule fits"
    )
    what = (
        "parameters, gradients, optimizer states and activations where `[model]` gives them, else "
        if any(r.get("memory.total") for r in rows)
        else ""
    ) + "peak activation bytes + parameter bytes"
    lines = [
        "# Sweep summary",
        "",
        f"{len(rows)} points: {counts['ok']} ok, {counts['skipped']} skipped (the schedule cannot take the shape), "
        f"{counts['error']} error. See results.csv for every point.",
        "",
        f"For each shape, the fastest schedule (smallest {'training step, [step]' if step else 'makespan'}) whose peak memory per rank "
        f"({what}, on its fullest rank) fits: {limit_text}.",
        "",
        "| " + " | ".join([*keys, "fastest that fits", "makespan (ms)", *(["step (ms)"] if step else []),
                          "bubble ratio", "peak memory per rank",
                          *(["tokens/s per GPU", "MFU"] if tput else []), "over the limit", "skipped or error",
                          *(["GPUs", "most tokens/s per GPU" if tokens else "least time x GPUs"] if spread else [])])
        + " |",
        "|" + "---|" * (len(keys) + 6 + step + 2 * tput + 2 * spread),
    ]
    for shape, members in groups.items():
        best, over = fastest_fitting(members, limit)
        skipped = [r["pipeline.schedule"] for r in members if r["status"] != "ok"]
        over_text = ", ".join(f"{r['pipeline.schedule']} ({human_bytes(row_memory(r))})" for r in over)
        if best is None:
            cells = ["none fits" if over else "none ran", "", "", ""] + [""] * (step + 2 * tput)
        else:
            cells = [
                best["pipeline.schedule"],
                number(float(best["makespan"]), 6),
                *([number(step_time(best), 6)] if step else []),
                f"{float(best['bubble_ratio']):.2%}",
                human_bytes(row_memory(best)),
                *([_cell(best, "throughput.tokens_per_second_per_gpu", number),
                   _cell(best, "throughput.mfu", percent)] if tput else []),
            ]
        extra = []
        if spread:
            lean = most_efficient(_fitting(members, limit))
            extra = [count(row_gpus(best)) if best is not None and best.get("gpus") else "-",
                     "-" if lean is None else
                     f"{lean['pipeline.schedule']} ({count(row_gpus(lean))} GPUs, {efficiency_text(lean, tokens)})"]
        lines.append("| " + " | ".join([*shape, *cells, over_text or "-", ", ".join(skipped) or "-", *extra]) + " |")
    lines += across_points(rows, cols, limit)
    lines += ["", "Sizes are decimal (1 GB = 10^9 bytes)."]
    if tput:
        lines[-1] += (" Tokens/s per GPU and MFU (model FLOPs / GPUs x peak FLOP/s) are of the "
                      + ("training step ([step])." if step else "pipeline makespan alone (no [step] work: no gradient "
                         "sync or optimizer), an upper bound."))
        # how far off tokens/s was on published runs of each class the points are in: reported, not applied
        if bands := validation_band.lines(validation_band.from_cells(r) for r in ok):
            lines += ["", *(f"- {line}" for line in bands)]
    return "\n".join(lines) + "\n"
