"""GPU presets hold the memory the device reports (nvidia-smi's total in MiB), not the marketing GB.

Figures: MLPerf Training system descriptions, "accelerator_memory_capacity" (docs/model.md, hardware presets).
"""

from __future__ import annotations

import pytest

from dualpipe_sim.model.hardware import preset
from dualpipe_sim.sweep.summary import fastest_fitting


def test_reported_mib_converted_to_bytes_by_hand():
    # 81559 MiB x 1,048,576 = 81,559,000,000 + 81,559 x 48,576 (3,961,809,984) = 85,520,809,984 bytes
    assert preset("H100").hbm_bytes == 85_520_809_984
    assert preset("H800").hbm_bytes == 85_520_809_984  # assumed: the H100's die and memory
    # 143771 MiB: 143,771,000,000 + 143,771 x 48,576 (6,983,820,096)
    assert preset("H200").hbm_bytes == 150_754_820_096
    # 183359 MiB: 183,359,000,000 + 183,359 x 48,576 (8,906,846,784)
    assert preset("B200").hbm_bytes == 192_265_846_784
    assert preset("A100").hbm_bytes == 80e9  # no reported total reached: the datasheet's 80 GB


@pytest.mark.parametrize("name, marketing", [("H100", 80e9), ("H200", 141e9), ("B200", 180e9)])
def test_reported_total_is_6_to_7_percent_above_the_marketing_figure(name, marketing):
    assert 1.06 < preset(name).hbm_bytes / marketing < 1.07


def test_a_rank_needing_82_gb_fits_an_h100_and_86_gb_does_not():
    cap = repr(preset("H100").hbm_bytes)  # 85.52 GB
    row = lambda name, ms, total: {"status": "ok", "pipeline.schedule": name, "makespan": ms,  # noqa: E731
                                   "peak_memory_bytes": "1", "memory.total": total, "device_memory": cap}
    best, over = fastest_fitting([row("needs86", "1", "86e9"), row("needs82", "2", "82e9")], None)
    assert best["pipeline.schedule"] == "needs82"  # over the old 80e9, within the reported total
    assert [r["pipeline.schedule"] for r in over] == ["needs86"]
