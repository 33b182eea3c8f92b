"""What the step's end runs after the data-parallel sync (s12d), and the attention's norms and a shared expert's gate
whole on every tensor rank.

Megatron-core's finalize_model_grads (NVIDIA/Megatron-LM @ 1e05700 megatron/core/distributed/finalize_model_grads.py
lines 259-336): finish_grad_sync, then _allreduce_layernorm_grads (one coalesced all-reduce over the tensor group of
every ``sequence_parallel`` gradient and of any q_layernorm / k_layernorm, lines 192-228), then the tied word
embedding's all-reduce between the first and the last stage (lines 119-154).  Worked by hand on Korthikanti et al.'s
GPT-3 175B row (k22-175b-seqsel: h 12,288, TP 8, 24 stages of 4 layers on 8 ranks, fp32 gradients)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER, pipeline_ends
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, params, step_end
from dualpipe_sim.model import grad_sync

FOLDER = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
H, V = 12_288, 51_200


def _load(name, overrides=()):
    return scenario.load(FOLDER / f"{name}.toml", list(overrides))


# --- the sequence-parallel gradients' all-reduce over the tensor ranks -------------------------------------------

def test_sequence_parallel_all_reduce_bytes_by_hand():
    """A GPT-3 layer's sequence_parallel parameters: two LayerNorms (weight and bias, 4h) and the attention output's
    and fc2's biases (2h), 6h = 73,728 elements; a stage copy of 4 layers 294,912, the last one with the final
    LayerNorm (2h) 319,488; at 4 bytes (fp32 main_grad) 1,179,648 and 1,277,952 B."""
    sc = _load("k22-175b-seqsel")
    d = sc.derived()
    st = d.setup
    assert st.sequence_parallel and st.sharding.tensor == 8 and st.sharding.grads_bytes == 4
    assert [len(w.layers) for w in st.stages] == [4] * 24
    elements = [grad_sync.tp_reduced_elements(sc, st, w) for w in st.stages]
    assert elements[:23] == [4 * 6 * H] * 23 == [294_912] * 23
    assert elements[23] == 4 * 6 * H + 2 * H == 319_488
    items = {i.name: i for i in step_end.items(sc, d)}
    tp = items["tensor-parallel all-reduce of the whole-on-rank gradients"]
    assert tp.bytes[0] == 1_179_648 and tp.bytes[23] == 1_277_952
    assert tp.group == "tensor 8" and tp.link == "nvlink" and tp.figure == "grad_sync_tail"


def test_one_coalesced_all_reduce_a_rank_by_hand():
    """Rank 0 holds stages 0, 8 and 16 (3 x 1,179,648 B), rank 7 stages 7, 15 and 23 (2 x 1,179,648 + 1,277,952 B):
    one NVLink all-reduce of its whole flattened tensor a rank, split over its copies by their bytes."""
    sc = _load("k22-175b-seqsel")
    st = sc.derived().setup
    ms = grad_sync.tp_grad_all_reduce_ms(sc, st)
    rank0 = collectives.time("all_reduce", 3 * 1_179_648, 8, st.rates, "nvlink") * 1e3
    rank7 = collectives.time("all_reduce", 2 * 1_179_648 + 1_277_952, 8, st.rates, "nvlink") * 1e3
    assert ms[0] + ms[8] + ms[16] == pytest.approx(rank0, rel=1e-12)
    assert ms[0] == pytest.approx(rank0 / 3, rel=1e-12)
    assert ms[7] + ms[15] + ms[23] == pytest.approx(rank7, rel=1e-12)
    assert ms[23] == pytest.approx(rank7 * 1_277_952 / 3_637_248, rel=1e-12)
    # one latency a rank, not one a copy: less than three separate all-reduces
    assert rank0 < 3 * collectives.time("all_reduce", 1_179_648, 8, st.rates, "nvlink") * 1e3


def test_without_kernel_rates_a_ring_all_reduce_at_the_nodes_bandwidth():
    """s13i: without kernel rates (hardware.efficiency given) the all-reduce is a ring's 2 (t - 1) / t of the rank's
    bytes over hardware's intra-node bandwidth (A100: 300 GB/s): rank 0's 3 x 1,179,648 B over 8 tensor ranks,
    1.75 x 3,538,944 = 6,193,152 B / 300e9 B/s = 20.64384 us, a third (0.00688128 ms) to each of its copies."""
    sc = _load("k22-175b-seqsel", ["hardware.efficiency=0.5", "step.optimizer=0"])
    st = sc.derived().setup
    assert st.rates is None and st.hw.a2a_intra_gbps == 300.0
    ms = grad_sync.tp_grad_all_reduce_ms(sc, st)
    assert ms[0] == ms[8] == ms[16] == pytest.approx(0.00688128, rel=1e-12)
    # rank 7: 2 x 1,179,648 + 1,277,952 = 3,637,248 B, 1.75 x that / 300e9 = 21.21728 us, by bytes over its copies
    assert ms[7] + ms[15] + ms[23] == pytest.approx(0.02121728, rel=1e-12)
    assert ms[23] == pytest.approx(0.02121728 * 1_277_952 / 3_637_248, rel=1e-12)


def test_nothing_without_sequence_parallelism_or_tensor_ranks():
    """No sequence parallelism and no q / k norms (GPT-3), or TP 1: nothing to all-reduce over the tensor group."""
    for over in (["parallel.sequence_parallel=false"], ["parallel.tensor=1", "parallel.sequence_parallel=false"]):
        sc = _load("k22-175b-seqsel", over)
        assert not any(grad_sync.tp_grad_all_reduce_ms(sc, sc.derived().setup))


def test_qk_norms_all_reduced_without_sequence_parallelism():
    """Qwen3 (``--qk-layernorm``): its per-head q and k norms, 2 x 128 elements a layer, are all-reduced over the tensor
    ranks by name even without sequence parallelism (each rank normed its own heads); with it, every whole part
    (2 x 4,096 norms, 256 q / k, the router's 128 x 4,096) and the last stage's final norm."""
    sc = _load("mz-qwen3-235b-tp4ep8pp8", ["parallel.sequence_parallel=false"])
    st = sc.derived().setup
    assert st.cfg.qk_norm and st.cfg.qk_head_dim == 128 and st.sharding.tensor == 4
    for w in st.stages:
        assert grad_sync.tp_reduced_elements(sc, st, w) == 2 * 128 * len(w.layers)
    sc = _load("mz-qwen3-235b-tp4ep8pp8", ["parallel.sequence_parallel=true"])
    st = sc.derived().setup
    h, e = 4_096, 128
    assert (st.cfg.hidden_size, st.cfg.num_experts, st.cfg.router_bias) == (h, e, False)
    last = st.stages[-1]
    assert grad_sync.tp_reduced_elements(sc, st, last) == len(last.layers) * (2 * h + 256 + e * h) + h


# --- the order: after the data-parallel sync, the tensor-parallel all-reduce, then the tie ----------------------

def test_items_in_finalize_model_grads_order():
    """`model --explain`'s parts on a Megatron row with data parallelism and a tied head (mlperf41-gpt3-512 without
    NeMo's held group): the data-parallel reduce-scatter (grad_sync), then in the tail the tensor-parallel all-reduce,
    then the tied all-reduce, as finalize_model_grads runs them."""
    sc = _load("mlperf41-gpt3-512", ["step.grad_sync_held=[]"])
    names = [(i.name, i.figure) for i in step_end.items(sc, sc.derived())]
    dp = names.index(("data-parallel gradient reduce-scatter", "grad_sync"))
    tp = names.index(("tensor-parallel all-reduce of the whole-on-rank gradients", "grad_sync_tail"))
    tied = names.index(("tied embedding gradient all-reduce", "grad_sync_tail"))
    assert dp < tp < tied


def test_tie_runs_after_the_data_parallel_sync_on_the_trace():
    """On n21-145b (DP 24, 16 stages on 8 ranks, a tied head on stage 15, rank 7; Megatron-LM 2021: no sequence
    parallelism) the ranks holding the embedding and the head
    run the tied all-reduce as their last grad-sync row: after the rank's pipeline and every bucket of its
    data-parallel reduction, as long as tied_embedding_ms, and the optimizer step after it."""
    sc = _load("n21-145b", ["pipeline.microbatches=16"])
    tail = sc.step_costs().grad_sync_tail
    tied = grad_sync.tied_embedding_ms(sc, sc.derived().setup, 2)
    assert tail[0] == pytest.approx(tied[0]) and tail[15] == pytest.approx(tied[15]) and not any(tail[1:15])
    trace = simulation.run(sc).trace
    rows, ends = trace.step, pipeline_ends(trace)
    for r, s in ((0, 0), (7, 15)):
        mine = sorted((float(x["start"]), float(x["end"])) for x in rows[(rows["kind"] == GRAD_SYNC) & (rows["rank"] == r)])
        last = mine[-1]
        assert last[1] - last[0] == pytest.approx(tied[s], rel=1e-9)
        assert all(end <= last[0] + 1e-9 for _, end in mine[:-1]) and last[0] >= ends.rank_end[r] - 1e-9
        opt = rows[(rows["kind"] == OPTIMIZER) & (rows["rank"] == r)]
        assert float(opt["start"][0]) >= last[1] - 1e-9


def test_deepspeed_keeps_its_tie_before_its_reduction():
    """DeepSpeed's pipeline engine reduces the tied gradients before its data-parallel step (_exec_reduce_tied_grads):
    no tail on BLOOM."""
    sc = _load("bloom-176b")
    assert sc.step.runtime == "deepspeed-bf16"
    assert sc.step_costs().grad_sync_tail == ()


# --- the attention's norms and a shared expert's gate whole on every tensor rank -------------------------------

def test_qk_norms_whole_on_each_tensor_rank():
    """Qwen3-235B: q_layernorm / k_layernorm of hidden_size_per_attention_head (attention.py @ 1e05700 lines 808-823),
    2 x 128 whole beside the two 4,096 RMSNorms and the 128 x 4,096 router: at TP 4 a layer's dense count grows by
    3 x that part over the model's."""
    cfg = _load("mz-qwen3-235b-tp4ep8pp8").derived().setup.cfg
    whole = 2 * 4_096 + 2 * 128 + 128 * 4_096
    assert params.whole_on_tensor(cfg, 0) == whole
    p = params.layer(cfg, 0)
    assert p.dense_over_tensor(4) - p.dense == 3 * whole


def test_shared_expert_gate_whole():
    """A shared expert's gate, ``torch.empty((1, hidden_size))`` (moe/shared_experts.py @ 1e05700 line 53), is whole
    on every tensor rank: h more in an MoE layer's whole part, none in a dense one."""
    cfg = _load("mz-qwen3-235b-tp4ep8pp8").derived().setup.cfg
    gated = replace(cfg, shared_intermediate_size=1_536, shared_expert_gate=True)
    plain = replace(cfg, shared_intermediate_size=1_536)
    assert params.whole_on_tensor(gated, 0) - params.whole_on_tensor(plain, 0) == 4_096
