"""NVFP4 linears (model.fp4 = "nvfp4") and the GB300 preset (s17b): the preset's figures against the transcribed
sources (tests/data/hardware/gb300_nvl72.csv), the B200 NVFP4 GEMM fit against its measured tables, one NVFP4 GEMM
and one quantize kernel of a layer worked by hand, and the refusals (docs/model.md, "NVFP4 GEMMs and casts",
"GB300 NVL72")."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
from helpers import cli_error, hardware_source, kernel_table

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.hardware import PRESETS as HARDWARE
from dualpipe_sim.model.rates import PRESETS as RATES

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
NVFP4 = 0.5 + 1 / 16  # a 4-bit value and 1/16 of its block's one-byte E4M3 scale


# -- the GB300 preset ---------------------------------------------------------------------------------
def test_gb300_preset_is_the_datasheet_per_gpu():
    src, hw = hardware_source(DATA / "hardware/gb300_nvl72.csv"), HARDWARE["GB300"]
    gpus = src["datasheet", "rack_gpus"]
    # dense per GPU: 360e3 / 72 / 2 = 2,500 BF16; 720e3 / 72 / 2 = 5,000 FP8; FP4's dense rack figure 1,080e3 / 72 = 15,000
    assert hw.bf16_tflops == src["datasheet", "bf16_sparse_rack"] * 1e3 / gpus / 2 == 2500
    assert hw.fp8_tflops == src["datasheet", "fp8_sparse_rack"] * 1e3 / gpus / 2 == 5000
    assert hw.fp4_tflops == src["datasheet", "fp4_dense_rack"] * 1e3 / gpus == 15000
    # GB200's FP4: 1,440e3 sparse / 72 / 2 = 10,000 dense; GB300 keeps the sparse figure and lifts the dense one 1.5x
    assert HARDWARE["GB200"].fp4_tflops == src["datasheet", "gb200_fp4_sparse_rack"] * 1e3 / gpus / 2 == 10000
    assert src["datasheet", "fp4_sparse_rack"] == src["datasheet", "gb200_fp4_sparse_rack"]
    assert hw.hbm_bytes == 284208 * 2**20 == src["mlperf", "accelerator_memory_capacity"] * 2**20  # 298.0 GB (10^9)
    assert hw.a2a_intra_gbps == src["mlperf", "accelerator_interconnect"] / 2 == 900
    # one 800 Gb/s ConnectX-8 per GPU: 4 NICs for a tray's 4 GPUs, 800 / 8 = 100 GB/s
    assert src["mlperf", "host_networking_nics"] == src["mlperf", "accelerators_per_node"] == hw.gpus_per_node == 4
    assert hw.p2p_gbps == hw.a2a_gbps == src["mlperf", "host_networking_rate"] / 8 == 100
    assert hw.nvlink_domain == hw.domain == gpus == 72
    # the rack's 576 TB/s of HBM is 72 x 8 TB/s: the B200's / GB200's 8 TB/s, so their achievable HBM carries over
    assert src["datasheet", "hbm_bandwidth_rack"] / gpus == 8


def test_gb300_kernel_rates_are_gb200s_but_the_nic_and_nvfp4():
    gb3, gb2 = RATES["GB300"], RATES["GB200"]
    changed = {f.name for f in dataclasses.fields(gb3) if getattr(gb3, f.name) != getattr(gb2, f.name)}
    # FP8: tests/test_gb300_sources.py; SMs: 152 on both (GB300's s18f, GB200's s18k); attention: GB300's own table
    # (s19k, tests/test_attention_blackwell_ultra.py)
    attention = {"attention_forward", "attention_backward", "attention_seq_half", "attention_seq_half_backward",
                 "attention_fa2"}
    assert changed == {"name", "nic_bus", "gemm_fp4", "gemm_fp8"} | attention and gb3.sms == gb2.sms == 152
    assert gb3.nic_bus == 2 * 47e9  # the NDR NIC's NCCL figure (47 of 50 GB/s) for twice the line rate
    # fitted to Azure's cuBLASLt NVFP4 table on a GB300 after 10,000 warm-up calls (s20b; tests/test_gb300_sustained_gemm.py)
    assert gb3.gemm_fp4.peak == 8322e12
    assert (gb3.gemm_fp4.k_overhead, gb3.gemm_fp4.floor) == (gb2.gemm_fp4.k_overhead, gb2.gemm_fp4.floor)
    assert RATES["GB200"].gemm_fp4 == RATES["B200"].gemm_fp4
    assert all(RATES[n].gemm_fp4 is None for n in ("H100", "H800", "H200", "A100"))
    assert all(HARDWARE[n].fp4_tflops is None for n in ("H100", "H800", "H200", "A100"))


# -- the NVFP4 GEMM rates -----------------------------------------------------------------------------
def _b200_fp4(m, n, k):
    r = RATES["B200"]
    return gemm.time(m, n, k, r.gemm_fp4, r.sms, r.hbm, NVFP4, schedule=r.gemm_schedule)


def test_b200_nvfp4_fit_is_pytorch_ao_2427s_sweep():
    rows = [r for r in kernel_table(DATA / "kernels" / "ao2427_b200_nvfp4.csv") if r["dtype"] == "nvfp4"]
    assert len(rows) == 7
    logs = []
    for r in rows:
        s, secs = int(r["m"]), float(r["seconds"])
        assert float(r["tflops"]) == pytest.approx(2 * s**3 / secs / 1e12, rel=0.01)  # the table is self-consistent
        logs.append(math.log(_b200_fp4(s, s, s).seconds / secs))
    # the fit: every shape within 15% (2048^3 the worst: 13% fast, near the floor), 6.4% rms in log time
    assert max(abs(x) for x in logs) < 0.15
    assert math.sqrt(sum(x * x for x in logs) / len(logs)) < 0.065
    # the same run's BF16 at 8192^3 is 1,420 TFLOP/s: NVFP4 is 3.8x it there, against the datasheet's 4x
    assert 5370 / 1420 == pytest.approx(3.78, abs=0.01)


def test_b200_nvfp4_fit_against_cublastest_fp4_on_b200():
    # DeepGEMM#348's cuBLAS column (MXFP4, the same FP4 tensor-core rate; cublasTest 13.3, not the runs' cuBLAS 13.0):
    # at the two large shapes the fit is within 2% (8192^3) and 24% fast (4096 x 4096 x 7168: 4,868 TFLOP/s against
    # 3,939, where DeepGEMM's own kernel reaches 5,332)
    rows = {(int(r["m"]), int(r["n"]), int(r["k"])): r for r in kernel_table(DATA / "kernels" / "deepgemm348_b200_fp4_cublas.csv")}
    for shape, tolerance in (((8192, 8192, 8192), 0.02), ((4096, 4096, 7168), 0.25)):
        t = _b200_fp4(*shape)
        model = 2 * math.prod(shape) / t.seconds / 1e12
        assert model / float(rows[shape]["cublas_tflops"]) - 1 == pytest.approx(0, abs=tolerance)
        assert model < float(rows[shape]["dg_tflops"])  # below the best FP4 kernel measured there


# -- a layer on GB300 with NVFP4 ------------------------------------------------------------------------
LLAMA_8B = {  # Llama 3.1 8B as scenarios/validation/mlperf51-llama8b-72gb200.toml gives it
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False,
    "seq_length": 8192, "micro_batch_size": 1, "attention": "flash",
}  # fmt: skip


def llama8b(preset: str = "GB300", context: int = 1, **model):
    return derive.setup(scenario.sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {**LLAMA_8B, "fp4": "nvfp4", **model},
        "parallel": {"tensor": 1, "data": 8, "context": context, "sequence_parallel": False, "tp_comm_overlap": False},
        "hardware": {"preset": preset},
    }))  # fmt: skip


def row(st, name: str, comp: str):
    return next(k for k in derive.layer_kernels(st, 0) if k.name == name and k.component == comp)


def test_one_nvfp4_gemm_through_the_tile_and_wave_model_by_hand():
    # fc1 (gate and up, 2 x 14336) of 8,192 tokens: M 8192, N 28672, K 4096 on GB300's 152 SMs
    k = row(llama8b(), "fc1", "mlp_forward")
    assert k.shape == "8192 x 28672 x 4096 fp4"
    m, n, kk = 8192, 28672, 4096
    # tiles: 128 x 256 and 256 x 128 give 64 x 112 = 7,168 and 32 x 224 = 7,168 tiles, 128 x 128 gives 64 x 224 = 14,336;
    # rounds of 152: 48 (7,168 / 152 = 47.2) and 95 (94.3); useful 8192 * 28672 / (48 * 152 * 32768) = 0.9825 and
    # 8192 * 28672 / (95 * 152 * 16384) = 0.99280; K is long (no split: 2 x tiles > 2 x 152); k_overhead 0
    useful = 8192 * 28672 / (95 * 152 * 128 * 128)
    assert useful == pytest.approx(0.99280, abs=1e-5)
    peak = 8322e12  # GB300's NVFP4 peak (rates.py: fitted to Azure's sustained cuBLASLt table on a GB300, s20b)
    compute = 2 * m * n * kk / (peak * useful)
    nbytes = (m * kk + kk * n) * NVFP4 + m * n * 2  # NVFP4 operands, a BF16 output
    assert nbytes / 6.858e12 < compute  # compute-bound: 0.555 GB over 6.86 TB/s is 81 us against 233 us
    assert k.flops == 2 * m * n * kk and k.bytes == pytest.approx(nbytes)
    assert k.seconds == pytest.approx(5.25e-6 + compute, rel=1e-9)  # sm_100's floor + the mainloop
    assert k.seconds * 1e6 == pytest.approx(238.14, abs=0.01)
    # the same GEMM in FP8 on GB300 (Azure's sustained cuBLASLt FP8 on a GB300, 3,415 TFLOP/s peak, the same tiles):
    # 572.8 us, 2.41x
    fp8 = row(llama8b(fp4="none", fp8=True), "fc1", "mlp_forward")
    assert fp8.shape.endswith(" fp8")
    assert fp8.seconds == pytest.approx(5.25e-6 + 2 * m * n * kk / (3415e12 * useful), rel=1e-9)
    assert fp8.seconds / k.seconds == pytest.approx(2.405, abs=0.001)


def test_one_quantize_kernel_moves_nvfp4_bytes():
    # the out_proj output gradient cast for its dgrad and wgrad (no sequence parallelism: one kernel over the whole
    # tensor): read 2 bytes, write the row-wise and the column-wise NVFP4 copies, 0.5 + 1/16 bytes each
    st = llama8b()
    elems = 8192 * 4096
    cast = row(st, "grad cast", "attn_backward_input")
    assert cast.bytes == pytest.approx(elems * (2 + 2 * (0.5 + 1 / 16))) == 104857600
    assert cast.seconds == pytest.approx(2.04e-6 + cast.bytes / 6.858e12)  # B200's floor and achievable HBM
    # its amax first (NVFP4's per-tensor scale, computed each cast): 3 kernels, the tensor read once
    amax = row(st, "grad amax", "attn_backward_input")
    assert amax.bytes == elems * 2 and amax.shape.endswith("(3 kernels)")
    # in FP8 (current scaling, transposes kept as NVFP4 keeps them) the same cast writes 1 byte a copy
    fp8 = row(llama8b(fp4="none", fp8=True, fp8_recipe="current", fp8_transpose="kept"), "grad cast", "attn_backward_input")
    assert fp8.bytes == elems * (2 + 2 * 1)


# -- refusals -----------------------------------------------------------------------------------------
def test_nvfp4_refused_on_h100_and_where_it_cannot_be_costed():
    with pytest.raises(ModelError, match=r'^model.fp4: the H100 has no FP4 tensor cores; "nvfp4" needs a Blackwell '
                                         r"GPU \(B200, GB200, GB300, B300\), or leave the key out$"):  # fmt: skip
        llama8b("H100")
    with pytest.raises(ModelError, match=r"^model.fp4: the A100 has no FP4 tensor cores"):
        llama8b("A100", fp8=None)
    with pytest.raises(ModelError, match=r"^model.fp8: must be left out \(or true\) with model.fp4"):
        llama8b(fp8=False)
    with pytest.raises(ModelError, match=r'^model.fp8_recipe: must be left out with model.fp4 = "nvfp4"'):
        llama8b(fp8_recipe="current")
    with pytest.raises(ModelError, match=r'^model.fp8_transpose: must be left out with model.fp4 = "nvfp4"'):
        llama8b(fp8_transpose="none")
    with pytest.raises(ModelError, match=r'^model.fp8_params: must be false with model.fp4 = "nvfp4"'):
        llama8b(fp8_params=True)
    assert llama8b(fp8=True).layout.fp4  # fp8 = true is allowed: the same low-precision path


def test_nvfp4_refusals_from_the_cli(tmp_path):
    toml, run = tmp_path / "fp4.toml", tmp_path / "run"
    run.mkdir()
    toml.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n[model]\n'
                    + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in LLAMA_8B.items())
                    .replace("False", "false")
                    + 'fp4 = "nvfp4"\n[hardware]\npreset = "H100"\n')  # fmt: skip
    line = cli_error(run, "run", str(toml))
    assert line == ('error: model.fp4: the H100 has no FP4 tensor cores; "nvfp4" needs a Blackwell GPU '
                    "(B200, GB200, GB300, B300), or leave the key out")  # fmt: skip
    toml.write_text(toml.read_text().replace('"H100"', '"GB300"\nefficiency = 0.5'))
    assert cli_error(run, "run", str(toml)).startswith('error: model.fp4: "nvfp4" needs the kernel-level costs')
    toml.write_text(toml.read_text().replace('fp4 = "nvfp4"', 'fp4 = "mxfp4"'))
    assert cli_error(run, "run", str(toml)).startswith("error: model.fp4: ")


# -- the GB300 validation rows (checks only) -----------------------------------------------------------
FOLDER = ROOT / "scenarios" / "validation"
PUBLISHED = {r["name"]: r for r in csv.DictReader(open(FOLDER / "published.csv"))}
# name: (trays of 4, TP, PP ranks, chunks, CP, DP, micro-batches a step, micro-batch size, the logs' global_batch_size,
# the median train_step_time, fp4); from config_GB300_<trays>x4x<MINIBS>xtp..pp..cp.._*.sh and result_*.txt
GB300_ROWS = {
    "mlperf51-llama8b-72gb300": (18, 1, 1, 1, 2, 36, 1, 1, 36, 0.1479, "none"),
    "mlperf51-llama8b-8gb300-nvfp4": (2, 1, 1, 1, 1, 8, 1, 2, 16, 0.3466, "nvfp4"),
    "mlperf51-llama405b-512gb300-nvfp4": (128, 2, 8, 8, 2, 16, 72, 1, 1152, 13.147, "nvfp4"),
}


@pytest.mark.parametrize("name", sorted(GB300_ROWS))
def test_gb300_row_layout_as_published(name):
    trays, tp, pp, chunks, cp, dp, m, mbs, gbs, step, fp4 = GB300_ROWS[name]
    sc = scenario.load(FOLDER / PUBLISHED[name]["scenario"])
    p, par = sc.pipeline, sc.parallel
    assert sc.hardware.preset == "GB300" and sc.hardware.efficiency is None and sc.model.fp4 == fp4
    assert (par.tensor, p.stages // (p.chunks_per_rank or 1), p.chunks_per_rank or 1) == (tp, pp, chunks)
    assert (par.context, par.data, p.microbatches, sc.model.micro_batch_size) == (cp, dp, m, mbs)
    assert trays * 4 == tp * pp * cp * dp == int(PUBLISHED[name]["gpus"]) == derive.run_gpus(sc, p.stages)
    assert dp * m * mbs == gbs  # the logs' global_batch_size
    # tokens/s per GPU: the global batch's 8,192-token sequences over the median step, over the GPUs
    assert float(PUBLISHED[name]["published_tokens_per_second_per_gpu"]) == pytest.approx(
        gbs * 8192 / step / (trays * 4), abs=0.01)


def test_gb300_8b_fp8_row_is_the_gb200_rows_config_on_gb300():
    # config_GB300_18x4x1xtp1pp1cp2_8b.sh is line for line config_GB200_18x4x1xtp1pp1cp2_8b.sh: every section the same
    gb3, gb2 = (scenario.load(FOLDER / f"mlperf51-llama8b-72{g}.toml") for g in ("gb300", "gb200"))
    for section in ("pipeline", "model", "parallel", "step", "memory"):
        assert getattr(gb3, section) == getattr(gb2, section), section
    assert (gb3.hardware.preset, gb2.hardware.preset) == ("GB300", "GB200")
