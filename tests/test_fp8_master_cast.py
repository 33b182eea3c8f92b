"""FP8 parameters' optimizer-side cast and their weight casts, worked by hand (docs/step.md, "FP8 parameters'
optimizer-side cast"; docs/model.md, "FP8 weight copies").

With ``model.fp8_params`` (Megatron-core's --fp8-param-gather) the distributed optimizer skips the 16-bit copy of
an FP8 weight's shard and Transformer Engine's ``cast_master_weights_to_fp8`` (tensor/utils.py @ release_v2.8)
writes the FP8 weight instead: per shard a bf16 copy of the fp32 master, with current scaling its amax, the cast;
then one all-reduce (MAX) of one fp32 amax per FP8 weight over the data-parallel ranks, waited for.  And a Float8Tensor
weight is the GEMM's operand in every forward: no per-micro-batch cast, its transpose made once a step.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import derive, fp8_step_casts
from dualpipe_sim.model.derived_step import derived_sync

VALIDATION = Path(__file__).resolve().parent.parent / "scenarios" / "validation"
B200_HBM = 6.858e12  # the B200 preset's streaming HBM bandwidth (rates.py: NVIDIA/cccl#7391's B200 table)
H200_HBM = 4.00e12
FLOOR = 2.5e-6  # every preset's kernel floor but B200's
B200_FLOOR = 2.04e-6

# Llama 3.1 8B (h 4096, 32 heads, 8 KV heads of 128, FFN 14336, 32 layers): each layer's four TE linears
QKV = 4096 * (4096 + 2 * 8 * 128)  # 25,165,824
PROJ = 4096 * 4096  # 16,777,216
FC1 = 2 * 14336 * 4096  # 117,440,512 (SwiGLU's two halves in one weight)
FC2 = 14336 * 4096  # 58,720,256
LAYER = QKV + PROJ + FC1 + FC2  # 218,103,808


def _load(name, overrides=()):
    return load(VALIDATION / f"{name}.toml", list(overrides))


def _most_fp8_weights(sizes, buckets, ranks):
    """The most FP8 weights any data-parallel rank holds a piece of, worked out here from the distributed optimizer's
    rule alone: ``buckets`` equal buckets over the FP8 weights of ``sizes`` (forward order), each bucket's range
    split evenly over ``ranks``; a weight counts when the rank's range meets it."""
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    total, most = starts[-1], 0
    for r in range(ranks):
        met = set()
        for b in range(buckets):
            first, length = b * total // buckets, (b + 1) * total // buckets - b * total // buckets
            lo, hi = first + r * length // ranks, first + (r + 1) * length // ranks
            met |= {i for i in range(len(sizes)) if min(starts[i + 1], hi) > max(starts[i], lo)}
        most = max(most, len(met))
    return most


# the 8B rows' FP8 buffer: each layer's out_proj, QKV, fc1, fc2 (Megatron's registration order), 34 buckets
# (custom.yaml bucket_size), over data x context 64: the busiest rank meets 40 of the 128 weights
EIGHT_B_FP8 = [PROJ, QKV, FC1, FC2] * 32


def _most_in_buckets(buckets, ranks):
    """As _most_fp8_weights, for buckets given as lists of weight sizes (forward order): each bucket's range split
    evenly over ``ranks``, a weight counted when the rank's range meets it."""
    most = 0
    for r in range(ranks):
        met = 0
        for sizes in buckets:
            total, start = sum(sizes), 0
            lo, hi = r * total // ranks, (r + 1) * total // ranks
            for n in sizes:
                met += start < hi and start + n > lo
                start += n
        most = max(most, met)
    return most


# s13o: the rows' derived buckets (tests/test_make_validation.py): layer 0's proj + qkv; 31 x one layer's fc1 + fc2
# with the next layer's proj + qkv; layer 31's fc1 + fc2.  Every rank's range of a 4-weight bucket meets 2 of them
# (fc1 holds the first 117.4 M of 218.1 M: the ranges of 64 cross a weight's edge in each), so 64 of the 128
EIGHT_B_DERIVED = [[PROJ, QKV]] + [[FC1, FC2, PROJ, QKV]] * 31 + [[FC1, FC2]]


def test_busiest_rank_meets_40_of_the_8b_weights():
    assert _most_fp8_weights(EIGHT_B_FP8, 34, 64) == 40  # 34 equal buckets, the rows' count before s13o
    assert sum(map(len, EIGHT_B_DERIVED)) == 128 and _most_in_buckets(EIGHT_B_DERIVED, 64) == 64
    # one bucket per weight would give every rank a piece of each: the upper bound the model had before s12g
    assert _most_fp8_weights([10] * 4, 4, 3) == 4
    # one bucket of 4 equal weights over 4 ranks: one weight each
    assert _most_fp8_weights([10] * 4, 1, 4) == 1


@pytest.mark.parametrize("recipe,transpose,want", [
    # the 16-bit copy it replaces reads the fp32 master (4) and writes bf16 (2): 6 bytes less
    ("delayed", True, (4 + 2) + (2 + 1 + 1) - 6),  # bf16 copy; cast writes data and the shard's transpose
    ("delayed", False, (4 + 2) + (2 + 1) - 6),  # Blackwell: no transpose
    ("current", True, (4 + 2) + 2 + (2 + 1 + 1) - 6),  # and compute_amax reads the bf16 copy once more
    ("current", False, (4 + 2) + 2 + (2 + 1) - 6),
])  # fmt: skip
def test_bytes_per_shard_element_by_hand(recipe, transpose, want):
    assert fp8_step_casts.fp8_shard_bytes(recipe, transpose) == want


def test_fixed_launches_by_hand():
    # delayed: zeros for the overflow flag, 4 multi_tensor_scale passes of up to 64 one-element tensors each
    # (multi_tensor_apply.cuh, depth 2), torch.reciprocal
    assert fp8_step_casts.fp8_cast_fixed_launches("delayed", 64) == 1 + 4 + 1
    assert fp8_step_casts.fp8_cast_fixed_launches("delayed", 65) == 1 + 4 * 2 + 1
    # current: two zeros (flag, packed amaxes), compute_scale_and_scale_inv in launches of 48 (depth 3)
    assert fp8_step_casts.fp8_cast_fixed_launches("current", 48) == 2 + 1
    assert fp8_step_casts.fp8_cast_fixed_launches("current", 128) == 2 + 3
    assert fp8_step_casts.fp8_cast_fixed_launches("current", 0) == 0


def test_llama8b_b200_optimizer_cast_by_hand(monkeypatch):
    # MLPerf v5.1 Llama 3.1 8B on 64 B200: PP 1, TP 1, DP 32 x CP 2 = 64 optimizer shards, current scaling, no
    # transposes (Blackwell), ZeRO 1.  One stage copy: 32 layers x 4 FP8 weights = 128 tensors.
    sc = _load("mlperf51-llama8b-64b200")
    st = sc.derived().setup
    assert (st.rates.hbm, st.rates.floor, st.sharding.data, st.sharding.fp8_transpose) == (B200_HBM, B200_FLOOR, 64, False)
    assert fp8_step_casts.fp8_param_tensors(st, st.stages[0]) == (128, 0)
    # one weight, fc2: its shard 58,720,256 / 64 = 917,504 elements x 5 bytes (fp32 read 4, bf16 written 2, amax
    # read 2, cast read 2 and FP8 written 1, less the 16-bit copy's 6) = 4,587,520 B: 0.669 us at 6.858 TB/s,
    # beside its 4 kernel floors (bf16 copy, zero amax, amax, cast): 8.16 us
    fc2 = FC2 / 64 * 5
    assert fc2 == 4_587_520 and fc2 / B200_HBM == pytest.approx(0.6689e-6, rel=1e-3)
    # the rank's shard: 109,051,904 elements x 5 B = 545,259,520 B -> 79.51 us; the busiest rank has pieces of 64
    # of the 128 weights in the rows' derived buckets (40 in 34 equal ones before s13o; cast_master_weights_to_fp8
    # launches nothing for a weight without one: s12g): 64 x 4 + 5 fixed (2 zeros, 3 scale launches of <= 48 over
    # all 128) = 261 floors -> 532.44 us
    streamed = 32 * LAYER / 64 * 5
    assert streamed == 545_259_520
    # the amax all-reduce: 128 fp32 over 64 ranks, 8 a node (TP 1) on 8 nodes: NCCL's LL tree
    # 6.8 + 2 x ((8 - 1) x 0.6 + log2(8) x 5.0) = 45.2 us below its ring 6.6 + (126 - 16) x 1.0 + 16 x 2.7 = 159.8 us
    all_reduce = 45.2e-6
    assert _most_in_buckets(EIGHT_B_DERIVED, 64) == 64
    want = streamed / B200_HBM + (64 * 4 + 5) * B200_FLOOR + all_reduce
    assert want == pytest.approx(0.657147e-3, rel=1e-6)
    assert fp8_step_casts.fp8_master_cast_ms(sc, st) == pytest.approx([want * 1e3])
    # and it is what the step's optimizer figure gains
    with_cast = derived_sync(sc, "optimizer")
    monkeypatch.setattr(fp8_step_casts, "fp8_master_cast_ms", lambda scenario, st, *_: [0.0] * len(st.stages))
    assert with_cast[0] - derived_sync(sc, "optimizer")[0] == pytest.approx(want * 1e3)


def test_delayed_scaling_on_hopper_writes_the_shard_transpose():
    # the same 8B row on H200 with delayed scaling: 4 B a shard element (a transpose written), 3 kernels a weight
    # with a piece on the rank (bf16 copy, 1 / scale, the cast with its amax; 64, the same derived buckets over 64),
    # 1 + 4 x 2 + 1 fixed (128 weights: two multi_tensor_scale launches per pass); the all-reduce: the H200 row's
    # DP 32 x CP 2 over 8-GPU nodes as above, 45.2 us
    sc = _load("mlperf51-llama8b-64h200", ["model.fp8_recipe=delayed"])
    st = sc.derived().setup
    assert (st.rates.hbm, st.sharding.data, st.sharding.fp8_transpose) == (H200_HBM, 64, True)
    want = 32 * LAYER / 64 * 4 / H200_HBM + (64 * 3 + 10) * FLOOR + 45.2e-6
    assert fp8_step_casts.fp8_master_cast_ms(sc, st) == pytest.approx([want * 1e3])


def test_moe_expert_optimizer_casts_and_reduces_apart_by_hand():
    # Mixtral 8x22B (h 6144, 48 heads, 8 KV heads of 128, 8 experts of FFN 16384, one layer a stage, 7 stages a rank)
    # made FP8 with FP8 parameters at TP 2, DP 8, EP 4 (expert-data 8 x 2 / 4 = 4), H100, delayed scaling.
    # Megatron-core runs a dense and an expert distributed optimizer, each its own cast_master_weights_to_fp8.
    sc = load(VALIDATION / "mz-mixtral-8x22b.toml", ["model.fp8=true", "model.fp8_params=true", "parallel.expert=4"])
    st = sc.derived().setup
    assert (st.sharding.data, st.sharding.expert_data, st.rates.hbm) == (8, 4, 2.90e12)
    # a stage copy: QKV and out_proj (dense), fc1 and fc2 of each of its 2 local experts (routed)
    assert fp8_step_casts.fp8_param_tensors(st, st.stages[5]) == (2, 4)
    # shards: attention 6144 x (6144 + 2 x 1024) + 6144 x 6144 = 88,080,384 / TP 2 / DP 8 = 5,505,024;
    # experts 8 x 3 x 6144 x 16384 = 2,415,919,104 / EP 4 / expert-data 4 = 150,994,944; 4 B each (Hopper, delayed)
    streamed = (88_080_384 / 2 / 8 + 2_415_919_104 / 4 / 4) * 4
    assert streamed == 625_999_872
    # per rank, once (7 stage copies share it): 14 dense and 28 routed weights, 1 + 4 + 1 fixed launches each;
    # the dense amax all-reduce over 8 ranks, 4 a node (TP 2) on 2 nodes: tree 6.8 + 2 x (3 x 0.6 + 5.0) = 20.4 us
    # (ring 6.6 + 10 x 1.0 + 4 x 2.7 = 27.4); the experts' over 4, 2 a node (EP 4): tree 6.8 + 2 x (0.6 + 5.0) = 18.0 us
    # (ring 6.6 + 2 x 1.0 + 4 x 2.7 = 19.4)
    per_rank = 12 * FLOOR + (20.4 + 18.0) * 1e-6
    want = streamed / 2.90e12 + (2 + 4) * 3 * FLOOR + per_rank / 7
    assert fp8_step_casts.fp8_master_cast_ms(sc, st)[5] == pytest.approx(want * 1e3)


def test_uncached_fp8_params_are_the_gemm_operand_by_hand():
    # memory.fp8_weight_cache = false with FP8 parameters: TE's get_weight_workspace hands the Float8Tensor to the
    # GEMM as it is, so no layer lists a per-forward weight cast; its transpose (read 1, write 1 on Hopper) is made
    # once after each optimizer step, as with the cache: 32 layers x 218,103,808 elements x 2 B at 4.00 TB/s
    over = ["memory.fp8_weight_cache=false"]
    sc = _load("mlperf51-llama8b-64h200", over)
    st = sc.derived().setup
    assert not any("uncached" in k.name for k in derive.layer_kernels(st, 0))
    want = 32 * LAYER * 2 / H200_HBM
    assert fp8_step_casts.fp8_weight_cast_ms(st, st.stages[0]) == pytest.approx(want * 1e3)
    assert want == pytest.approx(3.48966e-3, rel=1e-4)
    # 16-bit weights uncached: the cast + transpose in every forward (2 + 1 + 1 B), none at the step
    st = _load("mlperf51-llama8b-64h200", [*over, "model.fp8_params=false"]).derived().setup
    rows = {k.name: k for k in derive.layer_kernels(st, 0)}
    assert rows["attention weights fp8 cast (uncached)"].bytes == (QKV + PROJ) * 4
    assert rows["mlp weights fp8 cast (uncached)"].bytes == (FC1 + FC2) * 4
    assert fp8_step_casts.fp8_weight_cast_ms(st, st.stages[0]) == 0.0


@pytest.mark.parametrize("verb", [["model"], ["model", "--json"], ["run", "--plots", "none"]])
@pytest.mark.parametrize("setting", ["model.fp8=false", "model.fp8_gemm=deepgemm"])
def test_fp8_params_without_te_fp8_linears_is_refused_without_a_step_table(tmp_path, capsys, verb, setting):
    """FP8 parameters are Transformer Engine's Float8Tensor weights: without FP8 linears through TE there are none to
    hold at 1 byte.  Refused in every verb, [step] or not (memory would otherwise hold 16-bit weights silently, or,
    with DeepGEMM, 1-byte ones TE never made): one line naming the key, exit 2, nothing written."""
    from dualpipe_sim.cli import main

    text = (VALIDATION / "mlperf51-llama8b-64h200.toml").read_text()
    path = tmp_path / "nostep.toml"
    path.write_text(re.sub(r"\n\[step\]\n.*?(?=\n\[|\Z)", "", text, flags=re.S))  # the [step] table left out
    assert load(path).step is None
    out = tmp_path / "out"
    sets = [setting] + (["model.fp8_recipe=delayed"] if "deepgemm" in setting else [])
    args = [verb[0], str(path), *verb[1:], *[a for s in sets for a in ("--set", s)]]
    code = main(args + (["--out", str(out)] if verb[0] == "run" else []))
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert "model.fp8_params" in err and len(err.splitlines()) == 1 and "Traceback" not in err


# -- NeMo's cast on apex's DistributedFusedAdam (step.param_gather = "apex": the MLPerf GPT-3 rows) --------------------
# NeMo 24.09-alpha.rc0 / v2.0.0.rc0.beta nemo/core/optim/distributed_adam.py with apex 24.04 / 24.09: an FP8 weight's
# bucket syncs in uint8, so the Adam kernel's output is the fp32 master shard itself (no bf16 weight written, no copy
# pass: apex's Adam figure has none, tests/test_apex_adam.py), then TE 1.x's cast_to_fp8 reads that fp32 shard and
# writes 1 byte (no transpose, the amax recorded by the same kernel): one kernel a fragment.  Once a step: four packed
# copies of 64 one-element tensors a launch, torch.reciprocal, the amax all-reduce.
H100_HBM = 2.90e12
GPT3_LAYER = 12 * 12288 * 12288  # QKV 3h^2 + proj h^2 + fc1 4h^2 + fc2 4h^2


def test_apex_bytes_and_launches_by_hand():
    assert fp8_step_casts.apex_fp8_shard_bytes() == 4 + 1
    assert fp8_step_casts.apex_fp8_cast_fixed_launches(48) == 4 + 1
    assert fp8_step_casts.apex_fp8_cast_fixed_launches(65) == 4 * 2 + 1
    assert fp8_step_casts.apex_fp8_cast_fixed_launches(0) == 0


def test_gpt3_apex_cast_by_hand():
    # MLPerf v4.1 GPT-3 175B on 256 H100: TP 4, PP 8 x 6 chunks (2 layers a stage copy), DP 8, delayed scaling.
    sc = _load("mlperf41-gpt3-256")
    st = sc.derived().setup
    assert sc.model.fp8_params and sc.step.param_gather == "apex"
    assert (st.rates.hbm, st.rates.floor, st.sharding.data, st.sharding.tensor) == (H100_HBM, FLOOR, 8, 4)
    assert fp8_step_casts.fp8_param_tensors(st, st.stages[1]) == (8, 0)
    # stage 1: 2 x 1,811,939,328 / TP 4 = 905,969,664 FP8 elements, 113,246,208 in the rank's shard, 5 B each:
    # 195.25 us; 8 weights x 1 cast kernel; rank 1 holds 6 copies of 8 weights = 48: 4 + 1 fixed launches and the
    # amax all-reduce over DP 8, 2 a node (TP 4) on 4 nodes: tree 6.8 + 2 x (1 x 0.6 + log2(4) x 5.0) = 28.0 us
    # (ring 6.6 + 6 x 1.0 + 8 x 2.7 = 34.2), spread over the 6 copies
    shard = 2 * GPT3_LAYER / 4 / 8
    assert shard == 113_246_208
    want = 5 * shard / H100_HBM + 8 * FLOOR + (5 * FLOOR + 28.0e-6) / 6
    assert want == pytest.approx(2.22002e-4, rel=1e-4)
    assert fp8_step_casts.fp8_master_cast_ms(sc, st)[1] == pytest.approx(want * 1e3)


def test_gpt3_apex_cast_against_megatron_cores_by_hand():
    # the same row with Megatron-core's path (TE 2.x's cast_master_weights_to_fp8, delayed, Hopper): 4 B a shard
    # element beyond Megatron's copy pass instead of apex's 5 (apex's Adam writes no copy), 3 kernels a weight instead
    # of 1, 1 + 4 + 1 fixed launches instead of 4 + 1; the same all-reduce
    apex = _load("mlperf41-gpt3-256")
    core = _load("mlperf41-gpt3-256", ["step.param_gather=megatron-core", "step.fp32_embedding_grads=false",
                                       "step.grad_sync_held=[]"])  # NeMo's held group: apex only
    a = fp8_step_casts.fp8_master_cast_ms(apex, apex.derived().setup)
    c = fp8_step_casts.fp8_master_cast_ms(core, core.derived().setup)
    shard = 2 * GPT3_LAYER / 4 / 8
    want = shard * (4 - 5) / H100_HBM + 8 * (3 - 1) * FLOOR + (6 - 5) * FLOOR / 6
    assert c[1] - a[1] == pytest.approx(want * 1e3)


def test_apex_fp8_params_with_current_scaling_is_refused(tmp_path, capsys):
    """NeMo's cast on apex reads each weight's delayed-scaling meta: current scaling there is not costed, refused in one
    line naming the key, exit 2, nothing written."""
    from dualpipe_sim.cli import main

    out = tmp_path / "out"
    code = main(["run", str(VALIDATION / "mlperf41-gpt3-256.toml"), "--set", "model.fp8_recipe=current",
                 "--out", str(out), "--plots", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert "model.fp8_recipe" in err and "apex" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_moe_fp8_weight_refresh_counts_the_experts_by_hand():
    # Qwen3-30B-A3B on B200 (EP 8, TP 1) with FP8 linears and the weight cache: each layer's attention linears,
    # 2048 x (32 + 2 x 4) x 128 + 32 x 128 x 2048 = 18,874,368, and its 128 experts' SwiGLU, 128 x 3 x 768 x 2048 =
    # 603,979,776, of which the rank holds 1 / 8; B200's 16-bit weights: read 2, write 1 (no transpose), once a step
    over = ["model.fp8=true", "memory.fp8_weight_cache=true"]
    st = _load("mz7-qwen3-30b-a3b-b200", over).derived().setup
    attention = 2048 * (32 + 2 * 4) * 128 + 32 * 128 * 2048
    experts = 128 * 3 * 768 * 2048
    assert (attention, experts) == (18_874_368, 603_979_776)
    elements = 48 * (attention + experts / 8)  # 4,529,848,320
    ms = fp8_step_casts.fp8_weight_cast_ms(st, st.stages[0])
    assert ms == pytest.approx(elements * 3 / B200_HBM * 1e3, rel=1e-12)
