"""units.py: numbers for people, checked against hand-written text."""

from __future__ import annotations

import math

import pytest

from dualpipe_sim import units


@pytest.mark.parametrize(
    "x,text",
    [
        (0, "0"),
        (1.5, "1.5"),
        (100.0, "100"),
        (12550.3, "12,550"),  # the 1.255e+04
        (18210.0, "18,210"),
        (123456.7, "123,457"),  # the whole integer part is kept, never an exponent
        (9999.6, "10,000"),  # rounding carries into a new digit
        (0.99996, "1"),
        (1 / 3, "0.3333"),
        (0.00123456, "0.001235"),
        (-2.5, "-2.5"),
        (-0.00001, "-10e-6"),  # below 1e-4: engineering, exponent a multiple of 3
        (1e15, "1e15"),
        (1e308, "100e306"),
        (999.96e15, "1e18"),  # mantissa carried into the next group
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
    ],
)
def test_number(x, text):
    assert units.number(x) == text


def test_no_python_exponent_anywhere_in_range():
    for exp in range(-12, 308):
        text = units.number(float(f"1.2345e{exp}"))
        assert "e+" not in text and "e-0" not in text, text


def test_duration_names_the_unit():
    assert units.duration(12550.3) == "12,550 ms"
    assert units.TIME_UNIT == "ms"


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0 B"),
        (512, "512 B"),
        (1000, "1 kB"),
        (1.5e6, "1.5 MB"),
        (1.8e10, "18 GB"),  # decimal: 1 GB = 10^9 bytes
        (4 * 1024**3, "4.29 GB"),  # 4 GiB shown in GB
        (999.96e6, "1 GB"),  # not "1000 MB"
        (3e12, "3 TB"),
        (math.inf, "inf B"),
    ],
)
def test_nbytes_decimal(n, text):
    assert units.nbytes(n) == text


def test_byte_scale_for_axes():
    assert units.byte_scale(32e9) == (1e9, "GB")
    assert units.byte_scale(999) == (1.0, "B")
    assert units.byte_scale(math.inf) == (1.0, "B")


def test_percent_and_count():
    assert units.percent(0.1234) == "12.3%"
    assert units.count(12_288_000_000) == "12,288,000,000"


@pytest.mark.parametrize("values,texts", [
    ([55.5, 5.35], ["55.50", "5.35"]),  # 4 significant digits in the largest: 2 decimals for 55.5 (s14h)
    ([53294.2, 184.4, 426.8], ["53,294", "184", "427"]),  # the largest has no decimals: none has
    ([60, 21], ["60", "21"]),  # whole numbers keep no decimals
    ([0.5, 0.25], ["0.5000", "0.2500"]),  # 0.5: 4 decimals for 4 significant digits
    ([0, 0], ["0", "0"]),
    ([2e18, 1.0], ["2e18", "1"]),  # outside fixed notation: number()'s text per value
])  # fmt: skip
def test_aligned_column_shares_its_decimals(values, texts):
    assert units.aligned(values) == texts
    assert len({len(t.rpartition(".")[2]) for t in texts if "." in t}) <= 1  # one decimal count per column


def test_text_table_two_line_headings_right_aligned():
    from dualpipe_sim.outputs import text_table

    lines = text_table.render([("", "rank", ["0", "10"]), ("between", "ops ms", ["5.350", "12.00"])])
    # widths: max(4, 2) = 4 and max(7, 6, 5) = 7, two spaces apart, every cell flush right
    assert lines == ["      between", "rank   ops ms", "   0    5.350", "  10    12.00"]
    assert text_table.render([("", "a", ["1"])]) == ["a", "1"]  # no top line when no heading has one
