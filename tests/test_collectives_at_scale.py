"""The Llama 3.1 8B B200 rows' data-parallel collectives at 64 and 256 ranks against NCCL v2.28.3's own
tuning model, the NCCL those runs installed (issue 21, s11f; docs/validation.md, "The collectives at scale").

Worked by hand from NVIDIA/nccl v2.28.3-1 `src/graph/tuning.cc`: `ncclTunerConstantsDefaults` (ring base
latency 6.6 / 14.0 / 8.4 us for LL / LL128 / Simple, per NVLink step 0.6 / 1.9 / 3.4, per network step
2.7 / 4.0 / 14.0), `getNetOverhead` (1 us on Intel x86, x3 for Simple) as the floor of an intra-node step once
the ring crosses nodes, n - 1 steps for a reduce-scatter or all-gather of which nodes - 1 cross the network,
LL128 at 0.92 of the bus, LL at half of it capped by `llMaxBws` (20.4 GB/s on a multi-node Intel ring), and
`ncclTopoGetAlgoTime` (latency x ops + bytes / bandwidth).  PAT needs one rank a node (`ncclPatEnable`),
NVLS is off (`NCCL_NVLS_ENABLE=0`) and CollNet is not enabled, so the ring is the only algorithm.  The bus is
the B200 preset's measured 47 GB/s per NDR NIC, eight NICs a node, one per rank of the group on it.
"""

from __future__ import annotations

import pytest

from dualpipe_sim.model import collectives, rates

B200 = rates.PRESETS["B200"]
BUS = 8 * 47e9
GRADS = 8_030_261_248 * 2  # the 8B model's bf16 gradients, reduce-scattered in 34 buckets
FP8_BUCKET = 205e6  # one layer's FP8 linear weights: each later bucket group of the parameter all-gather


def ring_us(protocol: str, ranks: int, nodes: int) -> float:
    base, nvlink, net = {"ll": (6.6, 0.6, 2.7), "ll128": (14.0, 1.9, 4.0), "simple": (8.4, 3.4, 14.0)}[protocol]
    overhead = {"ll": 1.0, "ll128": 1.0, "simple": 3.0}[protocol]
    return base + (ranks - nodes) * max(nvlink, overhead) + (nodes - 1) * net


def test_reduce_scatter_at_64_ranks_by_hand():
    # 34 LL128 rings: 34 x (14 + 56 x 1.9 + 7 x 4) us = 34 x 148.4 = 5.046 ms, plus 63/64 x 16,060.5 MB at
    # 0.92 x 376 GB/s = 45.703 ms: 50.749 ms, the figure `model --explain` prints for mlperf51-llama8b-64b200
    assert ring_us("ll128", 64, 8) == pytest.approx(148.4)
    by_hand = 34 * 148.4e-6 + 63 / 64 * GRADS / (0.92 * BUS)
    assert collectives.bucketed("reduce_scatter", GRADS, 64, B200, 8, 34) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand * 1e3 == pytest.approx(50.749, abs=0.001)


@pytest.mark.parametrize("ranks, nodes, by_hand_ms", [
    (64, 8, 0.7318),     # 148.4 us + 63/64 x 205 MB / 345.92 GB/s = 0.1484 + 0.5833
    (256, 32, 1.1539),   # 14 + 224 x 1.9 + 31 x 4 = 563.6 us, + 255/256 x 205 MB / 345.92 GB/s = 0.5903
])  # fmt: skip
def test_fp8_bucket_all_gather_by_hand(ranks, nodes, by_hand_ms):
    ll128 = ring_us("ll128", ranks, nodes) * 1e-6 + (ranks - 1) / ranks * FP8_BUCKET / (0.92 * BUS)
    assert collectives.bucketed("all_gather", FP8_BUCKET, ranks, B200, 8, 1) == pytest.approx(ll128, rel=1e-12)
    assert ll128 * 1e3 == pytest.approx(by_hand_ms, abs=1e-4)


@pytest.mark.parametrize("nbytes, ranks, nodes, picked", [
    (FP8_BUCKET, 64, 8, "ll128"), (FP8_BUCKET, 256, 32, "ll128"),
    (GRADS / 34, 64, 8, "ll128"), (GRADS / 34, 256, 32, "ll128"),
    # the 16-bit buffer's one bucket (embedding, output layer, norms: 2.10 GB) crosses over at 64 ranks, where
    # LL128 saves only 296.8 - 148.4 us: Simple from 148.4 us x 376 GB/s / (63/64 x 0.08696) = 652 MB
    (2.10e9, 64, 8, "simple"), (2.10e9, 256, 32, "ll128"),
])  # fmt: skip
def test_nccls_tuner_picks_the_protocol_for_the_8b_buckets(nbytes, ranks, nodes, picked):
    # the three protocols' times by tuning.cc; the model's ring is the faster of Simple and LL128, and LL, which
    # the model leaves out, is slower at every bucket here (it wins only below about 5 MB at 256 ranks)
    moved = (ranks - 1) / ranks * nbytes
    times = {"ll128": ring_us("ll128", ranks, nodes) * 1e-6 + moved / (0.92 * BUS),
             "simple": ring_us("simple", ranks, nodes) * 1e-6 + moved / BUS,
             "ll": ring_us("ll", ranks, nodes) * 1e-6 + moved / min(20.4e9, 0.5 * BUS)}
    assert min(times, key=times.get) == picked
    assert collectives.bucketed("all_gather", nbytes, ranks, B200, 8, 1) == pytest.approx(times[picked], rel=1e-12)


def test_simple_takes_over_above_2_8_gb_at_256_ranks():
    # LL128 saves 1,204.0 - 563.6 = 640.4 us of latency and loses 1/0.92 - 1 of the bandwidth term: the two
    # cross at 640.4 us x 376 GB/s / (255/256 x 0.08696) = 2.78 GB, so a whole 16 GB gradient in one call
    # would go Simple while each of the rows' buckets (at most 2.3 GB) stays LL128
    saved = (ring_us("simple", 256, 32) - ring_us("ll128", 256, 32)) * 1e-6
    assert saved == pytest.approx(640.4e-6)
    crossover = saved * BUS / (255 / 256 * (1 / 0.92 - 1))
    assert crossover == pytest.approx(2.780e9, rel=1e-3)
    for nbytes, protocol in ((2.7e9, "ll128"), (2.85e9, "simple")):
        moved = 255 / 256 * nbytes
        expect = ring_us(protocol, 256, 32) * 1e-6 + moved / (BUS * (0.92 if protocol == "ll128" else 1.0))
        assert collectives.bucketed("reduce_scatter", nbytes, 256, B200, 8, 1) == pytest.approx(expect, rel=1e-12)
