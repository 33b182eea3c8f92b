"""Nemotron-4 15B's measured steps (arXiv 2402.16819, section 2 "Pre-training" and Table 2), worked by hand.

Table 2, "Batch size rampup schedule, along with time and efficiency metrics for the Nemotron-4 15B parameter model",
read from the report's text: data-parallel size 96 / 192 / 288, GPUs 768 / 1,536 / 2,304, iteration time 0.57 / 0.58 /
0.64 s, MFU 34.3 / 33.3 / 30.5%, batch 384 / 768 / 1,152, sequence 4,096 (Table 1), 8-way tensor parallelism and data
parallelism only ("a combination of 8-way tensor parallelism ... and data parallelism"), H100 at 989 TFLOP/s BF16.

They are not validation rows: the micro-batch of the run is not published (docs/model.md, "Nemotron-4's runs: what the
launcher configs say"). What is checked here is the table against itself and against the `nemotron` family's FLOP count
for the 15B: tokens/s per GPU from batch, sequence, time and GPUs, and the report's MFU from those tokens/s and the
model's FLOPs per token (6N + attention, by hand), a second size beside the 340B's check in test_family_nemotron.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.model import config, flops

ROOT = Path(__file__).resolve().parents[1]
N15 = ROOT / "tests" / "data" / "configs" / "nemotron-4-15b.json"
PEAK = 989e12  # the report's H100 BF16 peak, "989 teraFLOP/s ... without sparsity"
SEQ = 4096

# (data-parallel size, GPUs, iteration time s, MFU, batch): Table 2's three stages
TABLE_2 = ((96, 768, 0.57, 0.343, 384), (192, 1536, 0.58, 0.333, 768), (288, 2304, 0.64, 0.305, 1152))


def test_table_2_gpus_are_tp_8_times_dp():
    """No pipeline parallelism: GPUs = 8 (tensor) x data-parallel size, each stage."""
    for dp, gpus, _, _, _ in TABLE_2:
        assert gpus == 8 * dp


@pytest.mark.parametrize("stage, expected", [
    (0, 3592.98),  # 384 x 4,096 = 1,572,864 tokens / 0.57 s = 2,759,410.5 / 768
    (1, 3531.03),  # 768 x 4,096 = 3,145,728 / 0.58 = 5,423,669.0 / 1,536
    (2, 3200.00),  # 1,152 x 4,096 = 4,718,592 / 0.64 = 7,372,800 / 2,304
])  # fmt: skip
def test_tokens_per_second_per_gpu_by_hand(stage, expected):
    _, gpus, seconds, _, batch = TABLE_2[stage]
    assert batch * SEQ / seconds / gpus == pytest.approx(expected, abs=0.005)


def test_model_flops_per_token_match_table_2_mfu():
    """6N + attention for the 15B by hand (h 6,144, f 24,576, 32 layers, 48 heads of 128, 8 KV heads, V 256,000):
    linears 32 x (2 h a d + 2 h kv d + 2 h f) + V h = 14,055,112,704, so 6N = 84,330,676,224; attention 12 x 32 x
    4,096 x 48 x 128 = 9,663,676,416; 93,994,352,640 FLOPs a token. Times each stage's tokens/s per GPU over 989
    TFLOP/s: 34.15 / 33.56 / 30.41% against the report's 34.3 / 33.3 / 30.5%, each within 0.3 points."""
    per_token = flops.per_token(config.read(N15), SEQ)
    assert per_token.six_n == 84_330_676_224
    assert per_token.attention == 9_663_676_416
    assert per_token.training == 93_994_352_640
    for _, gpus, seconds, mfu, batch in TABLE_2:
        assert batch * SEQ / seconds / gpus * per_token.training / PEAK == pytest.approx(mfu, abs=0.003)
