"""B200's memory-bound kernels from a B200 measurement (issue 21, s14g).

Until s14g the B200 preset took 85% of its 8 TB/s datasheet, the H100 / A100 fraction of gpu-benches' "scale" kernel,
and the 2.5 us floor of gpu-benches' back-to-back small kernels on H200 / A100: no B200 figure. NVIDIA/cccl#7391's
nvbench table of cub::DeviceTransform relu on "NVIDIA B200" (one load and one store a value, 2^16-2^28 values;
tests/data/kernels/cccl7391_b200_relu.csv) gives both, from its batch (back-to-back) times: the bytes over the time at
the largest size, as gpu-benches' scale kernel gives H100's, and the smallest size's time as the floor. Checked here:
the transcription against the table's own derived columns, the preset recomputed from the rows, the model's kernel
against the rows, and the other presets left as they were (docs/model.md, "Kernel rates", the achievable HBM row)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

TABLE = Path(__file__).parent / "data" / "kernels" / "cccl7391_b200_relu.csv"
ROWS = {(r["dtype"], int(r["elements"])): r for r in kernel_table(TABLE)}
SIZE = {"F16": 2, "BF16": 2}
UNIT = {"GB/s": 1e9, "TB/s": 1e12}
# nvbench's BWUtil is over the bus peak the driver reports: 2 x 3,996 MHz x 7,680 bits / 8 = 7.672 TB/s on B200
# (pytorch/ao#4002), not the 8 TB/s datasheet
BUS_PEAK = 2 * 3996e6 * 7680 / 8
VALIDATION = Path(__file__).resolve().parents[1] / "scenarios" / "validation"


def _bytes(dtype: str, n: int) -> int:
    return 2 * n * SIZE[dtype]  # one load and one store a value


def test_table_rows():
    assert set(ROWS) == {(t, 1 << e) for t in ("F16", "BF16") for e in (16, 20, 24, 28)}


@pytest.mark.parametrize("key", sorted(k for k, r in ROWS.items() if r["bw_value"]))
def test_transcription_against_the_tables_own_columns(key):
    # GlobalMem BW = bytes / cold GPU time, Elem/s = values / that time, BWUtil = BW / the bus peak: three columns the
    # table derives from the time, so a mistyped digit in any of them shows (each printed to 3-4 significant digits)
    r = ROWS[key]
    gpu = float(r["gpu_time_us"]) * 1e-6
    bw = float(r["bw_value"]) * UNIT[r["bw_unit"]]
    assert _bytes(*key) / gpu == pytest.approx(bw, rel=2e-4)
    assert float(r["bwutil_pct"]) / 100 == pytest.approx(_bytes(*key) / gpu / BUS_PEAK, abs=6e-5)
    elem = float(r["elem_per_s"][:-1]) * {"G": 1e9, "T": 1e12}[r["elem_per_s"][-1]]
    assert key[1] / gpu == pytest.approx(elem, rel=6e-4)


def test_b200_hbm_is_the_largest_rows_batch_bandwidth():
    # 2 x 2^28 x 2 B = 1,073,741,824 B back to back in 156.563 us: 6.858 TB/s, 85.7% of the 8 TB/s datasheet (the
    # preset took 85% before: 6.8 TB/s) and 89.4% of the bus peak
    r = ROWS[("F16", 1 << 28)]
    measured = _bytes("F16", 1 << 28) / (float(r["batch_gpu_us"]) * 1e-6)
    assert measured == pytest.approx(6.8582e12, rel=1e-4)
    assert PRESETS["B200"].hbm == pytest.approx(measured, rel=1e-4)
    # the cold time (one call after an L2 flush, as Liger's do_bench times): 6.553 TB/s, 4.4% under
    assert _bytes("F16", 1 << 28) / (float(r["gpu_time_us"]) * 1e-6) == pytest.approx(6.5534e12, rel=1e-4)


def test_b200_floor_is_the_smallest_rows_batch_time():
    # 2^16 values (256 KiB moved) back to back: 2.044 us (F16) and 2.036 us (BF16), mean 2.040 us; the bytes at
    # 6.858 TB/s are 0.04 us of it
    small = [float(ROWS[(t, 1 << 16)]["batch_gpu_us"]) * 1e-6 for t in ("F16", "BF16")]
    assert sum(small) / 2 == pytest.approx(2.040e-6, rel=1e-9)
    assert PRESETS["B200"].floor == pytest.approx(sum(small) / 2, rel=1e-9)


def test_model_against_the_rows():
    # floor + bytes / hbm for the 1 GiB relu: 2.04 + 156.563 = 158.60 us, 1.3% over the batch time (the floor is
    # paid once more than bytes over time counts it) and 3.2% under the cold one
    st = derive.setup(scenario.load(VALIDATION / "mlperf51-llama8b-8b200.toml"))
    tb = kernels.Table(PRESETS["B200"], kernels.Layout(seq=8192, micro_batch=1), st.cfg)
    secs = tb.memory("relu", "mlp_forward", _bytes("F16", 1 << 28))
    assert secs == pytest.approx(2.04e-6 + 156.563e-6, rel=2e-4)
    assert secs / 156.563e-6 - 1 == pytest.approx(0.0130, abs=5e-4)
    assert secs / 163.846e-6 - 1 == pytest.approx(-0.0320, abs=5e-4)
    # 2^16 values: floor-bound, 2.04 + 0.04 = 2.08 us against 2.044 / 2.036 us measured
    assert tb.memory("relu small", "mlp_forward", _bytes("F16", 1 << 16)) == pytest.approx(2.0782e-6, rel=1e-3)
    assert tb.rows[-1].bound == "latency"


def test_other_presets_keep_their_sources():
    # H100 / H800 / H200 and A100 Azure's BabelStream Mul on their own SKUs (since s14i, tests/test_hopper_hbm.py); every
    # preset but B200 (and GB200, its GPU: B200's carried over, s16a; GB300: GB200's, s17b) keeps gpu-small-kernels' 2.5 us floor
    blackwell = ("B200", "GB200", "GB300", "B300")  # B300: its own copy kernel (s18m, tests/test_b300_preset.py)
    assert {n: p.hbm for n, p in PRESETS.items() if n not in blackwell} == {
        "H100": 2.90e12, "H800": 2.90e12, "H200": 4.00e12, "A100": 1.61e12}
    assert {n: p.floor for n, p in PRESETS.items() if n not in blackwell} == dict.fromkeys(("H100", "H800", "H200", "A100"), 2.5e-6)
    assert (PRESETS["GB200"].hbm, PRESETS["GB200"].floor) == (PRESETS["B200"].hbm, PRESETS["B200"].floor)
    assert (PRESETS["GB300"].hbm, PRESETS["GB300"].floor) == (PRESETS["B200"].hbm, PRESETS["B200"].floor)
