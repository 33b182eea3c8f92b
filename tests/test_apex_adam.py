"""apex's Adam step, NeMo's separate FP8 / 16-bit buckets and Megatron-core's optimizer-step overlap of the first
chunk's all-gather (docs/step.md, "apex's Adam step" and "The step's start"), each worked by hand from the runtimes'
code: apex 23.05-24.09 contrib/optimizers/distributed_fused_adam.py and multi_tensor_distopt_adam_kernel.cu, NeMo
v1.17.0 / bd0b818 / v2.0.0.rc0.beta / 24.09-alpha.rc0 megatron_base_model.py and distributed_adam.py, Megatron-core
core_r0.11.0 (5905586) optimizer/__init__.py and optimizer.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import (ddp_buckets, derive, derived_step, fp8_step_casts, nemo_optimizer, optimizer_step,
                                param_gather, step_end)

FOLDER = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
H100_HBM = 2.90e12  # the H100 preset's streaming HBM bandwidth (rates.py)
FLOOR = 2.5e-6  # every preset's kernel floor
H = 12288  # GPT-3 175B
GPT3_LAYER = 12 * H * H + 13 * H  # QKV, proj, fc1, fc2 weights; their biases (3h + h + 4h + h) and two LayerNorms (4h)
# of which every tensor rank holds whole the two LayerNorms (4h) and the proj / fc2 biases (2h) (Megatron-core @ 1e05700
# transformer_layer.py 309-314, 356-361; tensor_parallel/layers.py 1146): at TP 4 a count a rank holds 1/4 of takes
# them 4 times, 3 x 6h more
GPT3_LAYER_TP4 = GPT3_LAYER + 3 * 6 * H
PER_LAUNCH = 320 * 65536  # apex: 320 blocks of 2048 x 32 elements a multi_tensor_apply launch


def _load(name, overrides=()):
    return scenario.load(FOLDER / f"{name}.toml", list(overrides))


def test_apex_bytes_per_element_by_hand():
    # bf16 weights, no FP8 parameters: NeMo sets store_param_remainders.  The kernel reads the bf16 weight (2), the
    # remainder (2), exp_avg and exp_avg_sq (4 + 4) and the bf16 gradient (2), and writes the remainder, the moments
    # and the bf16 param-sync copy (2 + 8 + 2); the gradient norm reads the bf16 gradient once more (2)
    sc = _load("mlperf31-gpt3-512")
    sh = sc.derived().setup.sharding
    assert (sc.model.fp8_params, sh.grads_bytes, sh.params_bytes) == (False, 2.0, 2.0)
    assert nemo_optimizer.apex_adam_bytes(sc.model, sh)[0] == (2 + 2 + 8 + 2) + (2 + 8 + 2) + 2 == 28
    # against Megatron-core's 44: the same Adam plus its fp32 gradient cast (6), the fp32 master read and written (8
    # where apex moves 6), its copy pass (4 + the 2 written) and its fp32 gradient's norm (4)
    assert optimizer_step.optimizer_bytes_per_param(sc.model, sh.optimizer_bytes) == 44
    # FP8 parameters: NeMo sets store_params, an fp32 master read and written (8); an FP8 bucket's p_out is that fp32
    # shard itself (nothing more written), a 16-bit bucket's is its bf16 copy (2)
    sc = _load("mlperf41-gpt3-256")
    assert sc.model.fp8_params
    sh = sc.derived().setup.sharding
    assert nemo_optimizer.apex_adam_bytes(sc.model, sh) == (8 + 8 + 2 + 2 + 8 + 2, 8 + 8 + 2 + 2 + 8)


def test_apex_launches_by_hand():
    assert nemo_optimizer.APEX_ELEMENTS_PER_LAUNCH == PER_LAUNCH == 20_971_520
    assert nemo_optimizer.apex_adam_launches(PER_LAUNCH) == 2  # the Adam kernel and the norm's, one launch each
    assert nemo_optimizer.apex_adam_launches(PER_LAUNCH + 1) == 4
    assert nemo_optimizer.apex_adam_launches(0) == 0
    assert nemo_optimizer.APEX_FIXED_LAUNCHES == 2 * 2 + 1


def test_gpt3_v31_apex_adam_by_hand():
    # MLPerf v3.1 GPT-3 175B on 512 H100: TP 4, PP 8 x 12 chunks (one layer a stage copy), DP 16.  Stage 1: one layer,
    # (1,812,099,072 + 3 x 6h = 1,812,320,256) / TP 4 / DP 16 = 28,317,504 shard elements x 28 B; 2 x 2 launches for
    # them and the rank's 5 fixed ones spread over its 12 copies
    sc = _load("mlperf31-gpt3-512")
    d = sc.derived()
    st = d.setup
    assert (st.sharding.tensor, st.sharding.data, st.rates.hbm, st.rates.floor) == (4, 16, H100_HBM, FLOOR)
    assert d.stages[1].dense_params == GPT3_LAYER_TP4 == 1_812_320_256
    shard = GPT3_LAYER_TP4 / 4 / 16
    assert shard == 28_317_504
    want = shard * 28 / H100_HBM + (2 * 2 + 5 / 12) * FLOOR
    assert want == pytest.approx(2.8445e-4, rel=1e-4)
    nbytes, ms = nemo_optimizer.apex_adam_ms(sc, st, st.stages[1], d.stages[1], 1 / 12)
    assert nbytes == shard * 28
    assert ms == pytest.approx(want * 1e3, rel=1e-12)
    # the run's optimizer figure: Megatron-core's Adam (44 B, one launch) replaced by apex's; the rest is unchanged
    core = _load("mlperf31-gpt3-512", ["step.param_gather=megatron-core", "step.grad_sync_held=[]",
                                       "step.fp32_embedding_optimizer=false"])  # NeMo's, refused without apex
    apex_fig = derived_step.derived_sync(sc, "optimizer", d)[1]
    core_fig = derived_step.derived_sync(core, "optimizer")[1]
    start = [param_gather.step_start_ms(x, x.derived()) / 12 for x in (sc, core)]  # each on its 12 copies
    # Megatron-core's own step start and clip norm (tests/test_step_start_zero.py), which apex's optimizer does not take
    dc = core.derived()
    mcore = (optimizer_step.grad_zero_ms(dc.setup, dc.stages[1])
             + optimizer_step.grad_norm_all_reduce_ms(core, dc.setup)
             * derived_step.once_per_rank(core, len(dc.setup.stages))[1])  # fmt: skip
    assert mcore > 0
    # and the forward slowed beside the gather, whose slowdown is the stage's own kernel mix: apex's per-micro-batch
    # .grad copies (tests/test_nemo_grad_handoff.py) are in the apex run's backward only
    slowed = [{i.name: i.ms for i in step_end.items(x, y)}["forward slowed beside the overlapped all-gather"][1]
              for x, y in ((sc, d), (core, dc))]
    assert (core_fig - start[1] - mcore - slowed[1]) - (apex_fig - start[0] - slowed[0]) == pytest.approx(
        (shard * 44 / H100_HBM + FLOOR - want) * 1e3, rel=1e-9)


def test_nemo_fp8_and_16_bit_buckets_by_hand():
    # MLPerf v4.1 GPT-3 175B on 256 H100 with FP8 parameters: TP 4, PP 8 x 6 chunks, 2 layers a stage copy.  NeMo puts
    # every non-FP8 parameter of the rank into its first layer's bucket and splits it into uint8 and bf16 apex buckets:
    # one bucket more on stage 0's gather (13 given + 1), and rank 0's 5 other copies' biases and norms (2 layers x 13h
    # each, / TP 4, and the 6h of them whole on every tensor rank, norms and proj / fc2 biases, 3 x 6h more / 4)
    # gathered with it at 2 bytes
    sc = _load("mlperf41-gpt3-256")
    d = sc.derived()
    st = d.setup
    held = [s for s, ranks in enumerate(derive.stage_ranks(sc)) if 0 in ranks]
    assert held == [0, 8, 16, 24, 32, 40]
    extra = 5 * 2 * (13 * H + 3 * 6 * H) / 4 * 2
    assert extra == 1_904_640
    assert param_gather.apex_fp8_first_bucket(sc, d) == (1, extra)
    buckets = ddp_buckets.per_stage(sc, d)[0]
    fp8 = fp8_step_casts.fp8_param_elements(st, st.stages[0])
    assert param_gather.step_start_ms(sc, d) == param_gather.start_gather_ms(st, d.stages[0], buckets + 1, fp8, extra)
    # without FP8 parameters NeMo's first bucket is not split: no extra bucket, no extra bytes
    plain = _load("mlperf41-gpt3-256", ["model.fp8_params=false"])
    pd = plain.derived()
    assert param_gather.step_start_ms(plain, pd) == param_gather.start_gather_ms(pd.setup, pd.stages[0], buckets)


def test_overlap_param_gather_with_optimizer_step_by_hand():
    # MLPerf v5.0 Llama 3.1 405B on 512 H100: TP 8, PP 8 x 8 chunks, DP 4 x CP 2 (the distributed optimizer's 8).
    # Rank 0 steps chunk 0's optimizer, launches its whole gather (one group, disable_bucketing: one bucket a buffer, the
    # FP8 uint8 and the 16-bit: 2 all-gathers, s13o), then steps its other
    # 7 chunks' Adam (2 layers each: 2 x (3,187,703,808 + 7 x 2h, the two RMSNorms whole on each of the 8 tensor ranks)
    # / TP 8 / 8 = 99,622,912 shard elements x 44 B + one launch):
    # the next step's first forward waits for what of the gather outlasts them
    on = ["step.overlap_param_gather_with_optimizer_step=true"]
    sc = _load("mlperf50-llama405b-512", on)
    d = sc.derived()
    st = d.setup
    layer = 16384 * (16384 + 2 * 8 * 128) + 16384 * 16384 + 3 * 16384 * 53248 + 2 * 16384
    layer_tp8 = layer + 7 * 2 * 16384  # the norms (2h) whole on every tensor rank: 7 more copies
    assert d.stages[8].dense_params == 2 * layer_tp8
    assert (st.sharding.tensor, st.sharding.data) == (8, 8)
    shard = 2 * layer_tp8 / 8 / 8
    assert shard == 99_622_912
    beside = 7 * (shard * 44 / H100_HBM + FLOOR) * 1e3
    assert beside == pytest.approx(10.5981, rel=1e-4)
    assert param_gather.optimizer_overlap_ms(sc, d) == pytest.approx(beside, rel=1e-12)
    assert ddp_buckets.per_stage(sc)[0] == 2
    whole = param_gather.start_gather_ms(st, d.stages[0], 2, fp8_step_casts.fp8_param_elements(st, st.stages[0]))
    assert whole > beside
    assert param_gather.step_start_ms(sc, d) == pytest.approx(whole - beside, rel=1e-12)
    # off, chunk 0's whole gather in its 12 buckets is waited for: more than with the flag
    off = _load("mlperf50-llama405b-512", ["step.overlap_param_gather_with_optimizer_step=false"])
    assert param_gather.step_start_ms(off, off.derived()) > whole > whole - beside
    # what of the gather the wait does not cover ran beside the optimizer step, not the forward: stage 0's forward is
    # not slowed by it (the SMs NCCL holds, step.dp_comm_sms), while stage 1's, whose gather nothing waits for, is
    slowed = {i.name: i.ms for i in step_end.items(sc, d)}["forward slowed beside the overlapped all-gather"]
    assert slowed[0] == 0.0 and slowed[1] > 0.0


def test_overlap_with_optimizer_step_splits_the_fp8_cast():
    # two dense optimizers (chunk 0's and the rest's): two amax all-reduces and two sets of fixed launches; each rank's
    # FP8 weights: 7 per layer (qkv, proj, fc1, fc2 as TE counts them: kernels.fp8_linears), held by the figure
    # both as 12 equal buckets a chunk, so that only the optimizer split differs (the derived rule fills stage 0 by
    # size without the flag and not with it: test_ddp_bucket_chunks.py)
    raw = scenario.load_raw(FOLDER / "mlperf50-llama405b-512.toml")
    del raw["step"]["ddp_bucket_size"]
    raw["step"]["grad_sync_buckets"] = 12
    sc = scenario.read(raw, ["step.overlap_param_gather_with_optimizer_step=true"])
    base = scenario.read(raw, ["step.overlap_param_gather_with_optimizer_step=false"])
    st = base.derived().setup
    on = fp8_step_casts.fp8_master_cast_ms(sc, sc.derived().setup)
    off = fp8_step_casts.fp8_master_cast_ms(base, st)
    first, rest = fp8_step_casts.fp8_param_tensors(st, st.stages[0])[0], sum(
        fp8_step_casts.fp8_param_tensors(st, st.stages[s])[0] for s in range(8, 64, 8))
    launch = fp8_step_casts.fp8_cast_fixed_launches
    recipe = base.model.fp8_recipe
    extra_launches = launch(recipe, first) + launch(recipe, rest) - launch(recipe, first + rest)
    amax = fp8_step_casts.fp8_amax_all_reduce_ms
    extra_reduce = amax(st, first, 0) + amax(st, rest, 0) - amax(st, first + rest, 0)
    assert extra_reduce > 0
    assert on[0] - off[0] == pytest.approx((extra_launches * FLOOR * 1e3 + extra_reduce) / 8, rel=1e-9)


@pytest.mark.parametrize("name, setting, words", [
    ("mlperf41-gpt3-256", [], 'step.param_gather = "megatron-core"'),  # apex's rows: apex has its own overlap
    ("mlperf51-llama8b-256b200", [], "interleaved"),  # one stage, no interleaved schedule
    ("mlperf50-llama405b-512", ["step.overlap_param_gather=false"], "parallel.zero"),
    ("mlperf50-llama405b-512", ["step.optimizer=1"], 'step.optimizer = "derived"'),
])  # fmt: skip
def test_overlap_with_optimizer_step_refused_where_megatron_refuses_it(tmp_path, capsys, name, setting, words):
    out = tmp_path / "out"
    sets = ["step.overlap_param_gather_with_optimizer_step=true", *setting]
    code = main(["run", str(FOLDER / f"{name}.toml"), *[a for s in sets for a in ("--set", s)], "--out", str(out),
                 "--plots", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert "step.overlap_param_gather_with_optimizer_step" in err and words in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_key_must_be_a_bool(tmp_path, capsys):
    code = main(["run", str(FOLDER / "mlperf50-llama405b-512.toml"), "--set",
                 "step.overlap_param_gather_with_optimizer_step=sometimes", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "step.overlap_param_gather_with_optimizer_step" in err and "Traceback" not in err


def test_run_help_names_the_key(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "step.overlap_param_gather_with_optimizer_step=true" in out
