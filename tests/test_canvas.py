"""plots/canvas.py: margins in inches whatever the figure's size, and PNGs without matplotlib's version.

Worked by hand: a 10 x 5 in figure with margins left 1.0, right 2.0, top 0.5, bottom 0.75 in puts its axes
from x = 1.0 to 10 - 2.0 = 8.0 in and from y = 0.75 to 5 - 0.5 = 4.5 in; on a 20 x 10 in figure the same margins
are the same inches (half the fractions)."""

from __future__ import annotations

import struct
import zlib

import pytest

from dualpipe_sim.outputs.plots import canvas


@pytest.mark.parametrize("width, height", [(10.0, 5.0), (20.0, 10.0)])
def test_margins_are_inches_on_each_side(width, height):
    fig = canvas.new_figure(width, height)
    canvas.place(fig, left=1.0, right=2.0, top=0.5, bottom=0.75)
    box = fig.add_subplot().get_position()
    assert (box.x0 * width, box.x1 * width) == pytest.approx((1.0, width - 2.0))
    assert (box.y0 * height, box.y1 * height) == pytest.approx((0.75, height - 0.5))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk of a PNG (ISO/IEC 15948: 8-byte signature, then length, type, body, CRC)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + length]
        assert struct.unpack(">I", data[i + 8 + length:i + 12 + length])[0] == zlib.crc32(kind + body)
        out.append((kind, body))
        i += 12 + length
    return out


def test_a_saved_png_has_the_canvas_size_and_no_software_chunk(tmp_path):
    fig = canvas.new_figure(2.0, 1.0)
    canvas.place(fig, left=0.2, right=0.2, top=0.2, bottom=0.2)
    fig.add_subplot().plot([0, 1], [0, 1])
    path = tmp_path / "c.png"
    canvas.save(fig, path)
    chunks = _chunks(path.read_bytes())
    width, height = struct.unpack(">II", chunks[0][1][:8])  # IHDR
    assert (chunks[0][0], width, height) == (b"IHDR", 2 * canvas.DPI, 1 * canvas.DPI)
    texts = [body.split(b"\0")[0] for kind, body in chunks if kind in (b"tEXt", b"iTXt", b"zTXt")]
    assert b"Software" not in texts  # the same chart is the same bytes on any matplotlib that draws it alike
    assert not any(b"matplotlib" in body.lower() for kind, body in chunks if kind != b"IDAT")
