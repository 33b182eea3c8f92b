"""Numbers for people: the one place that turns times, sizes and ratios into text.

Everything a person reads (terminal tables, compare.md, summary.md, chart
titles and labels, error messages) formats its numbers here, so one quantity
reads the same everywhere.  Machine-read output (metrics.json, results.csv)
keeps full-precision floats and does not use this module.

Rules:

* Plain numbers use fixed notation with thousands separators and about
  ``digits`` significant digits, never fewer than the whole integer part
  (``12550.3`` -> ``12,550``, ``0.00123456`` -> ``0.001235``).  Only magnitudes
  outside [1e-4, 1e15) use engineering notation, a mantissa in [1, 1000) and
  an exponent that is a multiple of 3 (``1.23e18``, ``45.6e-6``): never
  Python's ``1.255e+04``.
* Times are in the scenario's unit, milliseconds (:data:`TIME_UNIT`):
  ``duration(12550.3)`` is ``"12,550 ms"``.  A column or axis that holds many
  times says ``(ms)`` once in its heading and uses :func:`number`.
* Sizes are **decimal**: 1 kB = 10^3 bytes, 1 GB = 10^9 bytes (as the GPU
  vendors state HBM), 3 significant digits: ``nbytes(18.2e9)`` is
  ``"18.2 GB"``.  Inputs may still be given in GiB (``--memory-limit 80GiB``);
  they are shown in GB.
* Ratios are percentages: ``percent(0.1234)`` is ``"12.3%"``.

Non-finite values print as ``inf``, ``-inf`` and ``nan`` (with the unit), so a
formatter never raises on a number.
"""

from __future__ import annotations

import math
from decimal import Decimal

TIME_UNIT = "ms"
BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")  # powers of 1000
_FIXED_MIN, _FIXED_MAX = 1e-4, 1e15  # fixed notation for magnitudes in [min, max)


def number(x: float, digits: int = 4) -> str:
    """``x`` with about ``digits`` significant digits, fixed notation where readable."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)  # 'inf', '-inf', 'nan'
    if x == 0:
        return "0"
    mag = abs(x)
    if mag < _FIXED_MIN or mag >= _FIXED_MAX:
        return _engineering(x, digits)
    decimals = max(0, digits - 1 - math.floor(math.log10(mag)))
    text = f"{x:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _engineering(x: float, digits: int) -> str:
    # Decimal, not x / 10**exp3: near the float limits that power under- or overflows
    # (5e-324 / 10**-324 divides by 0.0).
    d = Decimal(x)
    exp = d.adjusted()  # floor(log10(|x|)), exact even for subnormals
    exp3 = exp - exp % 3
    mantissa = round(d.scaleb(-exp3), max(0, digits - 1 - (exp - exp3)))
    if abs(mantissa) >= 1000:  # rounding carried into the next group (999.96e3 -> 1e6)
        exp3 += 3
        mantissa = round(d.scaleb(-exp3), max(0, digits - 1))
    text = f"{mantissa:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}e{exp3}"


def duration(ms: float, digits: int = 4) -> str:
    """A time in the scenario's unit: ``"12,550 ms"``."""
    return f"{number(ms, digits)} {TIME_UNIT}"


def byte_scale(value: float) -> tuple[float, str]:
    """(divisor, unit) that shows ``value`` bytes with 1-3 digits before the point
    (decimal units); for chart axes, where every tick shares one unit."""
    value = abs(float(value))
    div, unit = 1.0, BYTE_UNITS[0]
    for power, name in enumerate(BYTE_UNITS[1:], start=1):
        if not math.isfinite(value) or value < 1000.0**power:
            break
        div, unit = 1000.0**power, name
    return div, unit


def nbytes(n: float, digits: int = 3) -> str:
    """A size in decimal units with ``digits`` significant digits: ``"18.2 GB"``."""
    n = float(n)
    if not math.isfinite(n):
        return f"{n} B"
    div, unit = byte_scale(n)
    shown = float(f"{n / div:.{digits}g}")
    if abs(shown) >= 1000 and unit != BYTE_UNITS[-1]:  # 999.96 MB rounds to 1 GB, not 1000 MB
        div, unit = div * 1000, BYTE_UNITS[BYTE_UNITS.index(unit) + 1]
    return f"{number(n / div, digits)} {unit}"


def percent(ratio: float, decimals: int = 1) -> str:
    """A ratio as a percentage: ``0.1234`` -> ``"12.3%"``."""
    ratio = float(ratio)
    if not math.isfinite(ratio):
        return f"{ratio}%"
    return f"{ratio:.{decimals}%}"


def count(n: int) -> str:
    """A whole count with thousands separators: ``12,288,000,000``."""
    return f"{int(n):,}"


def layout(stages: int, ranks: int, microbatches: int) -> str:
    """A run's shape in words, singular where a count is 1: ``8 stages on 4 ranks, 16 micro-batches``,
    ``1 stage on 1 rank, 1 micro-batch`` (the titles of gantt.png and memory.png, the run's summary)."""
    def words(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    return (f"{words(stages, 'stage', 'stages')} on {words(ranks, 'rank', 'ranks')}, "
            f"{words(microbatches, 'micro-batch', 'micro-batches')}")


def aligned(values: list[float], digits: int = 4) -> list[str]:
    """One column of numbers with the same decimals, so their points line up: about ``digits``
    significant digits in the largest (``[55.5, 5.35]`` -> ``["55.50", "5.35"]``, whole numbers without
    decimals); a column with a
    magnitude :func:`number` writes in engineering notation keeps :func:`number`'s text per value."""
    finite = [abs(float(x)) for x in values if math.isfinite(float(x))]
    top = max(finite, default=0.0)
    if top == 0 or not _FIXED_MIN <= top < _FIXED_MAX:
        return [number(x, digits) for x in values]
    whole = all(float(x).is_integer() for x in values if math.isfinite(float(x)))  # 60, not 60.00
    decimals = 0 if whole else max(0, digits - 1 - math.floor(math.log10(top)))
    return [f"{float(x):,.{decimals}f}" if math.isfinite(float(x)) else str(float(x)) for x in values]
