"""The end-of-step work issue 21 added to [step]'s "derived" figures, each worked out by hand from the
runtime's code: the tied word embedding's gradient all-reduce between the first and the last stage,
ZeRO 1/2's parameter all-gather after the optimizer, and DeepSpeed's bf16 data-parallel step
(docs/step.md, "From the model"; docs/validation.md); and one per-micro-batch overhead of BLOOM's runtime,
Megatron-DeepSpeed's tensor-parallel parameter sync in every forward, its ALiBi pass and DeepSpeed's
gradient accumulation through a cast.  Rates: the A100 preset's (25.5 us NCCL latency,
23.5 GB/s bus bandwidth per HDR NIC, 1.61 TB/s streaming HBM, 2.5 us kernel floor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model.derived_step import derived_sync
from dualpipe_sim.model.grad_sync import grad_sync_tail

ROOT = Path(__file__).resolve().parents[1]
LAT, NIC, HBM, FLOOR = 25.5e-6, 23.5e9, 1.61e12, 2.5e-6


def _load(name, overrides=()):
    # step.dp_comm_sms = 0: the terms here by hand, without the compute slowed beside the data-parallel
    # collectives (its own terms: tests/test_dp_comm_sms.py)
    return scenario.load(ROOT / "scenarios" / "validation" / f"{name}.toml", ["step.dp_comm_sms=0", *overrides])


def _loop(sc, stage):
    """Seconds of the A100-era loops' once-a-step work on a stage copy (model/loop_step.py, by hand in
    tests/test_loop_step.py), which the optimizer figure carries beside the terms here."""
    from dualpipe_sim.model import derive, loop_step
    from dualpipe_sim.model import optimizer_step

    mcore = optimizer_step.megatron_core_optimizer(sc)
    phase, once = loop_step.per_stage_ms(sc, derive.setup(sc), derive.stage_ranks(sc), mcore)
    return (phase[stage] + once[stage]) / 1e3


def _layer(h):  # a GPT layer's parameters: 12 h^2 + 13 h (QKV, out_proj, fc1, fc2 with biases; two LayerNorms)
    return 12 * h * h + 13 * h


def _whole(h):  # of them, what every tensor rank holds whole: two LayerNorms (2 x 2h) and the out_proj / fc2 biases
    return 6 * h  # (Megatron-core @ 1e05700 transformer_layer.py 309-314, 356-361; tensor_parallel/layers.py 1146)


def _layer_over(h, tp):  # a layer as a count a rank holds 1 / tp of takes it: the whole part tp times
    return _layer(h) + (tp - 1) * _whole(h)


# n21-145b: h 12288, V 51200, 80 layers on 16 virtual stages (5 each) of 8 ranks, TP 8, DP 24, fp16 gradients.
H, V = 12288, 51200
# the embedding and the learned positions, whole on each of the 8 tensor ranks (Megatron-LM @ 6985e58
# megatron/model/language_model.py lines 139-141: a torch.nn.Embedding), so 8 times in a count a rank holds 1/8 of
# (so are each layer's norms and row-parallel biases, _whole, and the final LayerNorm: 7 more copies of each)
STAGE0 = 5 * _layer_over(H, 8) + V * H + 8 * 2048 * H
MIDDLE = 5 * _layer_over(H, 8)
LAST = 5 * _layer_over(H, 8) + 8 * 2 * H + V * H  # the final norm (whole on each rank) and the tied head's own copy


def _dp_all_reduce(params):  # fp16 over 24 ranks, one per node (TP 8): one NIC
    return LAT + 2 * params / 8 * 2 * 23 / 24 / NIC


def test_tied_embedding_all_reduce_by_hand():
    # Megatron-LM (training.py @ 6985e58): the first and the last pipeline rank (0 and 7, different nodes)
    # all-reduce the word embedding's fp16 gradient, V x h / 8 elements: a 2-rank ring carries it once
    sc = _load("n21-145b")
    d = sc.derived()
    assert (d.stages[0].dense_params, d.stages[7].dense_params, d.stages[15].dense_params) == (STAGE0, MIDDLE, LAST)
    tied = LAT + V * H / 8 * 2 / NIC
    got = derived_sync(sc, "grad_sync")
    assert got[0] == pytest.approx(_dp_all_reduce(STAGE0) * 1e3)
    assert got[15] == pytest.approx(_dp_all_reduce(LAST) * 1e3)
    assert got[7] == pytest.approx(_dp_all_reduce(MIDDLE) * 1e3)
    # the tie runs after the data-parallel sync, in the step's tail (training.py: allreduce_gradients, then the
    # word embeddings' all-reduce); no sequence parallelism in 2021: nothing else there
    tail = grad_sync_tail(sc)
    assert tail[0] == pytest.approx(tied * 1e3) and tail[15] == pytest.approx(tied * 1e3)
    assert set(tail[1:15]) == {0.0}  # hold neither: no tie


def test_untied_or_single_stage_or_one_rank_has_no_tied_all_reduce():
    sc = _load("n21-145b", ["model.tie_word_embeddings=false"])
    assert derived_sync(sc, "grad_sync")[0] == pytest.approx(_dp_all_reduce(STAGE0) * 1e3)
    # PP = 1 (k22-22b: TP 8, no data parallelism): the head shares the embedding's weight on its own stage
    assert derived_sync(_load("k22-22b-full"), "grad_sync") == (0.0,)
    # DualPipeV puts stage 0 and stage S-1 on rank 0: the tie never leaves the rank
    base = ["pipeline.schedule=dualpipev", "pipeline.stages=16", "pipeline.chunks_per_rank=1",
            "model.tie_word_embeddings=true"]  # fmt: skip
    got = derived_sync(_load("n21-145b", base), "grad_sync")
    assert got[0] == pytest.approx(_dp_all_reduce(STAGE0) * 1e3)


def test_k22_without_data_parallelism_reduces_only_the_tie():
    # k22-175b: h 12288, V 51200, TP 8, PP 8 (the 1F1B of 8 ranks, 12 layers each), bf16 with fp32 gradients
    sc = _load("k22-175b-full")
    assert set(derived_sync(sc, "grad_sync")) == {0.0}  # no data parallelism
    got = grad_sync_tail(sc)  # the tie, after the (empty) data-parallel sync
    tied = (LAT + V * H / 8 * 4 / NIC) * 1e3
    assert got[0] == pytest.approx(tied) and got[-1] == pytest.approx(tied)
    assert set(got[1:-1]) == {0.0}


# -- ZeRO 1: the parameter all-gather after the optimizer ------------------------------------------------
def _adam(params, zero_ranks=24):  # fp16 weights and gradients: 14 + 16 + 4 + 4 + 6 + 8 bytes per updated one
    return params / 8 / zero_ranks * 52 / HBM + FLOOR


def test_zero1_parameter_all_gather_follows_the_optimizer_by_hand():
    # Megatron's distributed optimizer (gather_model_params after optimizer.step, 2022): the rank's fp16
    # weights all-gathered over the 24 data-parallel ranks, (D - 1) / D of them on the bottleneck link
    sc = _load("n21-145b", ["parallel.zero=1"])
    gather = LAT + MIDDLE / 8 * 2 * 23 / 24 / NIC
    assert derived_sync(sc, "optimizer")[7] == pytest.approx((_adam(MIDDLE) + gather + _loop(sc, 7)) * 1e3)
    # ZeRO 0 updates every weight in place: nothing to gather
    plain = _load("n21-145b")
    assert derived_sync(plain, "optimizer")[7] == pytest.approx((_adam(MIDDLE, 1) + _loop(plain, 7)) * 1e3)


# Overlapped, the next step's pipeline waits for stage 0's all-gather before its first forward: a ring over
# 24 ranks on 24 nodes (one NIC each) as NCCL's tuner times it, 23 network steps: Simple 8.4 + 23 x 14 us
# (LL128's 14 + 23 x 4 us at 0.7 of the bus is slower for 2.3 GB).  One bucket: one ring pass.  Nine (274.8 MB each):
# Megatron-core's bucketed chunk 0, each bucket its own bucket group, launched one at a time, so NCCL 2.18 gets 9
# collectives, not one coalesced group (docs/model.md, "A group of bucket collectives on NCCL v2.17-v2.19"; s14l):
# 9 ring passes, Simple (9 x 330.4 us against LL128's 9 x 106 us, which saves 2.0 ms but loses 43 ms at 0.7 of the bus).
def _start_wait(buckets=1):
    return {1: 1, 9: 9}[buckets] * (8.4 + 23 * 14.0) * 1e-6 + STAGE0 / 8 * 2 * 23 / 24 / NIC


@pytest.mark.parametrize("overrides,exposed", [
    (["step.overlap_grad_sync=true"], False),  # --overlap-param-gather goes with --overlap-grad-reduce
    (["step.overlap_grad_sync=true", "step.overlap_param_gather=false"], True),
    (["step.overlap_grad_sync=false"], True),
])  # fmt: skip
def test_overlapped_parameter_all_gather_hides_under_the_next_forward(overrides, exposed):
    sc = _load("n21-145b", ["parallel.zero=1", "step.grad_sync_buckets=1", *overrides])
    gather = (LAT + MIDDLE / 8 * 2 * 23 / 24 / NIC) if exposed else 0.0
    # hidden, all but stage 0's at the next step's start: each rank's 2 stages carry half that wait each
    start = 0.0 if exposed else _start_wait() / 2
    assert derived_sync(sc, "optimizer")[7] == pytest.approx((_adam(MIDDLE) + gather + start + _loop(sc, 7)) * 1e3)


@pytest.mark.parametrize("buckets", [1, 9])
def test_overlapped_gather_start_wait_lands_once_on_every_rank(buckets):
    # 16 stages on 8 ranks: every rank's optimizer (the sum over its 2 stages) gets the whole wait once
    over = ["parallel.zero=1", "step.overlap_grad_sync=true", f"step.grad_sync_buckets={buckets}"]
    hidden = derived_sync(_load("n21-145b", over), "optimizer")
    exposed = derived_sync(_load("n21-145b", [*over, "step.overlap_param_gather=false"]), "optimizer")
    d = _load("n21-145b").derived()
    gathers = [LAT + st.dense_params / 8 * 2 * 23 / 24 / NIC for st in d.stages]
    added = [(h - e) / 1e3 + g for h, e, g in zip(hidden, exposed, gathers)]  # hidden - (exposed - gather)
    assert added == pytest.approx([_start_wait(buckets) / 2] * 16)
    # ZeRO 0 gathers nothing: no wait
    zero0 = _load("n21-145b", ["step.overlap_grad_sync=true"])
    assert derived_sync(zero0, "optimizer")[7] == pytest.approx((_adam(MIDDLE, 1) + _loop(zero0, 7)) * 1e3)


def test_overlapped_parameter_gather_without_overlapped_reduction_is_refused(tmp_path, capsys):
    with pytest.raises(ScenarioError, match=r"step\.overlap_param_gather: .*overlap_grad_sync"):
        _load("n21-145b", ["parallel.zero=1", "step.overlap_param_gather=true"])
    path = ROOT / "scenarios" / "validation" / "n21-145b.toml"
    code = main(["run", str(path), "--set", "step.overlap_param_gather=true", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
    assert "step.overlap_param_gather" in capsys.readouterr().err


# -- DeepSpeed's bf16 step (BLOOM-176B) --------------------------------------------------------------------
# TP 4, PP 12, DP 8 (two ranks of each data-parallel group per node: 2 NICs), layers [5, 6 x 10, 5], h 14336,
# V 250880; Jean Zay's Omni-Path typed as 6.25 GB/s per GPU: the preset's NIC bus bandwidth x 6.25 / 25.
BH, BV = 14336, 250880
OPA = NIC * 6.25 / 25


def test_deepspeed_bf16_gradient_all_reduce_by_hand():
    sc = _load("bloom-176b")
    whole = 6 * _layer_over(BH, 4) / 4  # a middle stage's elements on one rank: norms and row biases whole
    assert sc.derived().stages[5].dense_params == 6 * _layer_over(BH, 4)
    # the fp32 gradient cast to bf16, all-reduced over 8 ranks on 2 NICs, scaled by 1/8 and cast back:
    # 6 + 4 + 6 bytes per element streamed through HBM
    want = LAT + whole * 2 * 2 * 7 / 8 / (2 * OPA) + whole * 16 / HBM
    got = derived_sync(sc, "grad_sync")
    assert got[5] == pytest.approx(want * 1e3)
    # the first stage adds the tied embedding's fp32 gradient (_hp_grad), all-reduced with the last stage's
    first = 5 * _layer_over(BH, 4) / 4 + BV * BH / 4 + 2048 * BH  # the position table whole on each of the TP 4 ranks
    tied = LAT + BV * BH / 4 * 4 / OPA
    assert got[0] == pytest.approx((LAT + first * 2 * 2 * 7 / 8 / (2 * OPA) + first * 16 / HBM + tied) * 1e3)


def test_deepspeed_bf16_optimizer_by_hand():
    sc = _load("bloom-176b")
    whole = 6 * _layer_over(BH, 4) / 4
    # Adam on the rank's 1/8 shard (bf16 weights, fp32 gradients: 14 + 16 + 4 + 4 bytes), the gradient norm
    # over the whole fp32 gradient (4 bytes: the shard's 4 are among the 38), one kernel floor; then the bf16
    # weights all-gathered over the 8 ranks (sequential, in the optimizer's step())
    adam = (whole / 8 * 38 + (whole - whole / 8) * 4) / HBM + FLOOR
    gather = LAT + whole * 2 * 7 / 8 / (2 * OPA)
    assert derived_sync(sc, "optimizer")[5] == pytest.approx((adam + gather + _loop(sc, 5)) * 1e3)


@pytest.mark.parametrize("overrides,words", [
    (["parallel.zero=0"], r"^step\.runtime: .*parallel\.zero must be 1, got 0"),  # named by the key whose rule it is
    (["step.overlap_grad_sync=true"], r"step\.overlap_grad_sync: must be false"),
])  # fmt: skip
def test_deepspeed_bf16_refuses_what_it_does_not_describe(overrides, words):
    with pytest.raises(ScenarioError, match=words):
        _load("bloom-176b", overrides)


def test_megatron_runtime_is_the_default_and_unknown_runtimes_are_refused():
    sc = _load("n21-145b")
    assert sc.step.runtime == "megatron"
    with pytest.raises(ScenarioError, match=r"step\.runtime"):
        _load("n21-145b", ["step.runtime=deepspeed"])


# -- Megatron-DeepSpeed's --sync-tp-duplicated-parameters (BLOOM) --------------------------------------------
def test_tp_duplicated_parameter_syncs_by_hand():
    from dualpipe_sim.model import derive

    # every forward of a BLOOM layer (LayerNorm with bias, biased linears, TP 4) all-reduces 2 x 2 norm parameters
    # and the out_proj and fc2 biases: 6 tensors of h = 14336 bf16 elements = 28,672 B over 4 ranks on NVLink; full
    # recomputation runs the forward again in the backward: 12 per layer and micro-batch. The A100's measured
    # all-reduce bus bandwidth between 16 KiB (0.67 GB/s) and 32 KiB (1.37 GB/s), log-linear at 28,672 B
    size = BH * 2
    bus = 0.67e9 + (1.37e9 - 0.67e9) * 0.8073549220576041  # log2(28672 / 16384)
    each = size * 2 * 3 / 4 / bus
    rows = [k for k in derive.layer_kernels(derive.setup(_load("bloom-176b")), 0) if "tp-duplicated" in k.name]
    comps = sorted(k.component for k in rows)
    assert comps == sorted(["attn_forward"] * 3 + ["attn_backward_input"] * 3 + ["mlp_forward"] * 3
                           + ["mlp_backward_input"] * 3)  # fmt: skip
    assert sum(k.seconds for k in rows) == pytest.approx(12 * each)
    # Megatron-core (the default) has no such step
    off = _load("bloom-176b", ["parallel.sync_tp_duplicated_parameters=false"])
    assert not [k for k in derive.layer_kernels(derive.setup(off), 0) if "tp-duplicated" in k.name]


def test_alibi_through_baddbmm_by_hand():
    from dualpipe_sim.model import derive

    # Megatron-DeepSpeed's ALiBi: baddbmm(alibi slice, q, k^T, beta=1) copies the broadcast biases into the
    # b x heads/t x s x s output (a write) and the GEMM reads it back: 2 x 2 bytes per score. BLOOM: micro-batch 2,
    # 112 heads / TP 4, s 2048: 56 x 2048^2 scores; in the forward and, with full recomputation, again
    rows = [k for k in derive.layer_kernels(derive.setup(_load("bloom-176b")), 0) if "alibi" in k.name]
    assert sorted(k.component for k in rows) == ["attn_backward_input", "attn_forward"]
    each = 56 * 2048**2 * 2 * 2 / HBM + FLOOR
    assert [k.seconds for k in rows] == [pytest.approx(each)] * 2
    off = derive.setup(_load("bloom-176b", ["model.alibi=false"]))
    assert not [k for k in derive.layer_kernels(off, 0) if "alibi" in k.name]


def test_deepspeed_bf16_gradient_accumulation_by_hand():
    from dualpipe_sim.model import derive

    # update_hp_grads (DeepSpeed v0.6.5) every micro-batch: hp_grad.add_(lp_grad.to(fp32)): 2 + 4 bytes for the
    # cast, 4 + 4 + 4 for the add, over the rank's share of the layer (12 h^2 + 13 h over TP 4, the norms and row biases
    # whole: _layer_over)
    st = derive.setup(_load("bloom-176b"))
    [row] = [k for k in derive.layer_kernels(st, 0) if k.name == "gradient accumulation"]
    assert row.component == "mlp_backward_weight"
    assert row.seconds == pytest.approx(_layer_over(BH, 4) / 4 * 18 / HBM + FLOOR)
    # the first stage's embedding (vocabulary 250,880 x h / TP 4, and 2,048 positions x h whole on each rank) as well
    [emb] = [k for k in derive.extra_kernels(st, st.stages[0]) if k.name == "embedding gradient accumulation"]
    assert emb.seconds == pytest.approx((BV / 4 + 2048) * BH * 18 / HBM + FLOOR)
    # Megatron-LM 2021's DDP hook instead: main_grad.add_(grad), read 2 + 4, write 4 (model.runtime alone)
    meg = derive.setup(_load("bloom-176b", ["step.runtime=megatron"]))
    [row] = [k for k in derive.layer_kernels(meg, 0) if k.name == "gradient accumulation"]
    assert row.seconds == pytest.approx(_layer_over(BH, 4) / 4 * 10 / HBM + FLOOR)


def test_a_tied_head_on_the_embeddings_stage_accumulates_the_shared_weight_once():
    from dualpipe_sim.model import derive

    # n21-1.7b (PP 1, TP 1, fp16 gradients) run over 16 micro-batches: autograd's += from the second on, 3 x 2 x 15 / 16
    # bytes a micro-batch: the embedding's stage accumulates only its positions; the shared word embedding is the head's
    st = derive.setup(_load("n21-1.7b", ["pipeline.microbatches=16"]))
    rows = {k.name: k.seconds for k in derive.extra_kernels(st, st.stages[0])}
    per = 3 * 2 * 15 / 16
    assert rows["embedding gradient accumulation"] == pytest.approx(2048 * 2304 * per / HBM + FLOOR)
    assert rows["output layer gradient accumulation"] == pytest.approx(51200 * 2304 * per / HBM + FLOOR)


@pytest.mark.parametrize("stages", [2, 4, 6])
def test_stage_placement_does_not_depend_on_microbatches(stages):
    """stage_ranks builds a schedule with the fewest micro-batches its family accepts: every registered
    family must place each stage on the same ranks whatever the micro-batch count."""
    from dualpipe_sim.schedules import registry

    for name in registry.families():
        seen = {}
        for m in (1, 2, stages, 2 * stages, 3 * stages, 6 * stages):
            try:
                seen[m] = [sorted(r) for r in registry.build(name, stages, m).stages_on_rank()]
            except Exception:  # a count the family refuses
                continue
        assert len(seen) >= 2, name
        assert all(v == next(iter(seen.values())) for v in seen.values()), (name, seen)


# -- Transformer Engine's FP8 weight refresh once per step (MLPerf v3.1 GPT-3 at 512 GPUs) ---------------
# h 12288, one layer per stage, TP 4, DP 16, fp8 through TE (fp8_gemm "cublas"), ZeRO 1 overlapped, 9 buckets.
GH = 12288
H100_HBM = 2.90e12  # the H100 preset's streaming HBM bandwidth (docs/model.md, "Kernel rates")
# TE v0.7-v1.6's cast_transpose, which the v3.1 rows' TE @ 09ba842 runs (model.te_cast_transpose): NVIDIA/
# TransformerEngine#101's 4,096^2 FP16 -> FP8 row on an H100 SXM, 4 bytes an element in 51.95 us
TE101_CAST_TRANSPOSE = 4 * 4096 * 4096 / 51.95e-6


def _cast_per_layer():
    # the layer's linears: QKV 3h^2, out_proj h^2, fc1 4h^2, fc2 4h^2 = 12 h^2 weights, / TP 4 on a rank;
    # TE's cast + transpose reads 2 bytes and writes 1 + 1 for each, at its measured rate
    return 12 * GH * GH / 4 * (2 + 1 + 1) / TE101_CAST_TRANSPOSE


@pytest.mark.parametrize("overrides,cast", [
    ([], True),
    (["memory.fp8_weight_cache=false"], False),  # no cache: not this once-a-step refresh
    (["model.fp8_gemm=deepgemm", "model.fp8_amax_reduction=data", 'model.te_cast_transpose="nvrtc"'], False),  # DeepGEMM's runtime quantises its own way
])  # fmt: skip
def test_fp8_weight_refresh_once_per_step_by_hand(overrides, cast):
    sc = _load("mlperf31-gpt3-512", overrides)
    assert sc.derived().setup.rates.hbm == H100_HBM
    # in BF16 the row's FP8-only keys (and the overrides, all FP8-only) are refused: left at their defaults
    bf16 = ["model.fp8=false", "model.fp8_amax_reduction=data", "parallel.tp_overlap_atomic=[]",
            'model.te_cast_transpose="nvrtc"']
    base = derived_sync(_load("mlperf31-gpt3-512", bf16), "optimizer")
    got = derived_sync(sc, "optimizer")
    # a middle stage (one layer, rank 5's 12 stages): only the cast differs from the same run in BF16
    # (the gather wait and the Adam step are the same bytes: weights and optimizer states do not change)
    assert got[5] - base[5] == pytest.approx(_cast_per_layer() * 1e3 if cast else 0.0)
    if cast:
        assert _cast_per_layer() * 1e3 == pytest.approx(1.403, abs=1e-3)  # 0.625 ms at the HBM row


def test_mlperf_start_wait_by_hand():
    # stage 0: the layer (12 h^2 + 13 h) and the embedding (50,688 x h padded vocabulary), / TP 4, and the
    # 2,048 x h learned positions, whole on every tensor rank (Megatron-LM @ 1e05700 language_model_embedding.py
    # lines 65-68), bf16; DP 16 as 8 nodes of 2 ranks (2 NICs): Simple ring 8.4 + 8 x 3.4 (NVLink hops) + 7 x 14 us, LL128
    # 14 + 8 x 1.9 + 7 x 4 us at 0.92 of the bus; 9 buckets each pay the ring's latency
    # the embedding in apex's buckets (NeMo 1.x's own fp32 AdamW off: tests/test_nemo_held_grad_sync.py has it on)
    nemo_off = ["step.fp32_embedding_optimizer=false", "step.grad_sync_held=[]"]
    sc = _load("mlperf31-gpt3-512", nemo_off)
    rates = sc.derived().setup.rates
    # the layer's two LayerNorms and out_proj / fc2 biases (6h) are whole on every rank too (_whole): 3 more copies
    stage0 = ((12 * GH * GH + 13 * GH + 50688 * GH) / 4 + 3 * 6 * GH / 4 + 2048 * GH) * 2
    assert sc.derived().stages[0].dense_params == 12 * GH * GH + 13 * GH + 3 * 6 * GH + (50688 + 4 * 2048) * GH
    moved, bus = stage0 * 15 / 16, 2 * rates.nic_bus
    # NCCL 2.18's coalesced group on 16 channels (dp_comm_sms 0: NCCL's own; docs/model.md, "A group of bucket
    # collectives on NCCL v2.17-v2.19"): a 140.9 MB bucket on ceil(140.9 / 33.55) = 5 channels, 45 pieces, 3 ring
    # passes on the busiest; the tuner counts one latency (8.8 MB a rank: 1 channel an op, 8 ops after the first, over
    # 8 of the 16 channels: half the bus) and picks Simple
    simple, ll128 = (8.4 + 8 * 3.4 + 7 * 14) * 1e-6, (14 + 8 * 1.9 + 7 * 4) * 1e-6
    assert simple + moved / (bus / 2) < ll128 + moved / (bus * 0.92 / 2)
    want = 3 * simple + moved / bus
    from dualpipe_sim.model.param_gather import start_gather_ms

    assert start_gather_ms(sc.derived().setup, sc.derived().stages[0], 9) == pytest.approx(want * 1e3)
    # 12 stages a rank: each carries 1/12 of it, beside its Adam step and its cast
    fp16 = derived_sync(_load("mlperf31-gpt3-512", ["step.overlap_param_gather=false", *nemo_off]), "optimizer")
    gather = derived_sync(_load("mlperf31-gpt3-512", nemo_off), "optimizer")
    from dualpipe_sim.model.param_gather import param_gather_ms

    d = sc.derived()
    exposed = param_gather_ms(d.setup, d.stages[5])
    assert gather[5] - (fp16[5] - exposed) == pytest.approx(want * 1e3 / 12)


@pytest.mark.parametrize("schedule", ["dualpipe", "chimera", "1f1b"])
def test_start_wait_once_per_rank_whatever_the_copies(schedule):
    # DualPipe and Chimera hold two stage copies a rank (r and S-1-r), 1F1B one: every rank's optimizer,
    # the sum over the copies it holds, gets the wait once
    over = [f"pipeline.schedule={schedule}", "pipeline.stages=8", "pipeline.chunks_per_rank=1", "parallel.zero=1",
            "step.overlap_grad_sync=true", "step.grad_sync_buckets=1"]  # fmt: skip
    hidden = derived_sync(_load("n21-145b", over), "optimizer")
    exposed = derived_sync(_load("n21-145b", [*over, "step.overlap_param_gather=false"]), "optimizer")
    sc = _load("n21-145b", over)
    d = sc.derived()
    from dualpipe_sim.model.derive import stage_ranks
    from dualpipe_sim.model.param_gather import param_gather_ms, start_gather_ms

    wait = start_gather_ms(d.setup, d.stages[0], 1)
    added = [h - (e - param_gather_ms(d.setup, st)) for h, e, st in zip(hidden, exposed, d.stages)]
    held = stage_ranks(sc)
    for r in range(8):
        assert sum(a for a, ranks in zip(added, held) if r in ranks) == pytest.approx(wait)
