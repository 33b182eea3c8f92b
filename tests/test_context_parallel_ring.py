"""Context parallelism costed step by step as Transformer Engine's p2p ring runs it (kernels.ring_attention,
kernels.context_exchange; TE release_v2.8 AttnFuncWithCPAndKVP2P, docs/model.md "Context parallelism step by
step").  Every figure below is worked by hand from the shapes, the H100 preset's published rates and the
byte counts of the corrections the ring's code runs; nothing is compared with what the code printed before."""

from __future__ import annotations

import pytest

from dualpipe_sim.model import kernels
from dualpipe_sim.model.config import ModelConfig
from dualpipe_sim.model.rates import PRESETS

H100 = PRESETS["H100"]
# Llama 3.1 8B's attention: 32 query heads, 8 key/value heads, head dim 128
LLAMA8B = ModelConfig("llama", 4096, 1, 128256, 32, 8, 128, 128, 14336)
FLOOR, HBM = 2.5e-6, 2.90e12  # the H100 preset's kernel floor and streaming bandwidth (docs/model.md)


def _rate(seq: float, peak: float) -> float:
    """Flash attention's measured causal rate at ``seq`` (H100 cuDNN: 562 TFLOP/s forward with s_half 390, 500
    backward with s_half 780, each its own fit of the FlashAttention-3 paper's figures)."""
    return peak * seq / (seq + (780.0 if peak == 500e12 else 390.0))


def _attention(seq=8192, context=2, tensor=1):
    """The attention core of one layer, forward and backward, on one CP rank, as attention_block calls it."""
    lay = kernels.Layout(seq, 1, tensor=tensor, context=context)
    tb = kernels.Table(H100, lay, LLAMA8B)
    a_t = 32 // tensor
    core = 2.0 * lay.tokens * seq * a_t * (128 + 128) * 0.5  # this rank's share of the causal square
    tb.attention("flash attention", "attn_forward", core, backward=False)
    tb.attention("flash attention backward", "attn_backward_input", 2.5 * core, backward=True)
    kernels.context_exchange(tb)
    return tb.rows


def _mem(nbytes: float, launches: int = 1) -> float:
    return launches * FLOOR + nbytes / HBM


def _beside_p2p(body: float, transfer: float, ctas: int) -> float:
    """A ring step's attention whose first ``transfer`` seconds run beside the step's NCCL P2P kernel, which holds
    ``ctas`` of the H100's 132 SMs (16 on NVLink, 2 across nodes: kernels.RING_P2P_CTAS, docs/model.md): on 132 -
    ctas SMs it does its work at (132 - ctas) / 132 of the rate; what is left after the transfer at the full rate."""
    alone, held = FLOOR + body, FLOOR + body * 132 / (132 - ctas)
    if transfer >= held:
        return held
    return transfer + alone * (1 - transfer / held)


def test_cp2_forward_by_hand():
    rows = [k for k in _attention() if k.component == "attn_forward"]
    steps = [k for k in rows if k.kind == "attention"]
    # s = 8192 over 2 ranks: L = 4096 tokens each (chunks r and 3 - r of 2,048). The whole sequence's causal
    # attention is 4 s^2 a d / 2 = 2 x 8192^2 x 32 x 128 FLOPs; each rank runs 2 steps, each half an L x L square
    whole = 2 * 8192**2 * 32 * 128
    assert [k.flops for k in steps] == [whole / 4, whole / 4]
    assert 2 * sum(k.flops for k in steps) == pytest.approx(whole)
    # the slowest rank forward is rank 1: its diagonal (4,096 x 4,096 causal) and a lower triangle (4,096
    # queries x the first 2,048 keys of rank 0), whose query tiles each loop over 2,048 keys: the causal rate at
    # 4,096. Rank 0's upper triangle (2,048 queries x 4,096 keys) would take the rate at 8,192: faster.
    assert [k.name for k in steps] == ["flash attention step 0 (diagonal)", "flash attention step 1 (lower)"]
    step = FLOOR + whole / 4 / _rate(4096, 562e12)
    # step 0 posts the K/V transfer (16.8 MB on NVLink: 25.5 us + 16.8 MB / 321 GB/s = 77.8 us) before its
    # attention: 77.8 us of it beside the P2P kernel's 16 SMs; step 1 sends nothing
    kv = 4096 * 8 * (128 + 128) * 2
    send = 25.5e-6 + kv / 321e9
    assert _beside_p2p(step - FLOOR, send, 16) == pytest.approx(279.69e-6, abs=0.01e-6)  # worked: 270.34 us alone
    assert [k.seconds for k in steps] == pytest.approx([_beside_p2p(step - FLOOR, send, 16), step])
    assert "beside P2P, 16 SMs held for 77.8 us" in steps[0].shape and "beside" not in steps[1].shape
    assert "4096 q x 2048 kv x 32 heads" in steps[1].shape
    # the corrections, each one torch.compile'd kernel: lse of 32 heads x 4,096 queries in fp32 (0.5 MB),
    # the output 4,096 x 32 x 128 in BF16 (32 MiB)
    lse, out = 32 * 4096 * 4, 4096 * 32 * 128 * 2
    mem = {k.name: k for k in rows if k.kind == "memory"}
    assert mem["cp softmax-lse clone (step 0)"].bytes == 2 * lse  # torch.clone: read + write
    assert mem["cp output correction (step 0)"].bytes == 2 * out + 2 * lse  # out_0 x exp(lse_0 - lse) -> out
    assert mem["cp output correction (step 1)"].bytes == 3 * out + 2 * lse  # out += out_1 x exp(lse_1 - lse)
    assert mem["cp output correction (step 1)"].seconds == pytest.approx(_mem(3 * out + 2 * lse))
    # K and V of 4,096 tokens x 8 heads x 128, BF16, concatenated into the send buffer (read + write)
    assert mem["cp K/V into the ring buffer (forward)"].bytes == 2 * kv
    # one transfer (step 0 -> 1), 16.8 MB on NVLink: 25.5 us + 16.8 MB / 321 GB/s = 77.8 us, under step 0's
    # attention and nothing else (the lse clone runs beside step 1): fully hidden
    ring = [k for k in rows if k.kind == "comm"]
    assert [(k.name, k.bytes, k.seconds) for k in ring] == [("context-parallel K/V exchange (step 0)", kv, 0.0)]
    total = _beside_p2p(step - FLOOR, send, 16) + step + _mem(2 * kv) + _mem(2 * lse) + _mem(2 * out + 2 * lse) + _mem(3 * out + 2 * lse)
    assert sum(k.seconds for k in rows) == pytest.approx(total)


def test_cp2_backward_by_hand():
    rows = [k for k in _attention() if k.component == "attn_backward_input"]
    steps = [k for k in rows if k.kind == "attention"]
    whole = 2 * 8192**2 * 32 * 128
    assert 2 * sum(k.flops for k in steps) == pytest.approx(2.5 * whole)
    # the backward parallelises over key tiles, each looping over the queries: rank 0's upper triangle (2,048
    # queries x 4,096 keys) takes the causal rate at 4,096, rank 1's lower (4,096 queries) the rate at 8,192;
    # rank 0 is the slowest. Its steps run in reverse: the upper triangle first, its diagonal last
    assert [k.name for k in steps] == ["flash attention backward step 0 (upper)",
                                       "flash attention backward step 1 (diagonal)"]  # fmt: skip
    step = FLOOR + 2.5 * whole / 4 / _rate(4096, 500e12)
    q = 4096 * 32 * 128 * 2  # dq of this rank, BF16
    kv = 4096 * 8 * (128 + 128) * 2  # dk and dv (and K, V) of this rank, BF16
    # both steps post a 16.8 MB transfer (K/V, then dK/dV) before their attention: 77.8 us of each beside 16 SMs held
    held = _beside_p2p(step - FLOOR, 25.5e-6 + kv / 321e9, 16)
    assert held > step and [k.seconds for k in steps] == pytest.approx([held, held])
    lse = 32 * 4096 * 4
    mem = {k.name: k for k in rows if k.kind == "memory"}
    expected = {
        "cp K/V into the ring buffer (backward)": (2 * kv, 1),  # p2p_comm_buffers[0][0].copy_(kv)
        "cp second-half lse copy": (lse, 1),  # the second half made contiguous: read + write half
        "cp dq accumulation (step 0)": (q, 1),  # dq[1].copy_(dq_): the upper half only
        "cp dk / dv accumulation (step 0)": (2 * kv, 2),  # dk.copy_(dk_), dv.copy_(dv_)
        "cp dq accumulation (step 1)": (q / 2 * 2 + q / 2 * 3, 2),  # dq[0].copy_, dq[1].add_
        "cp dk / dv accumulation (step 1)": (2 * (kv / 4 * 3 + kv / 4 * 2), 4),  # [0].add_, [1].copy_, k and v
    }
    assert sorted(mem) == sorted(expected)
    for name, (nbytes, launches) in expected.items():
        assert (mem[name].bytes, mem[name].seconds) == pytest.approx((nbytes, _mem(nbytes, launches))), name
    # step 0 sends K and V on (for step 1), step 1 sends the dK, dV accumulated in step 0 back: 16.8 MB each,
    # 77.8 us on NVLink, under each step's attention backward (~0.6 ms): hidden
    ring = [(k.name, k.bytes, k.seconds) for k in rows if k.kind == "comm"]
    assert ring == [("context-parallel K/V exchange (step 0)", kv, 0.0),
                    ("context-parallel dK/dV exchange (step 1)", kv, 0.0)]  # fmt: skip


def test_exchange_exposed_beyond_the_step_it_overlaps():
    # TP 8 x CP 2 = 16 ranks: the ring crosses nodes (the NIC, 47 GB/s). s = 2,048, L = 1,024: K and V of one
    # KV head per TP rank, 1,024 x 256 x 2 = 0.52 MB, 25.5 us + 0.52 MB / 47 GB/s = 36.7 us; the step it
    # overlaps is tiny: forward step 0 (diagonal, 1,024 causal, 4 heads) at the rate at 1,024
    rows = _attention(seq=2048, context=2, tensor=8)
    kv = 1024 * 1 * 256 * 2
    send = 25.5e-6 + kv / 47e9
    # the step is shorter than the transfer, so all of it runs beside the P2P kernel's 2 SMs (across nodes)
    fwd_step = FLOOR + 2.0 * 1024 * 2048 * 4 * 256 * 0.5 / 2 / _rate(1024, 562e12) * 132 / 130
    ring = [k for k in rows if k.kind == "comm" and k.component == "attn_forward"]
    assert len(ring) == 1 and "(nic)" in ring[0].shape
    assert ring[0].seconds == pytest.approx(send - fwd_step)
    # backward step 0: the upper triangle (512 queries x 1,024 keys, the rate at 1,024) and its dq copy
    bwd_step = FLOOR + 2.5 * 2.0 * 1024 * 2048 * 4 * 256 * 0.5 / 2 / _rate(1024, 500e12) * 132 / 130
    dq = _mem(1024 * 4 * 128 * 2)
    ring = [k for k in rows if k.kind == "comm" and k.component == "attn_backward_input"]
    assert ring[0].seconds == pytest.approx(send - bwd_step - dq)


def test_slowest_rank_and_step_count_grow_with_context():
    # CP 4: every rank runs 4 steps of 1/4 of its causal share; forward rank 3 (three lower triangles) and
    # backward rank 0 (three upper triangles) are the slowest; 3 forward transfers, 4 backward: K/V at step 0,
    # K/V with the dK/dV accumulated so far at steps 1 and 2, dK/dV at step 3
    rows = _attention(seq=16384, context=4)
    fwd = [k.name for k in rows if k.kind == "attention" and k.component == "attn_forward"]
    assert fwd == ["flash attention step 0 (diagonal)"] + [f"flash attention step {i} (lower)" for i in (1, 2, 3)]
    bwd = [k.name for k in rows if k.kind == "attention" and k.component == "attn_backward_input"]
    assert bwd[-1] == "flash attention backward step 3 (diagonal)" and all("(upper)" in n for n in bwd[:3])
    kv = 4096 * 8 * 256 * 2
    sends = [(k.name.split(" exchange")[0], k.bytes) for k in rows if k.kind == "comm"]
    assert sends == [("context-parallel K/V", kv)] * 3 + [("context-parallel K/V", kv),
                                                         ("context-parallel K/V + dK/dV", 2 * kv),
                                                         ("context-parallel K/V + dK/dV", 2 * kv),
                                                         ("context-parallel dK/dV", kv)]  # fmt: skip


def test_no_context_parallelism_is_one_kernel():
    rows = _attention(seq=8192, context=1)
    assert [k.name for k in rows] == ["flash attention", "flash attention backward"]
    assert rows[0].flops == 2 * 8192**2 * 32 * 128


def test_off_diagonal_rate_against_the_measured_non_causal_kernel():
    # The assumption (docs/model.md): a full block whose tiles loop over n takes the causal rate at 2n. H100's
    # cuDNN table has the non-causal kernel measured (FlashAttention-3 paper figures, tests/data/kernels/
    # attention.csv): the assumption stays below it at every length, forward and backward (the backward at its own
    # half-rate length, 780: 284 TFLOP/s at 1,024 against 305 measured for 512 x 512).
    import csv
    from pathlib import Path

    with open(Path(__file__).parent / "data" / "kernels" / "attention.csv") as fh:
        rows = [r for r in csv.DictReader(x for x in fh if not x.startswith("# "))]
    measured = {(r["pass"], int(r["seq"])): float(r["tflops"]) * 1e12 for r in rows
                if r["gpu"] == "H100" and r["impl"] == "cudnn"}  # fmt: skip
    for n in (512, 1024, 2048, 4096, 8192, 16384):
        assert H100.attention_rate(2 * n, False) < measured[("forward_noncausal", n)]
        bwd, real = H100.attention_rate(2 * n, True), measured[("backward_noncausal", n)]
        assert bwd < real


def test_model_explain_lists_the_ring_steps(capsys):
    from pathlib import Path

    from dualpipe_sim.cli import main

    toml = Path(__file__).resolve().parents[1] / "scenarios" / "validation" / "mlperf51-llama8b-32b200.toml"
    assert main(["model", str(toml), "--explain"]) == 0
    out = capsys.readouterr().out
    for row in ("flash attention step 0 (diagonal)", "flash attention step 1 (lower)", "cp output correction (step 1)",
                "flash attention backward step 0 (upper)", "cp dk / dv accumulation (step 1)",
                "context-parallel K/V exchange (step 0)", "context-parallel dK/dV exchange (step 1)"):  # fmt: skip
        assert row in out, row
    line = next(x for x in out.splitlines() if "flash attention step 1 (lower)" in x)
    assert "4096 q x 2048 kv x 32 heads" in line and line.rstrip().endswith("compute")
    # the step whose K/V transfer is in flight says so: the P2P kernel's 16 SMs held (kernels.RING_P2P_CTAS), on
    # B200 at CP 2 for the send and then the receive, 2 x 52.6 us (tests/test_ring_serial.py)
    line = next(x for x in out.splitlines() if "flash attention step 0 (diagonal)" in x)
    assert "beside P2P, 16 SMs held for 105 us" in line and "beside" not in next(
        x for x in out.splitlines() if "flash attention step 1 (lower)" in x)
