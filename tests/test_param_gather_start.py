"""The overlapped parameter all-gather at a step's start, as Megatron-core's distributed optimizer runs it
(docs/step.md, "The step's start"), and FP8 parameters gathered at 1 byte (``model.fp8_params``).

Outside the interleaved schedule Megatron-core launches each bucket group's all-gather in the forward
pre-hook as the previous group is waited for (``finish_param_sync``, ``next_param_gather_bucket_group``):
the forward waits for the first group whole, then for what each gather takes beyond the forward's compute
since the previous wait.  Worked by hand below from NCCL's ring model (the B200 preset: 47 GB/s per NDR
NIC, 8 a node; tuning.cc's Simple / LL128 constants, as tests/test_llama8b_dp_growth.py spells them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import ddp_buckets, derived_step, fp8_step_casts, nemo_optimizer, optimizer_step, param_gather

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "scenarios" / "validation"
BUS = 8 * 47e9  # eight NDR NICs a node, one per rank of the data-parallel group on it
# Llama 3.1 8B: linears per layer qkv 4096 x (4096 + 2 x 1024), proj 4096^2, fc1 2 x 4096 x 14336, fc2 4096 x 14336
LINEAR = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
WIDE = 2 * 128256 * 4096 + 65 * 4096  # embedding, output layer, 2 norms x 32 layers + the final norm
PARAMS = LINEAR + WIDE


def _load(name, overrides=()):
    return scenario.load(FOLDER / f"{name}.toml", list(overrides))


def _given(name, overrides=()):
    """The row with a given step.grad_sync_buckets (in ``overrides``): its file's ddp_bucket_size, which needs
    derived buckets, left out."""
    raw = scenario.load_raw(FOLDER / f"{name}.toml")
    raw["step"].pop("ddp_bucket_size", None)
    return scenario.read(raw, list(overrides))


def _ring_ms(nbytes: float, rings: int, ranks: int = 256, nodes: int = 32) -> float:
    """NCCL's all-gather of ``nbytes`` over ``ranks`` as ``rings`` rings: the faster of Simple and LL128."""
    simple = rings * (8.4 + (ranks - nodes) * 3.4 + (nodes - 1) * 14.0) * 1e-6 + (ranks - 1) / ranks * nbytes / BUS
    ll128 = rings * (14.0 + (ranks - nodes) * 1.9 + (nodes - 1) * 4.0) * 1e-6 + (ranks - 1) / ranks * nbytes / (0.92 * BUS)
    return min(simple, ll128) * 1e3


def _group_ms(nbytes: float, passes: int, ranks: int = 256, nodes: int = 32) -> float:
    """One NCCL group's all-gather (NCCL >= 2.22, the group's ops within 16 channels: the tuner's count 1): the
    protocol the tuner picks at one latency, paid ``passes`` times (docs/model.md, "... on NCCL v2.20 and later")."""
    simple = (8.4 + (ranks - nodes) * 3.4 + (nodes - 1) * 14.0) * 1e-6, (ranks - 1) / ranks * nbytes / BUS
    ll128 = (14.0 + (ranks - nodes) * 1.9 + (nodes - 1) * 4.0) * 1e-6, (ranks - 1) / ranks * nbytes / (0.92 * BUS)
    lat, bw = ll128 if sum(ll128) <= sum(simple) else simple
    return (passes * lat + bw) * 1e3


def test_three_buckets_by_hand():
    # gathers 4, 3 and 5 ms; the forward runs 2 ms from bucket 0's first parameter to bucket 1's, 6 ms to bucket 2's.
    # t = 4: bucket 0 landed, bucket 1 launched; the forward reaches bucket 1 at 6, it landed at 7: waits 1;
    # bucket 2 launched at 7, lands at 12; the forward reaches it at 13: no wait.  4 + 1 + 0 = 5
    assert param_gather.chained_wait_ms([4.0, 3.0, 5.0], [2.0, 6.0]) == 5.0
    # a forward too short to hide anything waits for every gather: the whole 12
    assert param_gather.chained_wait_ms([4.0, 3.0, 5.0], [0.0, 0.0]) == 12.0
    assert param_gather.chained_wait_ms([], []) == 0.0


def test_fp8_parameters_form_their_own_buffer_whose_first_group_takes_the_rest():
    # embedding 10, layer (proj 4, norm 1, qkv 6, norm 1, fc1 8, fc2 4), final norm 1, output 10: 45 elements
    tensors = [10, 4, 1, 6, 1, 8, 4, 1, 10]
    linears = [False, True, False, True, False, True, True, False, False]
    # one buffer, filled backwards at 12: [output 10 + norm 1 + fc2 4] closes at 15, [fc1 8 + norm 1 + qkv 6] at 15,
    # [norm 1 + proj 4 + embedding 10] the rest: from the forward's positions 0, 15 and 30, each a group of one
    assert ddp_buckets.gather_groups(tensors, linears, None, 12, False) == [(0, 15, 0, 1), (15, 15, 0, 1), (30, 15, 0, 1)]
    # FP8: the linears' buffer (proj 4, qkv 6, fc1 8, fc2 4) filled at 12: [fc2 + fc1] = 12 from fc1's position 22,
    # [qkv + proj] = 10; the 16-bit buffer (embedding, norms, output: 23) in buckets [output 10 + norm + norm = 12],
    # [norm + embedding = 11], both joining the forward's first FP8 group (partition_buckets case 3): 3 buckets
    assert ddp_buckets.gather_groups(tensors, linears, None, 12, True) == [(0, 23, 10, 3), (22, 0, 12, 1)]
    # the given count: that many equal buckets of the FP8 parameters (22 elements: 11 and 11, the second from fc1's
    # second element, position 23); the 16-bit ones as one bucket
    assert ddp_buckets.gather_groups(tensors, linears, 2, 0, True) == [(0, 23, 11, 2), (23, 0, 11, 1)]


def test_llama8b_three_equal_buckets_by_hand():
    # the 256-GPU row without FP8 parameters, in 3 equal buckets (floor(k x P / 3) elements apart), bf16
    # (step.dp_comm_sms = 0: the optimizer figures below compare the waits alone, without the forward slowed
    # beside the rest of the gather, test_dp_comm_sms.py)
    sc = _given("mlperf51-llama8b-256b200", ["model.fp8_params=false", "step.grad_sync_buckets=3", "step.dp_comm_sms=0"])
    d = sc.derived()
    assert d.stages[0].dense_params == PARAMS == sum(ddp_buckets.stage_zero_tensors(d.setup.cfg, d.setup.stages[0], 1))
    cuts = [0, PARAMS // 3, 2 * PARAMS // 3, PARAMS]
    gathers = [_ring_ms(2 * (b - a), 1) for a, b in zip(cuts, cuts[1:])]
    forward = d.stages[0].forward  # the stage's derived forward, spread over its parameters
    computes = [forward * (b - a) / PARAMS for a, b in zip(cuts, cuts[1:-1])]
    by_hand = gathers[0] + max(0.0, gathers[1] - computes[0]) + max(0.0, gathers[2] - computes[1])
    got = param_gather.prefetch_gather_ms(sc, d.setup, d.setup.stages[0], d.stages[0], 3)
    assert got == pytest.approx(by_hand, rel=1e-12)
    # each later gather (15.4 ms, worked by hand in _ring_ms) outlasts a third of the stage's ~40 ms forward, so the
    # wait is the first gather plus two excesses, not the whole 46 ms (the forward's own figure moves with every kernel
    # the model learns: it is the derived one above, not typed here)
    assert gathers[1] > computes[0] and gathers[2] > computes[1]
    assert got < sum(gathers) and got > gathers[0]
    # and the same on the run's optimizer figure (one stage, one rank): the whole wait beside the Adam step, each
    # runtime's own Adam step (apex's fused kernel: tests/test_apex_adam.py) taken off
    apex_sc = _given("mlperf51-llama8b-256b200", ["model.fp8_params=false", "step.grad_sync_buckets=3",
                                                 "step.param_gather=apex", "step.dp_comm_sms=0"])
    apex = derived_step.derived_sync(apex_sc, "optimizer")[0]
    apex_adam = nemo_optimizer.apex_adam_ms(apex_sc, d.setup, d.setup.stages[0], d.stages[0], 1.0)[1]
    sh = d.setup.sharding
    core_adam = (PARAMS / sh.data * optimizer_step.optimizer_bytes_per_param(sc.model, sh.optimizer_bytes)
                 / d.setup.rates.hbm + d.setup.rates.floor) * 1e3
    whole = param_gather.start_gather_ms(d.setup, d.stages[0], 3)
    assert whole == pytest.approx(_ring_ms(2 * PARAMS, 3), rel=1e-12)  # 3 launches (Megatron-core's setup)
    # apex's 3 equal buckets are one NCCL group: 3 over 16 channels, 2 passes on the busiest
    whole = param_gather.start_gather_ms(apex_sc.derived().setup, d.stages[0], 3)
    assert whole == pytest.approx(_group_ms(2 * PARAMS, 2), rel=1e-12)
    # (Megatron-core's own step start and clip norm, which apex's optimizer does not take: tests/test_step_start_zero.py)
    mcore = optimizer_step.grad_zero_ms(d.setup, d.stages[0]) + optimizer_step.grad_norm_all_reduce_ms(sc, d.setup)
    assert derived_step.derived_sync(sc, "optimizer")[0] == pytest.approx(
        apex - apex_adam - whole + core_adam + by_hand + mcore, rel=1e-12)


def test_fp8_parameters_gather_one_byte_each():
    # one bucket: the whole stage in one ring, the linears at 1 byte and the rest at 2
    sc = _given("mlperf51-llama8b-256b200", ["step.grad_sync_buckets=1"])
    assert sc.model.fp8_params
    d = sc.derived()
    assert fp8_step_casts.fp8_param_elements(d.setup, d.setup.stages[0]) == (LINEAR, 0.0)
    nbytes = LINEAR * 1 + WIDE * 2
    assert nbytes == pytest.approx(9_081_200_640)  # against 16,060,522,496 in bf16
    # Megatron-core: the FP8 bucket and the 16-bit buffer's bucket in one group, one NCCL group of 2 ops of different
    # sizes over 16 channels: 2 passes on the channel holding the boundary, the protocol the tuner's at one latency
    assert param_gather.prefetch_gather_ms(sc, d.setup, d.setup.stages[0], d.stages[0], 1) == pytest.approx(
        _group_ms(nbytes, 2), rel=1e-12)
    start = param_gather.start_gather_ms(d.setup, d.stages[0], 1, (LINEAR, 0.0))
    assert start == pytest.approx(_ring_ms(nbytes, 1), rel=1e-12)
    # the exposed gather after the optimizer (overlap off) counts the same bytes
    fp8 = param_gather.param_gather_ms(d.setup, d.stages[0], (LINEAR, 0.0))
    assert fp8 < param_gather.param_gather_ms(d.setup, d.stages[0])


def test_llama8b_row_waits_for_the_first_group_and_the_rest_beyond_the_forward():
    # s13o: the row's derived buckets (tests/test_make_validation.py test_v51_b200_llama8b_buckets_by_hand), forward
    # order: the first group is the 16-bit buffer's 2 buckets (2 bytes x WIDE) with the first FP8 bucket, layer 0's
    # proj + qkv (41,943,040), 3 rings; then 31 groups of one layer's fc1 + fc2 with the next layer's proj + qkv
    # (218,103,808) and layer 31's fc1 + fc2 (176,160,768), one ring each, each after the forward over its parameters
    sc = _load("mlperf51-llama8b-256b200")
    d = sc.derived()
    head, mid, tail = 4096 * 4096 + 6144 * 4096, 218_103_808, 176_160_768
    assert head + 31 * mid + tail == LINEAR
    first = _group_ms(2 * WIDE + head, 2)  # one NCCL group of 3: 2 passes (s14j)
    later = [_ring_ms(mid, 1)] * 31 + [_ring_ms(tail, 1)]
    per = d.stages[0].forward / PARAMS
    got = param_gather.prefetch_gather_ms(sc, d.setup, d.setup.stages[0], d.stages[0], ddp_buckets.per_stage(sc)[0])
    # the forward from one group's first parameter to the next's runs over these linear elements and the norms
    # (4,096 each) between them: at least the linears', at most with 4 norms more; before the second group also the
    # embedding (128,256 x 4,096)
    gaps = [128256 * 4096 + head] + [mid] * 31
    low = first + sum(max(0.0, g - (n + 4 * 4096) * per) for g, n in zip(later, gaps))
    high = first + sum(max(0.0, g - n * per) for g, n in zip(later, gaps))
    assert low <= got <= high
    assert high - low < 0.1  # ms


def test_interleaved_megatron_core_waits_for_the_whole_first_chunk():
    # align_param_gather (on by default in the interleaved schedule): chunk 0's bucket groups all launched at the
    # schedule's start, the model's end first, so the embedding's lands last: the apex rule's figure
    # (without the row's FP8 parameters: with them "apex" also takes NeMo's separate FP8 and 16-bit buckets, and each
    # runtime has its own Adam step and cast, so the wait is held alone; and without the row's
    # overlap_param_gather_with_optimizer_step, which launches chunk 0's gather in the optimizer step: test_apex_adam.py)
    def start(overrides):
        sc = _load("mlperf50-llama405b-512", ["model.fp8_params=false", "step.overlap_param_gather_with_optimizer_step=false",
                                              *overrides])  # fmt: skip
        return param_gather.step_start_ms(sc, sc.derived())

    # (since s14j apex's buckets are one NCCL group and Megatron-core's chunk-0 groups separate launches: the
    # whole gather at one ring latency a bucket, start_gather_ms on Megatron-core's setup)
    sc = _load("mlperf50-llama405b-512", ["model.fp8_params=false", "step.overlap_param_gather_with_optimizer_step=false"])
    d = sc.derived()
    first = nemo_optimizer.apex_stage(sc, d.setup, d.setup.stages[0], d.stages[0])
    assert start([]) > 0
    assert start([]) == pytest.approx(param_gather.start_gather_ms(d.setup, first, ddp_buckets.per_stage(sc, d)[0]),
                                      rel=1e-12)


def test_apex_rule_on_a_gpt3_row_is_the_whole_gather():
    # mlperf31-gpt3-512 pins "apex"; run as Megatron-core's non-interleaved schedule it would wait less
    sc = _load("mlperf31-gpt3-512")
    assert sc.step.param_gather == "apex"
    base = derived_step.derived_sync(sc, "optimizer")
    over = ["pipeline.schedule=1f1b", "pipeline.chunks_per_rank=1", "pipeline.stages=8",
            "step.grad_sync_held=[]", "step.fp32_embedding_optimizer=false"]  # NeMo's, apex only: compared without
    apex = derived_step.derived_sync(_load("mlperf31-gpt3-512", over), "optimizer")
    core = derived_step.derived_sync(_load("mlperf31-gpt3-512", [*over, "step.param_gather=megatron-core"]),
                                     "optimizer")
    assert sum(core) < sum(apex)
    assert len(base) == 96


@pytest.mark.parametrize("setting, words", [
    ("step.param_gather=deepspeed", "step.param_gather"),
    ("model.fp8_params=yes", "model.fp8_params"),
    ("model.fp8=false", "model.fp8_params"),  # FP8 parameters without FP8 linears
])  # fmt: skip
def test_bad_values_exit_2_naming_the_key(tmp_path, capsys, setting, words):
    out = tmp_path / "o"
    code = main(["run", str(FOLDER / "mlperf51-llama8b-8b200.toml"), "--set", setting, "--out", str(out), "--plots", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
