"""Terminal tables with two-line headings: a column's name above, its unit (or second word) below.

One word per heading line keeps neighbouring headings from running together ("between ops closed
form peak act" read as one phrase); every cell is right-aligned to its column with at least two
spaces between columns, so the numbers (formatted with :func:`dualpipe_sim.units.aligned`) line up.
"""

from __future__ import annotations

GAP = "  "


def render(columns: list[tuple[str, str, list[str]]]) -> list[str]:
    """``columns`` = [(top heading, bottom heading, cells)], cells one per row; the lines of the table."""
    widths = [max(len(top), len(bottom), *(len(c) for c in cells)) for top, bottom, cells in columns]
    rows = [[top for top, _, _ in columns], [bottom for _, bottom, _ in columns],
            *zip(*(cells for _, _, cells in columns))]
    lines = [GAP.join(cell.rjust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return lines if lines[0] else lines[1:]  # no top line when no heading has one
