"""Issue 21 (second part): expert GEMMs as Transformer Engine launches them, the BF16 output layer of an
FP8 model and ``model.attention`` for the GPT-2 family.  Every expected figure is worked by hand from
gemm.py's documented model and the runtime's code (cited in docs/model.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import activations, derive, gemm, kernels
from dualpipe_sim.model.rates import PRESETS, SM90_BF16_SHORT_RUNS
from helpers import kernel_table

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"
H100 = PRESETS["H100"]
FLOOR, PEAK, KO, HBM = 5.54e-6, 765e12, 103, 2.90e12  # H100's sustained BF16 peak (docs/model.md)


def _load(name, overrides=()):
    return derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides)))


def _table(cfg, streams):
    return kernels.Table(H100, kernels.Layout(seq=4096, micro_batch=1, expert_streams=streams), cfg)


# -- expert GEMMs: one cuBLAS GEMM per local expert on Transformer Engine's 4 streams ----------------------
def test_six_expert_gemms_on_four_streams_by_hand():
    # 6 experts of 128 x 256 x 4096 (BF16) on 4 streams: a round of 4 GEMMs, then a round of 2.
    # Round of 4: 128 x 128 tiles, 2 per GEMM -> 8 tiles; K split 16 ways (slices of 256; 128 blocks <= 2 x 132):
    # one wave, useful 4 x 128 x 256 x 16 / (132 x 128 x 128) = 64/66, mainloop 256 / (256 + 103).
    # Round of 2: 4 tiles x 16 = 64 blocks: useful 32/66, the same mainloop share.
    # Each GEMM reads A (128 x 4096) and B (4096 x 256) and writes C (128 x 256), 2 bytes each.
    cfg = _load("mz-qwen3-235b-tp4ep8pp8").cfg
    tb = _table(cfg, 4)
    got = tb.experts("experts fc1", "mlp_forward", 128, 256, 4096, groups=6)
    one_bytes = (128 * 4096 + 4096 * 256 + 128 * 256) * 2
    flops1 = 2 * 128 * 256 * 4096
    main_share = 256 / (256 + KO)
    round4 = FLOOR + max(4 * flops1 / (PEAK * 64 / 66 * main_share), 4 * one_bytes / HBM)
    round2 = FLOOR + max(2 * flops1 / (PEAK * 32 / 66 * main_share), 2 * one_bytes / HBM)
    assert got == pytest.approx(round4 + round2)
    (row,) = tb.rows  # one row for the whole launch
    assert row.flops == 6 * flops1 and row.bytes == pytest.approx(6 * one_bytes)
    assert "4 streams: 2 rounds" in row.shape


def test_one_grouped_kernel_is_every_experts_tiles_at_once():
    # the same six GEMMs as one grouped kernel (model.expert_gemm = "grouped"), one floor instead of two.
    # 128 x 128 tiles: 12; split 16 -> 192 blocks, 2 waves: useful 6 x 128 x 256 x 16 / (2 x 132 x 128 x 128)
    # = 96/132 at slices of 256 (256/359); split 8 -> 96 blocks, one wave: also 96/132, at slices of 512
    # (512/615): the best.  128 x 256 tiles: 6; split 16 -> 96 blocks: 96/132 x 256/359.
    cfg = _load("mz-qwen3-235b-tp4ep8pp8").cfg
    tb = _table(cfg, 0)
    got = tb.experts("experts fc1", "mlp_forward", 128, 256, 4096, groups=6)
    flops = 6 * 2 * 128 * 256 * 4096
    nbytes = 6 * (128 * 4096 + 4096 * 256 + 128 * 256) * 2
    want = FLOOR + max(flops / (PEAK * 96 / 132 * 512 / (512 + KO)), nbytes / HBM)
    assert got == pytest.approx(want)
    assert gemm.efficiency(128, 256, 4096, 132, KO, groups=6) == pytest.approx(96 / 132 * 512 / 615)


def test_multi_stream_expert_gemms_keep_the_flops_and_cost_at_least_the_grouped_kernel():
    # Qwen3-235B at TP 4 / EP 8: 16 local experts of 512 tokens (1024 tokens x top-8 x 8 / 128)
    multi, grouped = _load("mz-qwen3-235b-tp4ep8pp8"), _load("mz-qwen3-235b-tp4ep8pp8", ["model.expert_gemm=grouped"])
    rows_m = [k for k in derive.layer_kernels(multi, 0) if k.name.startswith("experts f")]
    rows_g = [k for k in derive.layer_kernels(grouped, 0) if k.name.startswith("experts f")]
    assert len(rows_m) == len(rows_g) == 6
    for a, b in zip(rows_m, rows_g):
        assert a.flops == b.flops == pytest.approx(2 * 16 * math.prod(int(x) for x in b.shape.split()[2:7:2]))
        assert a.seconds >= b.seconds  # four rounds of four GEMMs fill the waves no better than one kernel
        assert a.shape.startswith("16 x ") and "4 streams: 4 rounds" in a.shape
    # EP 32: 4 local experts, one round on 4 streams: the same as one grouped kernel
    ep32 = _load("mz-qwen3-235b-ep32pp8")
    assert all("streams" not in k.shape for k in derive.layer_kernels(ep32, 0) if k.name.startswith("experts f"))


def test_expert_gemm_key_rejects_other_values(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text((VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml").read_text()
                    .replace("micro_batch_size = 1", 'micro_batch_size = 1\nexpert_gemm = "loop"'))  # fmt: skip
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.expert_gemm" in err and "multi-stream" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- the head of an FP8 model stays BF16 ----------------------------------------------------------------
def test_fp8_models_output_layer_is_bf16_by_hand():
    # MLPerf v3.1 GPT-3 (FP8, TP 4 with userbuffers): the output layer's shard of the padded vocabulary (50,257 ->
    # 50,688, as NeMo pads it) 50,688 / 4 = 12,672 columns,
    # 2,048 tokens, K = 12,288; one GEMM at the BF16 rate after its input's all-gather (Megatron's own linear: no
    # userbuffers ring, tests/test_eval_forward_kernels.py).
    st = _load("mlperf31-gpt3-512")
    assert st.cfg.fp8
    head = {k.name: k for k in kernels.head(st.cfg, st.rates, st.layout)}
    out = head["output layer"]
    assert out.shape.startswith("2048 x 12672 x 12288 bf16")
    want = gemm.time(2048, 12672, 12288, H100.gemm_bf16, 132, H100.hbm, 2.0).seconds
    assert out.seconds == pytest.approx(want)
    assert out.seconds > gemm.time(2048, 12672, 12288, H100.gemm_fp8, 132, H100.hbm, 1.0).seconds
    # the layers' linears stay FP8
    assert all(k.shape.split("(")[0].strip().endswith("fp8") for k in derive.layer_kernels(st, 0)
               if k.kind == "gemm" and k.name in ("qkv", "fc1", "fc2", "out_proj"))  # fmt: skip


# -- model.attention: what attention the runtime ran ----------------------------------------------------
def test_gpt2_family_defaults_to_eager_and_takes_flash_attention():
    eager = _load("mlperf31-gpt3-512", ["model.attention=eager"])
    flash = _load("mlperf31-gpt3-512")  # the scenario says "flash" (Transformer Engine's attention)
    names = lambda st: {k.name for k in derive.layer_kernels(st, 0)}  # noqa: E731
    assert "scale + mask + softmax" in names(eager) and "flash attention" not in names(eager)
    assert "flash attention" in names(flash) and "scale + mask + softmax" not in names(flash)
    assert "rope" not in names(flash)  # learned positions either way
    # flash: the causal half of 4 s^2 h d / t, s = 2,048, h d = 12,288, t = 4
    core = next(k for k in derive.layer_kernels(flash, 0) if k.name == "flash attention")
    assert core.flops == pytest.approx(4 * 2048**2 * 12288 / 4 / 2)
    # memory: no s x s softmax output kept, the fp32 log-sum-exp instead (96 / 4 heads x 2,048 x 4 bytes)
    acts = lambda st: activations.layer(st.cfg, 0, 2048, 1, st.policy, st.act_bytes, tp=4)  # noqa: E731
    assert "softmax output" in acts(eager) and "softmax output" not in acts(flash)
    assert acts(flash)["softmax log-sum-exp (fp32)"] == 4.0 * 2048 * 96 / 4
    # without the key a GPT-2 config stays eager, as before
    default = _load("n21-1.7b")
    assert default.cfg.eager_attention and "scale + mask + softmax" in names(default)


def test_attention_key_makes_a_llama_eager():
    st = _load("mz-qwen3-235b-tp4ep8pp8", ["model.attention=eager"])
    names = {k.name for k in derive.layer_kernels(st, 0)}
    assert "attention scores QK^T (batched)" in names and "flash attention" not in names and "rope" in names


def test_attention_key_rejects_other_values(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text((VALIDATION / "mlperf31-gpt3-512.toml").read_text().replace('attention = "flash"', 'attention = "sdpa"'))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.attention" in err and "flash" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- the dispatcher's own kernels -----------------------------------------------------------------------
def test_regrouping_by_local_expert_and_the_count_exchange_by_hand():
    # Qwen3-235B, TP 4 / EP 8 with the alltoall dispatcher: 4096 / 4 = 1024 tokens per rank, top-8: 8192 rows of
    # h = 4096 in BF16 received (balanced routing), read and written once to group them by the 16 local experts:
    # 134,217,728 bytes, after the dispatch and again (reversed) before the combine, and both again in the backward.
    st = _load("mz-qwen3-235b-tp4ep8pp8", ["model.moe_dispatcher=alltoall"])
    rows = [k for k in derive.layer_kernels(st, 0) if "local expert" in k.name]
    assert sorted((k.name, k.component) for k in rows) == [
        ("sort by local expert", "mlp_forward"), ("sort by local expert backward", "mlp_backward_input"),
        ("unsort by local expert", "mlp_forward"), ("unsort by local expert backward", "mlp_backward_input")]
    for k in rows:
        assert k.bytes == 2 * 1024 * 8 * 4096 * 2
        assert k.seconds == pytest.approx(2.5e-6 + 134217728 / HBM)
    # the counts: 128 experts x 8 bytes from each of the 8 expert-parallel ranks, all-gathered over NVLink:
    # 25.5 us + 8192 x 7/8 / 321 GB/s
    (counts,) = [k for k in derive.layer_kernels(st, 0) if k.name == "token counts all-gather"]
    assert counts.component == "dispatch_forward" and counts.bytes == 8192
    assert counts.seconds == pytest.approx(25.5e-6 + 8192 * 7 / 8 / 321e9)


def test_one_local_expert_needs_no_regrouping_and_no_expert_parallelism_no_exchange():
    # EP 128: one expert per rank; EP 1: nothing is sent, no counts are exchanged
    one = _load("mz-qwen3-235b-tp4ep8pp8", ["parallel.expert=128", "parallel.data=32", "model.moe_dispatcher=alltoall"])
    names = {k.name for k in derive.layer_kernels(one, 0)}
    assert "sort by local expert" not in names and "token counts all-gather" in names
    alone = _load("mz-qwen3-235b-tp4ep8pp8", ["parallel.expert=1", "model.moe_dispatcher=alltoall"])
    names = {k.name for k in derive.layer_kernels(alone, 0)}
    assert "sort by local expert" in names and "token counts all-gather" not in names


def test_deepep_layer_kernel_list_by_hand():
    """One small MoE layer under Megatron-core's flex dispatcher (DeepEP), TP 1, EP 8 on one H100 node, read call by
    call at NVIDIA/Megatron-LM @ 1e05700 (token_dispatcher.py _DeepepManager / MoEFlexTokenDispatcher, fused_a2a.py)
    and 6a6cd478 (the same calls), DeepEP csrc/deep_ep.cpp @ 9fe9021: the dispatch sends each token once to each rank
    holding one of its experts; the received rows are permuted straight to the local experts by TE's permute with
    the multihot routing map (no sort_chunks_by_idxs either way); the unpermute sums a token's local rows back to
    one row before the combine; DeepEP carries the probabilities (no probs all-to-all).
    4,096 tokens of h 1,024, 32 experts top-4, 4 a rank: a rank holds none of a token's 4 with probability
    C(28, 4) / C(32, 4) = 20,475 / 35,960, so R = 4,096 x 8 x (1 - 20,475 / 35,960) = 14,110.5 rows received,
    16,384 (= 4,096 x 4) rows for the experts."""
    st = derive.setup(scenario.sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "qwen3_moe", "hidden_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 8,
                  "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 4096, "moe_intermediate_size": 512,
                  "num_experts": 32, "num_experts_per_tok": 4, "vocab_size": 32000, "tie_word_embeddings": False,
                  "seq_length": 4096, "micro_batch_size": 1, "moe_dispatcher": "deepep"},
        "parallel": {"tensor": 1, "data": 8, "expert": 8},
        "hardware": {"preset": "H100"}}))  # fmt: skip
    rows = [k for k in derive.layer_kernels(st, 0) if not k.component.startswith("attn") and k.kind != "host"]
    assert [k.name for k in rows if k.component == "mlp_forward"] == [
        "pre-mlp norm", "router", "router softmax + top-k", "permute row-id map", "permute", "experts fc1 (grouped)",
        "experts swiglu", "experts fc2 (grouped)", "unpermute + weighted sum", "residual add"]
    assert [k.name for k in rows if k.component == "mlp_backward_input"] == [
        "unpermute backward", "experts fc2 dgrad (grouped)", "experts swiglu backward", "experts fc1 dgrad (grouped)",
        "permute backward", "router backward", "router dgrad", "pre-mlp norm backward"]
    assert [(k.name, k.component) for k in rows if k.kind == "comm"] == [
        ("token counts all-gather", "dispatch_forward"), ("all-to-all", "dispatch_forward"),
        ("all-to-all", "combine_forward"), ("all-to-all", "dispatch_backward"), ("all-to-all", "combine_backward")]
    received, routed, h = 4096 * 8 * (1 - 20475 / 35960), 4096 * 4, 1024
    assert received == pytest.approx(14_110.5, abs=0.05)
    by = {(k.name, k.component): k for k in rows}
    # the row-id map over the received rows x 4 local experts, 25 B an entry, two kernels at the launch floor
    assert by["permute row-id map", "mlp_forward"].bytes == pytest.approx(received * 4 * 25)
    # the permute reads each received row once and writes its routed copies; the unpermute and both backwards the
    # same rows the other way: (14,110.5 + 16,384) x 1,024 x 2 B = 62.45 MB, at H100's 2.9 TB/s after the floor
    for name, comp in (("permute", "mlp_forward"), ("unpermute + weighted sum", "mlp_forward"),
                       ("unpermute backward", "mlp_backward_input"), ("permute backward", "mlp_backward_input")):
        assert by[name, comp].bytes == pytest.approx((received + routed) * h * 2)
        assert by[name, comp].seconds == pytest.approx(2.5e-6 + (received + routed) * h * 2 / HBM)
    # each phase: the received rows from the other 7 ranks, 7/8 of them, at the NVLink all-to-all rate
    sent = received * 7 / 8 * h * 2
    for comp in ("dispatch_forward", "combine_forward", "dispatch_backward", "combine_backward"):
        assert by["all-to-all", comp].bytes == pytest.approx(sent)
        assert by["all-to-all", comp].seconds == pytest.approx(25.5e-6 + sent / 321e9)


# -- model.moe_aux_loss ---------------------------------------------------------------------------------------
def test_aux_loss_kernels_and_their_all_reduce_by_hand():
    # Qwen3-235B TP 4 (aux loss on): 1024 tokens x 128 experts per rank.  Scores: read the fp32 logits and
    # write fp32 scores (8 bytes per entry); the loss: read the scores (4) and the routing map (1); backward:
    # the scores' gradient (8).  The 128 int64 counts all-reduced over the 4 tensor-parallel ranks on NVLink:
    # 25.5 us + 1024 x 2 x 3/4 / 321 GB/s.
    st = _load("mz-qwen3-235b-tp4ep8pp8")
    rows = {(k.name, k.component): k for k in derive.layer_kernels(st, 0)}
    n, E = 1024, 128
    for key, nbytes in {("aux-loss scores", "mlp_forward"): n * E * 8, ("aux loss", "mlp_forward"): n * E * 5,
                        ("aux loss backward", "mlp_backward_input"): n * E * 8}.items():  # fmt: skip
        assert rows[key].bytes == nbytes and rows[key].seconds == pytest.approx(2.5e-6 + nbytes / HBM)
    ar = rows[("aux-loss token counts all-reduce", "mlp_forward")]
    assert ar.seconds == pytest.approx(25.5e-6 + 1024 * 2 * 3 / 4 / 321e9)
    # off (Megatron's --moe-aux-loss-coeff default 0.0): none of them
    off = _load("mz-qwen3-235b-tp4ep8pp8", ["model.moe_aux_loss=false"])
    assert not [k for k in derive.layer_kernels(off, 0) if "aux" in k.name]
    # TP 1: no sequence split, nothing to all-reduce
    tp1 = _load("mz-qwen3-235b-tp4ep8pp8", ["parallel.tensor=1", "parallel.data=32"])
    names = {k.name for k in derive.layer_kernels(tp1, 0)}
    assert "aux loss" in names and "aux-loss token counts all-reduce" not in names


def test_aux_loss_runs_once_in_the_recompute_under_full_recomputation():
    st = _load("mz-qwen3-235b-tp4ep8pp8", ["memory.recompute=full"])
    comps = [k.component for k in derive.layer_kernels(st, 0) if k.name == "aux loss"]
    assert comps == ["mlp_backward_input"]


# Qwen3-30B-A3B (the Pai row's model) as s21k's explore run drew it: one stage, one micro-batch of 1,024 tokens, DP 2,
# EP 1, H100; its forward was 211.69 ms without recomputation and 207.16 ms with full recomputation
QWEN3_30B = ["pipeline.stages=1", "pipeline.microbatches=1", "parallel.data=2", "parallel.expert=1",
             "hardware.preset=H100", "model.seq_length=1024"]
AUX_FORWARD = {"aux-loss scores", "aux loss", "aux-loss token counts all-reduce"}


@pytest.mark.parametrize("tensor", [1, 2])
def test_full_recomputation_drops_only_the_aux_loss_from_the_first_forward(tensor):
    """Megatron-core's CheckpointFunction.forward runs the layer under torch.no_grad() and router.py computes the
    aux loss only ``if self.training and torch.is_grad_enabled()`` ("Skip auxiliary loss calculations when using
    torch.no_grad() or checkpointing", Megatron-LM @ 1e05700 router.py lines 234-236): the forward's kernel list
    with full recomputation is the one without less the aux loss's rows (its E-count all-reduce with TP 2), and
    its host row 7 PyTorch calls fewer (the scores' softmax, the loss's 6: host._CALLS; 8 with the all-reduce).
    The layer is host-bound at 1,024 tokens (its forward is the host's replay of its calls), so the forward is
    7 x 13.5 us shorter a layer: 48 x 94.5 us = 4.536 ms a stage."""
    par = [f"parallel.tensor={tensor}", f"parallel.data={4 // tensor}"]
    none, full = (_load("pai643-qwen3-30b-a3b-pp4ep4", QWEN3_30B + par + [f"memory.recompute={r}"])
                  for r in ("none", "full"))
    kn, kf = derive.layer_kernels(none, 0), derive.layer_kernels(full, 0)
    fwd_n = [k for k in kn if k.component.endswith("_forward")]
    fwd_f = [k for k in kf if k.component.endswith("_forward")]
    gone = {k.name for k in fwd_n} - {k.name for k in fwd_f}
    # with TP 2 Transformer Engine's qkv, autograd off, also gathers its input by NCCL before one whole GEMM, not in
    # its userbuffers ring (test_te_checkpoint_first_forward.py)
    gather = {"tp all-gather (ring overlap)"} if tensor > 1 else set()
    assert gone == (AUX_FORWARD | gather if tensor > 1 else AUX_FORWARD - {"aux-loss token counts all-reduce"})
    host_n, host_f = (next(k for k in f if k.name == "host launches and syncs") for f in (fwd_n, fwd_f))
    # the all-reduce is one call more; with TP 2 the qkv's NCCL gather and whole GEMM (2 calls) one fewer than the
    # ring's exchange and 2 GEMM chunks (host.calls)
    calls = {1: (322, 315), 2: (332, 323)}[tensor]
    assert host_n.shape.startswith(f"{calls[0]} calls") and host_f.shape.startswith(f"{calls[1]} calls")
    qkv = {"qkv", "tp all-gather"} if gather else set()
    assert ([k for k in fwd_n if k.name not in gone | qkv and k is not host_n]
            == [k for k in fwd_f if k is not host_f and k.name not in qkv])
    # the rerun runs with autograd on: its host row is the forward's without recomputation, aux loss included
    rerun = [k for k in kf if k.name == "host launches and syncs" and k.component == "mlp_backward_input"]
    assert [(k.shape, k.seconds) for k in rerun] == [(host_n.shape, host_n.seconds)]
    if tensor == 1:
        saved = sum(k.seconds for k in fwd_n) - sum(k.seconds for k in fwd_f)
        assert saved == pytest.approx(7 * 13.5e-6, rel=1e-9)
        stage = [derive.derive(st).stages[0].forward for st in (none, full)]  # ms: 211.69 and 207.16
        assert stage[0] - stage[1] == pytest.approx(48 * 7 * 13.5e-3, rel=1e-9)
        off = [_load("pai643-qwen3-30b-a3b-pp4ep4", QWEN3_30B + par + ["model.moe_aux_loss=false",
                                                                        f"memory.recompute={r}"])
               for r in ("none", "full")]
        same = [[k for k in derive.layer_kernels(st, 0) if k.component.endswith("_forward")] for st in off]
        assert same[0] == same[1]  # without the aux loss the checkpointed forward is the forward


def test_aux_loss_key_must_be_a_bool(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text((VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml").read_text().replace("moe_aux_loss = true", 'moe_aux_loss = "yes"'))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.moe_aux_loss" in err and "true or false" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_explain_names_the_attention_and_the_expert_launch(capsys):
    assert main(["model", str(VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "attention flash (model.attention)" in out
    assert "expert GEMMs one GEMM per expert on 4 streams (model.expert_gemm), aux loss on" in out
    assert "16 x 512 x 3072 x 4096 bf16 (4 streams: 4 rounds)" in out  # fc1 of the 16 local experts
    assert main(["model", str(ROOT / "scenarios" / "deepseek-v3-predicted.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "expert GEMMs one grouped kernel (model.expert_gemm)" in out and "aux loss on" not in out
    assert main(["model", str(VALIDATION / "n21-145b.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "attention eager (scores in memory)" in out and "expert GEMMs" not in out


def test_sequential_experts_one_at_a_time_by_hand():
    # Megatron's SequentialMLP: each of 2 experts' 128 x 256 x 4096 GEMM alone. 128 x 128 tiles: 2, split 16
    # -> 32 blocks in one wave: useful 128 x 256 x 16 / (132 x 128 x 128) = 32/132 at slices of 256 (split 8:
    # 16/132 at 512/615, less; 128 x 256 tiles: 16/132 at 256/359). Each pays its own floor.
    cfg = _load("mz-qwen3-235b-tp4ep8pp8").cfg
    tb = _table(cfg, 1)
    got = tb.experts("experts fc1", "mlp_forward", 128, 256, 4096, groups=2)
    one = FLOOR + max(2 * 128 * 256 * 4096 / (PEAK * 32 / 132 * 256 / 359), (128 * 4096 + 4096 * 256 + 128 * 256) * 2 / HBM)
    assert got == pytest.approx(2 * one)
    assert "one at a time: 2 GEMMs" in tb.rows[0].shape
    # its activation: one kernel per expert, each with the 2.5 us floor, the same bytes in all
    assert tb.memory("experts swiglu", "mlp_forward", 1e6, launches=16) == pytest.approx(16 * 2.5e-6 + 1e6 / HBM)
    st = _load("mz-qwen3-235b-tp4ep8pp8", ["model.expert_gemm=sequential"])
    rows = {k.name: k for k in derive.layer_kernels(st, 0)}
    assert rows["experts swiglu"].shape.endswith("(16 kernels)") and "16 GEMMs" in rows["experts fc2 (grouped)"].shape


# -- small GEMMs (the expert GEMMs of small experts) against XLA's measured sm_90 table -------------------------
def test_small_bf16_gemms_reproduce_xla_sm90_rows():
    # The 98 single GEMMs of the table with a dimension of 512 or less: the tile/wave model with the short-run fit's
    # constants (XLA's table is short runs; the preset takes a sustained peak) is unbiased there (mean signed error within 3%) with a median |error| under 10%; its worst
    # rows (512 x 256 x 4096 and 256 x 512 x 4096: 33% fast) are the short-and-deep shapes split-K serves.
    import statistics

    rows = kernel_table(ROOT / "tests" / "data" / "kernels" / "xla_matmul_sm90.csv")
    errs = []
    for r in rows:
        b, m, n, k = (int(r[c]) for c in ("b", "m", "n", "k"))
        if b != 1 or min(m, n, k) > 512:
            continue
        measured = 2 * m * n * k / float(r["bf16xbf16->bf16"])
        errs.append(gemm.time(m, n, k, SM90_BF16_SHORT_RUNS, 132, H100.hbm, 2.0).seconds / measured - 1)
    assert len(errs) == 98
    assert statistics.median(abs(e) for e in errs) < 0.10 and abs(statistics.mean(errs)) < 0.03
    assert min(errs) > -0.35 and max(errs) < 0.45



def test_deepseeks_runtime_on_the_generic_moe_block_permutes_what_deepep_delivers():
    """DeepSeek's runtime (FP8 on DeepGEMM, recompute "deepseek") on a layer its own kernel list does not cover (no
    MLA here; TP > 1 alike) falls back to the generic MoE block, its experts' tokens still carried by DeepEP
    (Layout.deepep): as under Megatron's flex dispatcher, the permute runs after the dispatch on the distinct tokens
    received and nothing is regrouped by local expert (s21s's review: the block keyed this on model.moe_dispatcher
    alone and charged the all-to-all dispatcher's permute and sorts). The layer of the test above, FP8: R = 14,110.5
    rows received, 16,384 routed, h 1,024."""
    raw = {"pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
           "model": {"model_type": "qwen3_moe", "hidden_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 8,
                     "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 4096, "moe_intermediate_size": 512,
                     "num_experts": 32, "num_experts_per_tok": 4, "vocab_size": 32000, "tie_word_embeddings": False,
                     "seq_length": 4096, "micro_batch_size": 1, "fp8": True, "fp8_gemm": "deepgemm"},
           "memory": {"recompute": "deepseek"},
           "parallel": {"tensor": 1, "data": 8, "expert": 8},
           "hardware": {"preset": "H100"}}  # fmt: skip
    st = derive.setup(scenario.sections_only(raw))
    assert st.deepseek_kernels and st.dispatcher == "alltoall"
    rows = [k for k in derive.layer_kernels(st, 0) if k.component == "mlp_forward" and k.kind != "host"]
    names = [k.name for k in rows]
    assert "permute" in names and "sort by local expert" not in names and "unsort by local expert" not in names
    received, routed, h = 4096 * 8 * (1 - 20475 / 35960), 4096 * 4, 1024
    (permute,) = [k for k in rows if k.name == "permute"]
    assert permute.bytes == pytest.approx(received * h * 2 + routed * h * 1)  # BF16 rows in, FP8 rows out
    (row_map,) = [k for k in rows if k.name == "permute row-id map"]
    assert row_map.bytes == pytest.approx(received * 4 * 25)  # the received rows x 4 local experts
