"""The MLPerf GB200 validation rows (s16a): each scenario's layout as its config file and logs give it, the published
tokens/s worked from the logs' global batch and median step, the rows simulated, and the 8B row's buckets by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import bucket_fill

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import ddp_buckets, derive

FOLDER = Path(__file__).resolve().parent.parent / "scenarios" / "validation"
ROWS = {r["name"]: r for r in csv.DictReader(open(FOLDER / "published.csv"))}

# name: (trays of 4 GPUs, TP, PP ranks, chunks, CP, DP, micro-batches a step, the logs' global_batch_size and the
# median train_step_time the published text gives); from the file names config_GB200_<trays>x4x<MINIBS>xtp..pp..cp...sh
GB200_ROWS = {
    "mlperf50-llama405b-256gb200": (64, 4, 8, 8, 2, 4, 112, 448, 19.1441),
    "mlperf50-llama405b-512gb200": (128, 4, 8, 8, 2, 8, 112, 896, 19.4742),
    "mlperf51-llama8b-72gb200": (18, 1, 1, 1, 2, 36, 1, 36, 0.1711),
}


def load(name: str):
    return scenario.load(FOLDER / ROWS[name]["scenario"])


@pytest.mark.parametrize("name", sorted(GB200_ROWS))
def test_gb200_row_layout_as_published(name):
    trays, tp, pp, chunks, cp, dp, m, gbs, _ = GB200_ROWS[name]
    sc = load(name)
    p, par = sc.pipeline, sc.parallel
    assert (par.tensor, p.stages // (p.chunks_per_rank or 1), p.chunks_per_rank or 1) == (tp, pp, chunks)
    assert (par.context, par.data, p.microbatches, sc.model.micro_batch_size) == (cp, dp, m, 1)
    assert trays * 4 == tp * pp * cp * dp == int(ROWS[name]["gpus"]) == derive.run_gpus(sc, p.stages)
    assert dp * m == gbs  # the logs' global_batch_size, one sequence a micro-batch
    assert sc.hardware.preset == "GB200" and sc.hardware.efficiency is None


@pytest.mark.parametrize("name", sorted(GB200_ROWS))
def test_gb200_row_published_tokens_from_the_logs(name):
    trays, *_, gbs, step = GB200_ROWS[name]
    row = ROWS[name]
    assert row["published"].startswith(f"{step:.4f} s per step")
    # from the step as printed (the csv's convention): 448 x 8,192 / 19.1441 / 256 = 748.85; 896 x 8,192 / 19.4742 /
    # 512 = 736.15; 36 x 8,192 / 0.1711 / 72 = 23,939.22
    per_gpu = gbs * 8192 / step / (trays * 4)
    assert float(row["published_tokens_per_second_per_gpu"]) == pytest.approx(per_gpu, abs=0.005)


@pytest.mark.parametrize("name", sorted(GB200_ROWS))
def test_gb200_row_simulates_the_global_batch(name):
    *_, gbs, _ = GB200_ROWS[name]
    m = simulation.run(load(name)).metrics
    assert m.step.tokens_per_second * m.step.total / 1e3 == pytest.approx(gbs * 8192, rel=1e-9)


def test_gb200_8b_row_buckets_by_hand():
    """NVIDIA's 8B tree sets BUCKET_SIZE=768000000 (config_common_8b.sh), University of Florida's B200 rows 134,217,728:
    the same fill as tests/test_make_validation.py works, to the larger size.  FP8 buffer in reverse, a layer's
    fc2, fc1, qkv, proj (58.7, 117.4, 25.2, 16.8 M: 218.1 M a layer): a bucket closes at the weight that takes it
    to 768 M, 9 buckets of 32 layers; 16-bit buffer: the output layer (525.3 M), 65 norms, the embedding: 1."""
    h, ffn, kv, size = 4096, 14336, 8 * 128, 768_000_000
    proj, qkv, fc1, fc2 = h * h, (h + 2 * kv) * h, 2 * ffn * h, ffn * h

    fp8 = bucket_fill([fc2, fc1, qkv, proj] * 32, size)
    assert len(fp8) == 9 and sum(fp8) == 32 * (proj + qkv + fc1 + fc2)
    assert bucket_fill([128256 * h, h] + [h] * 64 + [128256 * h], size) == [2 * 128256 * h + 65 * h]
    sc = load("mlperf51-llama8b-72gb200")
    assert sc.step.ddp_bucket_size == size and ddp_buckets.per_stage(sc) == (9 + 1,)


def test_gb200_8b_row_costs_its_data_parallel_group_on_nvlink():
    # 36 data x 2 context ranks fill the rack: every collective of the layer and of the step on NVLink; the same row on
    # 8-GPU B200 nodes sends its grad sync across the NIC and runs slower
    gb = simulation.run(load("mlperf51-llama8b-72gb200")).metrics.step.total
    b = simulation.run(scenario.load(FOLDER / "mlperf51-llama8b-72gb200.toml", ['hardware.preset="B200"'])).metrics.step.total
    st = load("mlperf51-llama8b-72gb200").derived().setup
    assert st.rates.nvlink_domain == 72 and all(not k.shape.endswith("(nic)") for k in derive.layer_kernels(st, 0))
    assert gb < b
