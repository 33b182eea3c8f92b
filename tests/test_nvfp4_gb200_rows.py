"""MLPerf Training v5.1's GB200 NVFP4 Llama 3.1 405B rows (s17j; checks only): each scenario's layout against its
config_GB200_<trays>x4x<MINIBS>xtp4pp8cp2_cg_fp4.sh (mlcommons/training_results_v5.1 @ 441d65f, hsg_ngpu2560 and
hsg_ngpu5120), the logs' global_batch_size and the published figure against the logs' median train_step_time, as
tests/test_nvfp4.py checks the GB300 rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive

FOLDER = Path(__file__).resolve().parent.parent / "scenarios" / "validation"
PUBLISHED = {r["name"]: r for r in csv.DictReader(open(FOLDER / "published.csv"))}
# name: (trays of 4, TP, PP ranks, chunks, CP, DP, micro-batches a step (MINIBS), micro-batch size, the logs'
# global_batch_size, the median train_step_time over result_0-2.txt, steps)
ROWS = {
    "mlperf51-llama405b-2560gb200-nvfp4": (640, 4, 8, 8, 2, 40, 24, 1, 960, 3.1892, 1029),
    "mlperf51-llama405b-5120gb200-nvfp4": (1280, 4, 8, 8, 2, 80, 16, 1, 1280, 2.2275, 787),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_gb200_nvfp4_row_layout_as_published(name):
    trays, tp, pp, chunks, cp, dp, m, mbs, gbs, step, steps = ROWS[name]
    sc = scenario.load(FOLDER / PUBLISHED[name]["scenario"])
    p, par = sc.pipeline, sc.parallel
    assert sc.hardware.preset == "GB200" and sc.hardware.efficiency is None and sc.model.fp4 == "nvfp4"
    assert (par.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank) == (tp, pp, chunks)
    assert (par.context, par.data, p.microbatches, sc.model.micro_batch_size) == (cp, dp, m, mbs)
    assert trays * 4 == tp * pp * cp * dp == int(PUBLISHED[name]["gpus"]) == derive.run_gpus(sc, p.stages)
    assert dp * m * mbs == gbs  # the logs' global_batch_size
    assert (par.sequence_parallel, par.tp_comm_overlap, par.zero, par.rank_order) == (True, False, 1, "tp-cp-ep-pp-dp")
    # the config's SEGMENT = TP x PP x CP / 4 trays: one pipeline replica's 64 ranks, 16 trays of a 72-GPU rack
    assert tp * pp * cp // 4 == 16 and tp * pp * cp <= 72
    # Megatron's interleaved schedule runs micro-batches in groups of PP: MINIBS a multiple of 8
    assert m % pp == 0
    assert PUBLISHED[name]["published"] == f"{step:.4f} s per step (median of {steps})"
    # tokens/s per GPU: the global batch's 8,192-token sequences over the median step, over the GPUs
    assert float(PUBLISHED[name]["published_tokens_per_second_per_gpu"]) == pytest.approx(
        gbs * 8192 / step / (trays * 4), abs=0.01)


def test_gb200_nvfp4_rows_are_the_gb300_rows_model_and_step():
    # the same code (hsg_ngpu2560's tree holds the GB300 config too): model and step sections equal but for nothing
    gb3 = scenario.load(FOLDER / "mlperf51-llama405b-512gb300-nvfp4.toml")
    for name in ROWS:
        gb2 = scenario.load(FOLDER / PUBLISHED[name]["scenario"])
        assert gb2.model == gb3.model and gb2.step == gb3.step and gb2.memory == gb3.memory, name
        assert gb2.parallel.layout == gb3.parallel.layout and gb2.hardware.nccl_version == gb3.hardware.nccl_version
