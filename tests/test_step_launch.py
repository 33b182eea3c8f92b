"""When an overlapped grad sync starts and what it shares: `step.grad_sync_launch` and
`step.grad_sync_shares_p2p` (step.py, docs/step.md).

Hand-worked on interleaved 1F1B, 2 ranks x 2 chunks (stages 0, 2 on rank 0; 1, 3 on rank 1),
2 micro-batches, F = 1, B = 2.  The pipeline's times are worked out here from the schedule's order,
the launches from Megatron-core's rule (schedules.py @ df72712: rank r launches chunk c's reduction
after its backward number ``last(c) + r``; past its last backward, after the loop).
"""

from __future__ import annotations

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import GRAD_SYNC
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.scenario import ScenarioError


def run(step: dict, p2p: float = 0.0):
    raw = {
        "pipeline": {"schedule": "interleaved-1f1b", "stages": 4, "chunks_per_rank": 2, "microbatches": 2},
        "costs": {"forward": 1.0, "backward": 2.0},
        "comm": {"p2p": p2p},
        "step": {"overlap_grad_sync": True, "grad_sync_launch": "ready", **step},  # "ready" pinned: not the default
    }
    result = simulation.run(scenario.from_dict(raw))
    syncs = result.trace.step[result.trace.step["kind"] == GRAD_SYNC]
    return {(int(r["rank"]), int(r["stage"])): (float(r["start"]), float(r["end"])) for r in syncs}


def test_pp_aligned_launch_by_hand():
    # No P2P.  Rank 0: F0 F1 of stage 0 [0, 2], of stage 2 [2, 4]; B(mb 0, stage 2) waits for rank 1's
    # B(0, 3) [4, 6]: [6, 8]; B(1, 2) after B(1, 3) [7, 9]: [9, 11]; then stage 0's B [11, 13], [13, 15].
    # Rank 1: F(0, 1) [1, 2], F(1, 1) [2, 3], F(0, 3) [3, 4], B(0, 3) [4, 6], F(1, 3) [6, 7], B(1, 3) [7, 9],
    # B(0, 1) [9, 11] (after rank 0's B(0, 2)), B(1, 1) [11, 13].
    ready = run({"grad_sync": 1.0})
    assert ready == {(0, 2): (11.0, 12.0), (0, 0): (15.0, 16.0), (1, 3): (9.0, 10.0), (1, 1): (13.0, 14.0)}
    aligned = run({"grad_sync": 1.0, "grad_sync_launch": "pp-aligned"})
    # Rank 0 (lag 0) launches as before.  Rank 1 (lag 1): stage 3's last backward is its 2nd (ends 9),
    # launched after its 3rd (B(0, 1), ends 11); stage 1's last is its 4th and last: after the loop, 13.
    assert aligned == {(0, 2): (11.0, 12.0), (0, 0): (15.0, 16.0), (1, 3): (11.0, 12.0), (1, 1): (13.0, 14.0)}
    # The default, "derived", is Megatron-core's: pp-aligned in its interleaved schedule (align_grad_reduce).
    assert run({"grad_sync": 1.0, "grad_sync_launch": "derived"}) == aligned


def test_pp_aligned_needs_overlap():
    # Not overlapped, every sync waits for the rank's pipeline end whatever the launch rule (rank 1: 13;
    # ties go by stage, so stage 1 first).
    plain = run({"grad_sync": 1.0, "overlap_grad_sync": False})
    assert plain == run({"grad_sync": 1.0, "overlap_grad_sync": False, "grad_sync_launch": "pp-aligned"})
    assert plain[(1, 1)] == (13.0, 14.0) and plain[(1, 3)] == (14.0, 15.0)


def test_grad_sync_yields_the_link_to_p2p_by_hand():
    # P2P 0.5 ms per transfer.  Rank 1's link (its sends and receives merged) is busy over
    # [10, 11] and [12.5, 13.5] after its stage 3 sync is released at 10.5 (B(1, 3) ends), and over
    # [15.5, 16] when stage 1's is released (B(1, 1) ends 15.5, its last send [15.5, 16]).
    # Sync 2 ms: stage 3 waits to 11, runs [11, 12.5] (1.5), waits to 13.5, ends 14.0;
    # stage 1 waits to 16, ends 18.0.  Rank 0: stage 2 released at 13 inside [12.5, 13.5]: ends 15.5;
    # stage 0 at 18, after every transfer: [18, 20].
    alone = run({"grad_sync": 2.0}, p2p=0.5)
    assert alone == {(0, 2): (13.0, 15.0), (0, 0): (18.0, 20.0), (1, 3): (10.5, 12.5), (1, 1): (15.5, 17.5)}
    shared = run({"grad_sync": 2.0, "grad_sync_shares_p2p": True}, p2p=0.5)
    assert shared == {(0, 2): (13.0, 15.5), (0, 0): (18.0, 20.0), (1, 3): (10.5, 14.0), (1, 1): (15.5, 18.0)}


def test_sharing_never_shortens_a_sync():
    # The link only loses time to P2P: each sync ends no earlier than alone, and carries its full length
    # of free link time.
    for p2p in (0.25, 0.5, 1.5):
        alone = run({"grad_sync": 3.0}, p2p=p2p)
        shared = run({"grad_sync": 3.0, "grad_sync_shares_p2p": True}, p2p=p2p)
        assert all(shared[k][1] >= alone[k][1] for k in alone)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("grad_sync_launch", "late", "step.grad_sync_launch: input should be 'ready', 'pp-aligned' or 'derived', got 'late'"),
    ("grad_sync_shares_p2p", 3, "step.grad_sync_shares_p2p: must be true or false, got 3"),
])  # fmt: skip
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run({"grad_sync": 1.0, key: value})


def test_cli_bad_value_exit_2(tmp_path):
    import subprocess

    path = tmp_path / "s.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 2\n[costs]\nforward = 1.0\n'
                    'backward = 2.0\n[step]\ngrad_sync = 1.0\ngrad_sync_launch = "late"\n')
    out = subprocess.run(["dualpipe-sim", "run", str(path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert out.returncode == 2 and "step.grad_sync_launch" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()


# -- the data-parallel reduce-scatter as NCCL rings (collectives.bucketed) -------------------------------
def test_ring_latency_is_nccls_tuning_model_by_hand():
    from dualpipe_sim.model import collectives

    # NCCL tuning.cc @ 4365458, ring reduce-scatter: base + (ranks - nodes) intra-node steps + (nodes - 1)
    # network steps.  DP 320 on 160 nodes (2 ranks each): Simple 8.4 + 160 x max(3.4, 3 x 1.0) + 159 x 14;
    # LL128 14 + 160 x max(1.9, 1.0) + 159 x 4.  DP 16 on 8 nodes: Simple 8.4 + 8 x 3.4 + 7 x 14.
    assert collectives.ring_latency("simple", 320, 2) == pytest.approx((8.4 + 160 * 3.4 + 159 * 14) * 1e-6)
    assert collectives.ring_latency("ll128", 320, 2) == pytest.approx((14 + 160 * 1.9 + 159 * 4) * 1e-6)
    assert collectives.ring_latency("simple", 16, 2) == pytest.approx((8.4 + 8 * 3.4 + 7 * 14) * 1e-6)


def test_mlperf_chunk_reduce_scatter_by_hand():
    from dualpipe_sim.model import collectives, rates

    # One GPT-3 layer's bf16 gradients per TP-4 rank, (12 h^2 + 13 h) / 4 x 2 bytes with h = 12,288, as 9
    # buckets over DP 320 (2 ranks and NICs per node: 2 x 47 GB/s bus).  Simple: 9 x 2.7784 ms + 319/320 x
    # 906.05 MB / 94 GB/s = 25.006 + 9.608 = 34.61 ms; LL128: 9 x 0.954 ms + 9.608 / 0.92 = 8.586 + 10.444 =
    # 19.03 ms: LL128, about twice the bandwidth-only 9.6 ms.  At DP 16 (8 nodes) Simple's 9 x 0.1336 +
    # 15/16 x 906.05 / 94 = 1.202 + 9.036 = 10.24 ms beats LL128's 9 x 0.0572 + 9.822 = 10.34 ms.
    nbytes = (12 * 12288**2 + 13 * 12288) / 4 * 2
    h100 = rates.PRESETS["H100"]
    assert collectives.bucketed("reduce_scatter", nbytes, 320, h100, 2, 9) == pytest.approx(
        9 * (14 + 160 * 1.9 + 159 * 4) * 1e-6 + 319 / 320 * nbytes / (0.92 * 94e9))
    assert collectives.bucketed("reduce_scatter", nbytes, 320, h100, 2, 9) == pytest.approx(19.03e-3, abs=0.01e-3)
    assert collectives.bucketed("reduce_scatter", nbytes, 16, h100, 2, 9) == pytest.approx(
        9 * (8.4 + 8 * 3.4 + 7 * 14) * 1e-6 + 15 / 16 * nbytes / 94e9)


@pytest.mark.parametrize("name", ["mlperf50-llama405b-512", "mlperf50-llama405b-2048", "mlperf50-llama405b-2432",
                                  "mlperf50-llama405b-2560", "mlperf50-llama405b-8192", "mlperf50-llama405b-512h200",
                                  "mlperf50-llama405b-1024h200", "mlperf51-llama405b-256b200",
                                  "mlperf51-llama405b-448b200"])  # fmt: skip
def test_nemo2_405b_rows_launch_when_ready(name):
    # s14f: NeMo v2.2.0 sets grad_sync_func only with align_grad_reduce (these rows' headers), and without it
    # Megatron-core's interleaved schedule enables a chunk's sync at its own last micro-batch: "ready", not the
    # derived default's pp-aligned lag for interleaved-1f1b, which these rows had run since that default came in.
    from pathlib import Path

    sc = scenario.load(Path(__file__).resolve().parents[1] / "scenarios" / "validation" / f"{name}.toml")
    assert sc.pipeline.schedule == "interleaved-1f1b" and sc.step.overlap_grad_sync
    assert sc.grad_sync_launch() == "ready"
