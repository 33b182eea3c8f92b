"""--memory-limit's sizes: decimal units are powers of 10, binary ones powers of 2 (README: "sizes are
decimal, 1 GB = 10^9 bytes"; IEC 80000-13 for KiB, MiB, GiB, TiB)."""

from __future__ import annotations

import pytest

from dualpipe_sim.sweep.summary import parse_bytes


@pytest.mark.parametrize("text, nbytes", [
    ("80GB", 80e9), ("80 gb", 80e9), ("1.5TB", 1.5e12), ("512MB", 512e6), ("64kb", 64e3), ("2e9", 2e9),
    ("80GiB", 80 * 1024**3), ("1TiB", 1024**4), ("256MiB", 256 * 1024**2), ("4KiB", 4096), ("100B", 100.0),
])  # fmt: skip
def test_units(text, nbytes):
    assert parse_bytes(text) == pytest.approx(nbytes, rel=1e-15)
