"""The context-parallel ring's send and receive one after the other where Transformer Engine issues them singly
(derive.UNBATCHED_CP2_P2P, kernels.ring_transfer_seconds; docs/model.md "The ring's P2P kernels beside the attention").

TE release_v2.8 batches the ring's isend / irecv only where NVTE_BATCH_MHA_P2P_COMM is set or the compute capability
is below 10.0 at CP 2; on a B200 at CP 2 it calls them singly, and both go to the one peer, so PyTorch runs them on the
pair's one stream: the send, then the receive.  Figures are worked by hand from the B200's rates with its attention at the
free clock its table measured (rates.B200_FREE_CLOCK: 1,591 TFLOP/s; the same ones tests/test_ring_p2p_sms.py works for
one transfer): the ring's timing, not the preset's sustained attention fraction, is what these check."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels
from dualpipe_sim.model.config import ModelConfig
from dualpipe_sim.model.rates import B200_FREE_CLOCK

B200 = B200_FREE_CLOCK
LLAMA8B = ModelConfig("llama", 4096, 1, 128256, 32, 8, 128, 128, 14336)
ROW = "scenarios/validation/mlperf51-llama8b-64b200.toml"


def _ring(serial: bool, seq: int = 8192, context: int = 2):
    lay = kernels.Layout(seq, 1, tensor=1, context=context, ring_serial=serial)
    tb = kernels.Table(B200, lay, LLAMA8B)
    core = 2.0 * lay.tokens * seq * 32 * 256 * 0.5
    tb.attention("flash attention", "attn_forward", core, backward=False)
    tb.attention("flash attention backward", "attn_backward_input", 2.5 * core, backward=True)
    kernels.context_exchange(tb)
    return tb.rows


def test_b200_cp2_forward_step_by_hand():
    # one transfer: 25.5 us + 4,096 x 8 x 256 x 2 B / 620 GB/s = 52.56 us; the send then the receive: 105.1 us, the
    # P2P kernel (16 of 148 SMs) resident all that time.  Forward step 0 alone 147.3 us, wholly beside the kernel
    # 164.9 us (tests/test_ring_p2p_sms.py): 105.1 / 164.9 = 63.8% of its work done by then, the rest at the full
    # rate: 105.1 + 147.3 x 0.362 = 158.5 us (152.9 us with the two at once)
    one = 25.5e-6 + 4096 * 8 * 256 * 2 / 620e9
    flops = 2 * 8192**2 * 32 * 128 / 4
    body = flops / (1591e12 * 4096 / (4096 + 2790.0))
    alone, held = 2.04e-6 + body, 2.04e-6 + body * 148 / 132  # B200's kernel floor (rates.py)
    step0 = [k for k in _ring(True) if k.kind == "attention" and k.component == "attn_forward"][0]
    assert 2 * one == pytest.approx(105.1e-6, abs=0.05e-6)
    assert step0.seconds == pytest.approx(2 * one + alone * (1 - 2 * one / held))
    assert step0.seconds == pytest.approx(158.5e-6, abs=0.05e-6)
    assert "beside P2P, 16 SMs held for 105 us" in step0.shape


def test_batched_is_the_model_before_and_serial_never_faster():
    # the invariant: without the flag each step's transfer is one p2p (the rule before), and serialising the send and
    # the receive slows every step that sends, never the one that does not (the forward's last)
    batched, serial = _ring(False), _ring(True)
    one = kernels.collectives.p2p(4096 * 8 * 256 * 2, B200, "nvlink")
    assert "held for 52.6 us" in [k for k in batched if k.kind == "attention"][0].shape
    for b, s in zip(batched, serial):
        assert b.name == s.name
        assert s.seconds >= b.seconds
        if "beside P2P" in b.shape:
            assert s.seconds > b.seconds
    assert sum(k.seconds for k in serial) > sum(k.seconds for k in batched)
    assert one == pytest.approx(52.6e-6, abs=0.05e-6)


def test_exposed_transfer_is_both_directions():
    # a short sequence, 1,024 tokens (L = 512): one transfer is 25.5 us + 512 x 8 x 256 x 2 B / 620 GB/s = 28.9 us,
    # longer than the forward's step 0 (12.3 us, held all through), which so leaves 28.9 - 12.3 = 16.6 us exposed;
    # sent and received one after the other, 57.8 - 12.3 = 45.5 us: one transfer more.  The backward's transfers,
    # hidden under 38.5 us steps when at once, show too (serial never exposes less)
    def exposed(serial):
        return [k.seconds for k in _ring(serial, seq=1024) if k.kind == "comm"]
    one = kernels.collectives.p2p(512 * 8 * 256 * 2, B200, "nvlink")
    batched, serial = exposed(False), exposed(True)
    assert one == pytest.approx(28.9e-6, abs=0.05e-6)
    assert batched[0] > 0 and serial[0] == pytest.approx(batched[0] + one)
    assert batched[1:] == [0.0, 0.0] and all(s > 0 for s in serial[1:])


def test_which_runs_serialise():
    # derived from the GPU and the ring's size: the B200 at CP 2 only (TE batches on compute capability < 10.0 at CP 2;
    # at CP > 2 the send and the receive go to two peers, two streams, and overlap)
    def serial(sets=()):
        return derive.setup(scenario.load(ROW, list(sets))).layout.ring_serial
    assert serial()
    assert not serial(["hardware.preset=H100"])
    assert not serial(["parallel.context=4", "parallel.data=16"])
    assert not serial(["parallel.context=1", "parallel.data=64"])
