"""model/derived_step.py branches (step_figures.py's before s19e) the s16g coverage run found no test reaching:
the derived cross-copy sum on hardware given as an efficiency (no kernel rates), and the optimizer's refusal there."""

from __future__ import annotations

import tomllib

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.derived_step import derived_sync
from tests.helpers import TINY_LLAMA_MODEL

# TINY_LLAMA_MODEL's parameters by hand (hidden 256, 4 layers, 4 heads = 4 KV heads, FFN 512, vocab 1000, untied):
LAYER = 4 * 256 * 256 + 3 * 256 * 512 + 2 * 256  # q, k, v, o; gate, up, down; two RMSNorm weights = 655,872
EMBEDDING = HEAD = 1000 * 256
STAGE_0 = EMBEDDING + 2 * LAYER  # 1,567,744
STAGE_1 = 2 * LAYER + 256 + HEAD  # the final norm and the head: 1,568,000


def tiny(p2p_gbps: float, efficiency: float | None = 0.5):
    raw = tomllib.loads('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + TINY_LLAMA_MODEL
                        + f'[hardware]\npreset = "H100"\np2p_bandwidth = {p2p_gbps}\n')  # fmt: skip
    if efficiency is not None:
        raw["hardware"]["efficiency"] = efficiency
    return scenario.from_dict(raw)


def test_cross_copy_sum_without_kernel_rates_is_the_gradient_bytes_over_the_p2p_bandwidth():
    """docs: an all-reduce between the two copies, 2(2-1)/2 x bytes / bw = bytes / bw; fp32 gradients
    (4 bytes a parameter, memory.py's default grads_bytes) over hardware.p2p_bandwidth GB/s, in ms."""
    got = derived_sync(tiny(50), "cross_copy_sync")
    assert got == pytest.approx((STAGE_0 * 4 / 50e9 * 1e3, STAGE_1 * 4 / 50e9 * 1e3), rel=1e-12)
    assert got == pytest.approx((0.12541952, 0.12544), rel=1e-12)
    assert derived_sync(tiny(100), "cross_copy_sync") == pytest.approx(tuple(t / 2 for t in got), rel=1e-12)


def test_the_derived_optimizer_needs_the_kernel_rates():
    with pytest.raises(ModelError, match=r'^"derived" needs a hardware\.preset without hardware\.efficiency '
                                         r"\(the kernel rates\)$"):  # fmt: skip
        derived_sync(tiny(50), "optimizer")
    assert all(t > 0 for t in derived_sync(tiny(50, efficiency=None), "optimizer"))
