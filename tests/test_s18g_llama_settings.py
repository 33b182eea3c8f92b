"""The MLPerf v5.0 / v5.1 Llama 3.1 rows' runtime settings as their code sets them (s18g; docs/model.md, "The Llama 3.1
rows' runtime settings, read from their code (s18g)"), worked by hand.

* DDP bucket size: every v5.0 405B pretrain.py builds NeMo's MegatronCommOverlapCallback without ``bucket_size``; its
  setup writes NeMo's 128 x 1024 x 1024 into the strategy's DDP config at DP > 1, over custom.yaml's 200.  Only the
  GB200 rows bucket a chunk (stage 0: OVERLAP_PARAM_GATHER_WITH_OPTIM_STEP=False), so only they change.
* The GB200 rows' loss (NeMo 25.04-alpha.rc2, ``model.training_loop = "nemo-25.04"``): v2.2.0's all-reduces without
  its host read, 13 kernels; no host time under their whole-iteration CUDA graph.
* The FP8 weight refresh with FP8 parameters: Hopper makes each weight's transpose once a step (1 + 1 B an element),
  Blackwell nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import bucket_fill

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import ddp_buckets, derive, fp8_step_casts

VAL = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
V50 = sorted(VAL.glob("mlperf50-llama405b-*.toml"))
GB200 = [VAL / "mlperf50-llama405b-256gb200.toml", VAL / "mlperf50-llama405b-512gb200.toml"]
NEMO_BUCKET = 128 * 1024 * 1024  # megatron_comm_overlap.py: comm_overlap_cfg.bucket_size = 128 * 1024 * 1024
US = 1e-6
P, W = 13.5 * US, 9.65 * US - 2.7 * US  # host.py: a call; a sync's wait beyond its launch

# Llama 3.1 405B on one tensor rank of TP 4 (h 16,384, 128 heads of 128, 8 KV heads, FFN 53,248, vocabulary 128,512)
H, T = 16384, 4
EMBED = 128512 * H // T  # 526,385,152
PROJ = 128 * 128 * H // T  # 67,108,864
QKV = (128 + 2 * 8) * 128 * H // T  # 75,497,472
FC1 = 2 * 53248 * H // T  # 436,207,616
FC2 = 53248 * H // T  # 218,103,808


def test_v50_rows_take_nemos_bucket_size():
    assert len(V50) == 9
    for path in V50:
        assert scenario.load(path).step.ddp_bucket_size == 134_217_728, path.name


@pytest.mark.parametrize("path", GB200, ids=lambda p: p.stem)
def test_gb200_stage_0_buckets_by_hand(path):
    # stage 0 = the embedding and layer 0 ("Et|..."); the FP8 (uint8) buffer walked back: fc2 218.1 M closes a bucket,
    # fc1 436.2 M another, qkv 75.5 M + proj 67.1 M = 142.6 M the third; the 16-bit buffer (2 norms, the embedding): one
    assert bucket_fill([FC2, FC1, QKV, PROJ], NEMO_BUCKET) == [FC2, FC1, QKV + PROJ]
    assert bucket_fill([H, H, EMBED], NEMO_BUCKET) == [EMBED + 2 * H]
    sc = scenario.load(path)
    got = ddp_buckets.per_stage(sc)
    assert got[0] == 3 + 1 and set(got[1:]) == {2}  # the other chunks unbucketed: one bucket a buffer
    # custom.yaml's 200 gave every weight its own bucket: 4 FP8 + 3 16-bit
    assert ddp_buckets.per_stage(scenario.load(path, ["step.ddp_bucket_size=200"]))[0] == 7


def test_h100_rows_unbucketed_either_way():
    # OVERLAP_PARAM_GATHER_WITH_OPTIM_STEP=True: disable_bucketing on every chunk, so the size changes nothing
    path = VAL / "mlperf50-llama405b-512.toml"
    assert ddp_buckets.per_stage(scenario.load(path)) == (2,) * 64
    assert ddp_buckets.per_stage(scenario.load(path, ["step.ddp_bucket_size=200"])) == (2,) * 64


def _head(st):
    return {k.name: k for k in derive.extra_kernels(st, st.stages[-1])}


LABEL = "loss: NeMo 25.04: masked sum, token count, data-parallel average"


@pytest.mark.parametrize("path", GB200, ids=lambda p: p.stem)
def test_gb200_loss_has_no_host_read(path):
    sc = scenario.load(path)
    assert sc.model.training_loop == "nemo-25.04"
    st = derive.setup(sc)
    rows = _head(st)
    # mul, sum, < 0.5, +=, clone, int, divide, clone, cat, divide, / tokens, * cp, / micro-batches: 13 floors
    assert rows[LABEL].seconds == pytest.approx(13 * st.rates.floor)
    assert "loss: host reads" not in rows
    assert rows["loss all-reduce (context-parallel)"].bytes == 4 and rows["loss all-reduce (data-parallel)"].bytes == 4


def test_gb200_loss_against_v2_2_by_hand():
    # nemo-2 (v2.2.0): 9 kernels, the same two all-reduces, then the read and 10 calls replayed on an idle GPU:
    # 9 F + CP + DP + (W + 11 P - 8 F - CP - DP) (tests/test_nemo_loss.py); nemo-25.04: 13 F + CP + DP.
    # The last stage's forward differs by W + 11 P - 12 F - CP - DP; the other stages not at all.
    path = GB200[0]
    st, old = derive.setup(scenario.load(path)), derive.setup(scenario.load(path, ["model.training_loop=nemo-2"]))
    rows, f = _head(st), st.rates.floor
    cp, dp = rows["loss all-reduce (context-parallel)"].seconds, rows["loss all-reduce (data-parallel)"].seconds
    d_new, d_old = derive.derive(st).stages, derive.derive(old).stages
    assert [s.forward for s in d_new[:-1]] == [s.forward for s in d_old[:-1]]
    assert d_old[-1].forward - d_new[-1].forward == pytest.approx((W + 11 * P - 12 * f - cp - dp) * 1e3)


def test_nemo_25_04_at_cp_1_sums_the_mask():
    st = derive.setup(scenario.load(VAL / "mlperf51-llama8b-8b200.toml", ["model.training_loop=nemo-25.04"]))
    rows = _head(st)  # CP 1: the mask's sum in forward, no context-parallel all-reduce
    assert rows[LABEL].seconds == pytest.approx(14 * st.rates.floor)
    assert "loss all-reduce (context-parallel)" not in rows and "loss: host reads" not in rows


def test_bad_training_loop_names_the_field(capsys):
    assert main(["model", str(GB200[0]), "--set", "model.training_loop=nemo-25.05"]) == 2
    err = capsys.readouterr().err
    assert "model.training_loop" in err and "nemo-25.04" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _refresh_ms(path):
    st = derive.setup(scenario.load(path))
    return st, fp8_step_casts.fp8_weight_cast_ms(st, st.stages[0])


def test_fp8_weight_refresh_hopper_transposes_blackwell_nothing():
    # Llama 3.1 8B, TP 1: 32 layers of qkv 4096 x 6144, proj 4096 x 4096, fc1 4096 x 28672, fc2 14336 x 4096
    linear = 32 * (4096 * 6144 + 4096 * 4096 + 4096 * 28672 + 14336 * 4096)
    assert linear == 6_979_321_856
    st, ms = _refresh_ms(VAL / "mlperf51-llama8b-64h200.toml")  # sm_90, FP8 parameters: the transpose, 1 + 1 B
    assert ms == pytest.approx(linear * 2 / st.rates.hbm * 1e3)
    assert _refresh_ms(VAL / "mlperf51-llama8b-64b200.toml")[1] == 0.0  # sm_100: the row-wise data serves
    assert _refresh_ms(VAL / "mlperf50-llama405b-256gb200.toml")[1] == 0.0  # TE v2.2.1 on sm_100 the same
