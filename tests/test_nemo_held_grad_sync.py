"""NeMo's end of step on apex read from its code (issue 21, s11b; docs/step.md, "NeMo's held bucket group" and
"NeMo 1.x's fp32 embedding optimizer"): step.grad_sync_held, step.fp32_embedding_optimizer, step.bucket_cap_mb.

Worked by hand from the code: NVIDIA/NeMo v1.17.0_pt_23.04 and bd0b818 megatron_gpt_model.py configure_optimizers
(which parameters get _disable_overlap_grad_sync, buckets[-1].extend), megatron_base_model.py setup_optimization
(_with_fp32_optimizer on word_embedding / position_embedding), core/optim/distributed_adam.py (the explicit fp32 AdamW,
_fp32_optim_grad_sync's all-reduce); NeMo v2.0.0.rc0.beta / 24.09-alpha.rc0 for v4.x; apex 23.09-24.09
distributed_fused_adam.py (init_params_bucket, _try_start_bucket_grad_sync, grad_sync); Transformer Engine release_v0.8
and 09ba842 (the ``sequence_parallel`` attribute); pytorch/pytorch torch/optim/adamw.py (_multi_tensor_adamw) and
aten/src/ATen/native/cuda/MultiTensorApply.cuh (65,536-element chunks, 320 blocks a launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.cli import main
from dualpipe_sim.engine import step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, grad_sync, nemo_optimizer, param_gather, step_end
from dualpipe_sim.errors import ScenarioError

FOLDER = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
H, V, P, TP = 12288, 50688, 2048, 4  # GPT-3 175B, its padded vocabulary, positions, tensor ranks
LAYER = 12 * H * H + 13 * H  # a GPT-3 layer with biases: 4h^2 + 4h attention, 4h norms, 8h^2 + 5h FFN
SP_LAYER = 2 * 2 * H + 2 * H  # its sequence-parallel parameters: two LayerNorms (weight, bias), proj and fc2 biases
# which are whole on every tensor rank (Megatron-core @ 1e05700 transformer_layer.py 309-314, 356-361; tensor_parallel/
# layers.py 1146): a TP rank holds (LAYER - SP_LAYER) / TP + SP_LAYER = LAYER / TP + (TP - 1) x SP_LAYER / TP of a layer
RANK_LAYER = (LAYER + (TP - 1) * SP_LAYER) // TP
FINAL_NORM = 2 * H  # the final LayerNorm, whole on every tensor rank as well


def _load(name, overrides=()):
    return scenario.load(FOLDER / f"{name}.toml", list(overrides))


def spans(rows, kind, rank=None) -> list[tuple[float, float]]:
    mine = rows[rows["kind"] == kind]
    if rank is not None:
        mine = mine[mine["rank"] == rank]
    return [(float(r["start"]), float(r["end"])) for r in mine]


# --- the engine: the tail runs after the rank's pipeline and every other sync of the rank -------------------------

def _two_stages():
    """1F1B, 2 stages, 1 micro-batch, F 1, B 2, no P2P: rank 0 F [0, 1], B [4, 6]; rank 1 F [1, 2], B [2, 4]."""
    raw = {
        "pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 1},
        "costs": {"forward": 1.0, "backward": 2.0},
        "comm": {"p2p": 0.0},
        "step": {"grad_sync": [3.0, 1.0], "overlap_grad_sync": True, "optimizer": 1.0},
    }
    sc = scenario.from_dict(raw)
    return simulation.run(sc).trace, sc.step_costs()


def test_tail_waits_for_the_pipeline_and_the_other_syncs_by_hand():
    """Rank 1's overlapped sync (1 ms) runs [4, 5] after its B; its tail (2 ms) goes only at 5, when that sync is over
    (NeMo's _finish_bucket_grad_sync first, then apex's grad_sync()), not at its pipeline end (4): [5, 7]; its optimizer
    [7, 8].  Rank 0's sync (3 ms) [6, 9]; a tail of 0.5 there [9, 9.5], its optimizer [9.5, 10.5]."""
    from dataclasses import replace

    trace, costs = _two_stages()
    plain = step.simulate_step(trace, costs)
    assert spans(plain, GRAD_SYNC, 1) == [(4.0, 5.0)]
    assert spans(plain, GRAD_SYNC, 0) == [(6.0, 9.0)]
    rows = step.simulate_step(trace, replace(costs, grad_sync_tail=(0.5, 2.0)))
    assert spans(rows, GRAD_SYNC, 1) == [(4.0, 5.0), (5.0, 7.0)]
    assert spans(rows, OPTIMIZER, 1) == [(7.0, 8.0)]
    assert spans(rows, GRAD_SYNC, 0) == [(6.0, 9.0), (9.0, 9.5)]
    assert spans(rows, OPTIMIZER, 0) == [(9.5, 10.5)]


def test_a_tail_alone_is_step_work_after_the_pipeline():
    """No other [step] figure: a tail of 2 ms on stage 1 only runs [4, 6] on rank 1 (its pipeline ends at 4) and the
    step is 6 ms (rank 0's pipeline), the block present (StepCosts.active)."""
    from dataclasses import replace

    trace, costs = _two_stages()
    bare = replace(costs, grad_sync=(0.0, 0.0), optimizer=(0.0, 0.0), grad_sync_tail=(0.0, 2.0))
    assert bare.active()
    rows = step.simulate_step(trace, bare)
    assert spans(rows, GRAD_SYNC) == [(4.0, 6.0)]


# --- which buckets are held back, and their bytes -------------------------------------------------------------------

def test_v31_held_group_bytes_by_hand():
    """mlperf31-gpt3-512 (NeMo bd0b818, TE 09ba842: every TE LayerNorm weight / bias and row-parallel bias carries
    ``sequence_parallel``, which configure_optimizers marks): on each of the 8 pipeline ranks the first chunk's group
    (stage r, one layer: 453,024,768 + 3 x 6h / 4 = 453,080,064 elements a TP rank, the norms and row biases whole,
    x 2 B = 906,160,128 B) is held, with the marked parameters of the rank's 11 other chunks, 6h = 73,728 elements each
    (whole on the rank: 147,456 B): 907,782,144 B in its 9 buckets; each other chunk keeps 906,160,128 - 147,456 =
    906,012,672 B overlapped.  The embeddings are in NeMo 1.x's fp32 AdamW, so stage 0's apex bytes are its layer's
    only."""
    sc = _load("mlperf31-gpt3-512")
    assert sc.step.grad_sync_held == ["sequence-parallel"] and sc.step.fp32_embedding_optimizer
    p = grad_sync.nemo_sync(sc)
    assert LAYER // TP == 453_024_768 and RANK_LAYER == 453_080_064 and SP_LAYER == 73_728
    for r in range(8):
        assert p.held_dense[r] == pytest.approx(906_160_128 + 11 * 147_456, abs=1e-3)
        assert p.held_buckets[r] == 9 and p.dense[r] == 0.0 and p.in_tail[r]
    for s in range(8, 95):
        assert p.dense[s] == pytest.approx(906_012_672, abs=1e-3)
        assert p.held_dense[s] == 0.0
    # the last stage keeps its final norm (2h whole x 2 B = 49,152 B: LayerNorm1P carries sequence_parallel_enabled,
    # which bd0b818 does not read); its head's word embedding copy is in the fp32 AdamW
    assert p.dense[95] == pytest.approx(906_012_672 + 49_152, abs=1e-3)
    assert sum(p.dense) + sum(p.held_dense) == pytest.approx((96 * RANK_LAYER + FINAL_NORM) * 2, abs=1e-2)  # conserved


def test_v30_holds_only_the_last_ranks_group():
    """mlperf30-gpt3-512 (NeMo v1.17.0_pt_23.04 reads ``sequence_parallel_enabled``, which TE release_v0.8 does not
    set; only the final LayerNorm1P, apex's FastLayerNorm, carries it): pipeline rank 7 alone is held, its first chunk
    (stage 7) with the final norm of stage 95 (2h = 24,576 elements, whole on the rank: 49,152 B)."""
    sc = _load("mlperf30-gpt3-512")
    assert sc.step.grad_sync_held == ["final-norm"]
    p = grad_sync.nemo_sync(sc)
    held = [s for s in range(96) if p.held_dense[s]]
    assert held == [7]
    assert p.held_dense[7] == pytest.approx(RANK_LAYER * 2 + FINAL_NORM * 2, abs=1e-3)
    assert p.dense[95] == pytest.approx(RANK_LAYER * 2, abs=1e-3)  # its layer: the head's copy in the fp32 AdamW
    # rank 0 holds nothing marked, but its tied and fp32 all-reduces run after NeMo's _finish_bucket_grad_sync: the
    # tail of stage 0 is those two; its layer's reduce-scatter stays overlapped (launched pp-aligned)
    overlapped, tail = grad_sync.grad_sync_parts(sc)
    st = sc.derived().setup
    assert p.in_tail[0] and p.held_dense[0] == 0.0
    assert tail[0] == pytest.approx(p.fp32_ms[0] + p.tied_ms[0], rel=1e-12)
    assert overlapped[0] == pytest.approx(grad_sync.sync_ms(st, "grad_sync", RANK_LAYER * 2, 0.0, buckets=9),
                                          rel=1e-12)


def test_v41_held_buckets_by_hand():
    """mlperf41-gpt3-512 (NeMo 24.09-alpha.rc0: the word embedding marked on the first and last rank, TE's sequence-
    parallel parameters on all; FP8 parameters; fp32 embedding gradients; BUCKET_CAP_MB=200, DP 16: buckets of
    104,857,600 elements).  Rank 0's first chunk: its 9 FP8 buckets, the fp32 embeddings 155,713,536 + 25,165,824 =
    180,879,360 elements in 2, the rank's 16-bit parameters in 1: 12.  The last rank's (stage 7): 9, its head's word
    embedding copy (155,713,536) in 2, 1: 12, and 155,713,536 x 4 B more held, taken off stage 47.  The others: 10."""
    sc = _load("mlperf41-gpt3-512")
    assert set(sc.step.grad_sync_held) == {"embedding", "sequence-parallel"} and sc.step.bucket_cap_mb == 200
    p = grad_sync.nemo_sync(sc)
    assert [p.held_buckets[s] for s in range(8)] == [12, 10, 10, 10, 10, 10, 10, 12]
    sp = SP_LAYER * 2  # bytes of one layer's sequence-parallel parameters on a rank (whole there)
    layer = 2 * RANK_LAYER * 2  # a 2-layer chunk's 16-bit gradients
    assert p.held_dense[7] - p.held_dense[1] == pytest.approx(V * H / TP * 4, abs=1e-2)
    assert p.dense[47] == pytest.approx(layer + FINAL_NORM * 2 - 2 * sp, abs=1e-2)  # its layers, final norm left
    assert p.in_tail[0] and p.in_tail[47] and p.tied_ms[0] > 0


def test_nothing_held_without_the_key():
    """Without step.grad_sync_held (and fp32_embedding_optimizer) nothing is held back: the tail is only what runs after
    the data-parallel sync anyway (s12d: the tensor-parallel all-reduce of the sequence-parallel gradients, tens of
    microseconds, and the tied all-reduce on the first and last stage), never a stage's reduce-scatter (hundreds of ms)."""
    sc = _load("mlperf41-gpt3-512", ["step.grad_sync_held=[]"])
    costs = sc.step_costs()
    assert all(0 < t < 0.1 for t in costs.grad_sync_tail[1:-1])
    tail = costs.grad_sync_tail
    tied = collectives.time("all_reduce", 50_688 * 12_288 / 4 * 4, 2, sc.derived().setup.rates, "nic") * 1e3
    assert tail[0] == pytest.approx(tied + tail[1], rel=1e-3) and tail[-1] == pytest.approx(tied + tail[1], rel=1e-3)


def test_tail_syncs_after_every_other_sync_on_a_row():
    """On mlperf31-gpt3-512 every rank's last grad-sync row (the held group) starts no earlier than its pipeline end
    and than the end of every other sync of the rank."""
    sc = _load("mlperf31-gpt3-512", ["pipeline.microbatches=16"])
    trace = simulation.run(sc).trace
    rows = trace.step
    for r in range(8):
        mine = sorted(spans(rows, GRAD_SYNC, r))
        last = mine[-1]
        assert all(end <= last[0] + 1e-9 for _, end in mine[:-1])


# --- NeMo 1.x's fp32 embedding AdamW --------------------------------------------------------------------------------

def test_fp32_optimizer_all_reduce_by_hand():
    """Stage 0 holds the word embedding's shard, 50,688 x 12,288 / 4 = 155,713,536 elements, and the learned positions
    whole (a torch.nn.Embedding on every tensor rank), 2,048 x 12,288 = 25,165,824: 180,879,360 fp32 = 723,517,440 B,
    all-reduced over DP 16 on the NIC, 2 of the group's ranks a node (TP 4 on 8 GPUs): latency + 2 x 15/16 x bytes /
    (2 NICs' bus).  The last stage's tied copy: 155,713,536 x 4 = 622,854,144 B."""
    sc = _load("mlperf31-gpt3-512")
    st = sc.derived().setup
    r = st.rates
    assert nemo_optimizer.fp32_optimizer_elements(st, st.stages[0]) == 180_879_360
    assert nemo_optimizer.fp32_optimizer_elements(st, st.stages[-1]) == 155_713_536
    assert nemo_optimizer.fp32_optimizer_elements(st, st.stages[1]) == 0
    for s, nbytes in ((0, 723_517_440), (95, 622_854_144)):
        want = (r.latency + nbytes * 2 * 15 / 16 / (r.nic_bus * 2)) * 1e3
        assert grad_sync.fp32_optimizer_all_reduce_ms(st, st.stages[s]) == pytest.approx(want, rel=1e-12)
    p = grad_sync.nemo_sync(sc)
    assert p.fp32_ms[0] == pytest.approx((r.latency + 723_517_440 * 1.875 / (2 * r.nic_bus)) * 1e3, rel=1e-12)


def test_fp32_adamw_bytes_and_time_by_hand():
    """Per fp32 element: torch's foreach AdamW 8 + 12 + 8 + 16 + 8 + 8 + 8 + 16 = 84 B, NeMo's grad scale 8, norm 4,
    copy into the bf16 parameter 6, zeroing 4: 106 B.  Stage 0: 180,879,360 x 106 = 19,173,212,160 B; launches: 9
    foreach ops x ceil(180,879,360 / 20,971,520 = 8.63) = 81, and 6 per tensor x 2 tensors: 93 at the floor."""
    sc = _load("mlperf31-gpt3-512")
    st = sc.derived().setup
    assert nemo_optimizer.TORCH_ADAMW_BYTES == 84 and nemo_optimizer.NEMO_FP32_OPTIM_BYTES == 22
    assert nemo_optimizer.fp32_adamw_bytes(st, st.stages[0]) == 180_879_360 * 106 == 19_173_212_160
    want = (19_173_212_160 / st.rates.hbm + 93 * st.rates.floor) * 1e3
    assert nemo_optimizer.fp32_adamw_ms(st, st.stages[0]) == pytest.approx(want, rel=1e-12)
    # the last stage: one tensor, ceil(155,713,536 / 20,971,520 = 7.43) = 8 a foreach op: 72 + 6 launches
    want = (155_713_536 * 106 / st.rates.hbm + 78 * st.rates.floor) * 1e3
    assert nemo_optimizer.fp32_adamw_ms(st, st.stages[-1]) == pytest.approx(want, rel=1e-12)
    assert nemo_optimizer.fp32_adamw_ms(st, st.stages[1]) == 0.0


def test_fp32_optimizer_leaves_apex():
    """The embeddings leave apex's reduce-scatter, shard and all-gather: stage 0's apex Adam figure is that of its
    layer alone, plus the fp32 AdamW; the tied all-reduce carries 4 B an element (the fp32 main_grad)."""
    on = _load("mlperf31-gpt3-512")
    off = _load("mlperf31-gpt3-512", ["step.fp32_embedding_optimizer=false", "step.grad_sync_held=[]"])
    d_on, d_off = on.derived(), off.derived()
    st = d_on.setup
    kept = nemo_optimizer.apex_stage(on, st, st.stages[0], d_on.stages[0])
    # the stage counts its embeddings over the tensor ranks: the word table once, the positions whole on each of TP
    assert kept.dense_params == d_on.stages[0].dense_params - (V * H + TP * P * H)
    assert kept.dense_params == d_on.stages[1].dense_params  # a layer's, as stage 1's
    assert nemo_optimizer.apex_stage(off, st, st.stages[0], d_off.stages[0]) is d_off.stages[0]
    # the step's start waits for stage 0's apex gather: its layer alone, in its 9 buckets
    assert param_gather.step_start_ms(on, d_on) == pytest.approx(
        param_gather.start_gather_ms(st, d_on.stages[1], 9), rel=1e-12)
    assert param_gather.step_start_ms(off, d_off) == pytest.approx(
        param_gather.start_gather_ms(d_off.setup, d_off.stages[0], 9), rel=1e-12)
    tied_on = grad_sync.nemo_sync(on, d_on).tied_ms[0]
    tied_off = grad_sync.tied_embedding_ms(off, d_off.setup, 2.0)[0]
    r = st.rates
    assert tied_on == pytest.approx((r.latency + V * H / TP * 4 / r.nic_bus) * 1e3, rel=1e-12)
    assert tied_off == pytest.approx((r.latency + V * H / TP * 2 / r.nic_bus) * 1e3, rel=1e-12)


def test_step_end_lists_the_tail_and_the_adamw():
    """`model --explain`'s parts: the tail's items sum to `run`'s grad_sync_tail, stage by stage."""
    sc = _load("mlperf30-gpt3-512")
    d = sc.derived()
    end = step_end.summary(sc, d)
    costs = sc.step_costs(d)
    assert "grad_sync_tail" in end["derived"]
    tail = [0.0] * 96
    for it in end["items"]:
        if it["figure"] == "grad_sync_tail":
            tail = [a + b for a, b in zip(tail, it["ms"])]
    assert tail == pytest.approx(list(costs.grad_sync_tail), rel=1e-12, abs=1e-12)
    names = [it["name"] for it in end["items"]]
    assert "fp32 AdamW of the embeddings (NeMo 1.x)" in names
    assert "fp32 embedding gradient all-reduce (NeMo 1.x's AdamW)" in names


# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sets, words", [
    (["step.param_gather=megatron-core"], 'step.grad_sync_held: is NeMo\'s on apex'),
    (["step.fp32_embedding_grads=true"], "step.fp32_embedding_optimizer: NeMo 1.x's separate fp32 AdamW"),
    (["parallel.zero=2"], "parallel.zero must be 1"),
])
def test_refused_in_one_clear_error(sets, words):
    with pytest.raises(ScenarioError, match=words.replace("(", r"\(")):
        _load("mlperf31-gpt3-512", sets).step_costs()


def test_bad_marker_names_the_key(tmp_path, capsys):
    path = FOLDER / "mlperf31-gpt3-512.toml"
    assert main(["run", str(path), "--set", 'step.grad_sync_held=["layernorm"]', "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "step.grad_sync_held" in err and "Traceback" not in err
    assert main(["run", str(path), "--set", "step.bucket_cap_mb=0", "--out", str(tmp_path / "o")]) == 2
    assert "step.bucket_cap_mb" in capsys.readouterr().err
