"""flash-attn-1 beside a kernel holding SMs (s11e): the library is chosen once at setup
(KernelRates.with_attention_kernel), and KernelRates.held scales the rates in use, so an MLPerf
v3.0 GPT-3 row (model.attention_kernel = "flash-attn-1", H100) runs its attention under a held
collective at flash-attn 1's rate times the SMs left, worked by hand from the H100 table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parent.parent
MLPERF30 = ROOT / "scenarios" / "validation" / "mlperf30-gpt3-768.toml"
# H100's flash-attn 1.x: 133 TFLOP/s forward and backward, half the rate at 210 tokens (rates.py _H100_FA1)
FA1_RATE, FA1_HALF = 133e12, 210.0


def test_flash_attn_1_rate_beside_16_held_sms_by_hand():
    st = derive.setup(scenario.load(MLPERF30))
    assert st.rates.name == "H100" and st.rates.held_sms == 0
    seq = 2048
    whole = FA1_RATE * seq / (seq + FA1_HALF)  # 120.60 TFLOP/s
    assert st.rates.attention_rate(seq, backward=False) == pytest.approx(whole)
    assert st.rates.attention_rate(seq, backward=True) == pytest.approx(whole)
    held = st.rates.held(16)  # step.dp_comm_sms' default: 116 of the 132 SMs left
    assert held.attention_rate(seq, backward=False) == pytest.approx(whole * 116 / 132)  # 105.98 TFLOP/s
    assert held.attention_rate(seq, backward=True) == pytest.approx(whole * 116 / 132)
    # and not cuDNN's (the preset's default) scaled: 562 TFLOP/s x 2048 / (2048 + 390) x 116 / 132
    assert held.attention_rate(seq, backward=False) != pytest.approx(
        PRESETS["H100"].attention_rate(seq, backward=False) * 116 / 132)


def test_the_library_cannot_be_chosen_on_held_rates():
    """Held rates carry the chosen library's figures; picking a library afterwards would read the
    whole-GPU tables, so it is refused."""
    with pytest.raises(RuntimeError, match="before SMs are held"):
        PRESETS["H100"].held(16).with_attention_kernel("flash-attn-1")
