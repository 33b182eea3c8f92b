"""The GB200 (NVL72) preset (s16a): its figures against the transcribed sources (tests/data/hardware/gb200_nvl72.csv),
its kernel rates (B200's carried over, a 72-GPU NVLink domain), and groups larger than a node costed on NVLink
inside the domain, by hand; hardware.nvlink_domain's rule and errors."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
from helpers import cli_error, hardware_source

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.hardware import PRESETS as HARDWARE
from dualpipe_sim.model.rates import PRESETS as RATES

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
EIGHT_B = str(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-64b200.toml")


def test_gb200_preset_is_the_datasheet_per_gpu():
    src, hw = hardware_source(DATA / "hardware/gb200_nvl72.csv"), HARDWARE["GB200"]
    gpus = src["datasheet", "rack_gpus"]
    # the rack's sparse PFLOPS over its 72 GPUs, halved for dense: 360e3 / 72 / 2 = 2,500; 720e3 / 72 / 2 = 5,000
    assert hw.bf16_tflops == src["datasheet", "bf16_sparse_rack"] * 1e3 / gpus / 2 == 2500
    assert hw.fp8_tflops == src["datasheet", "fp8_sparse_rack"] * 1e3 / gpus / 2 == 5000
    assert hw.hbm_bytes == src["mlperf", "accelerator_memory_capacity"] * 2**20  # 198.7 GB (10^9)
    # NVLink 5 per direction: 1,800 / 2; the rack's 130 TB/s is 72 x 1.8 TB/s, rounded
    assert hw.a2a_intra_gbps == src["mlperf", "accelerator_interconnect"] / 2 == 900
    assert src["datasheet", "nvlink_rack"] == pytest.approx(gpus * src["datasheet", "nvlink_per_gpu_bidirectional"] / 1e3, rel=0.02)
    # one 400 Gb/s NIC per GPU: 4 NICs for the tray's 4 GPUs, 400 / 8 = 50 GB/s each
    assert src["mlperf", "host_networking_nics"] == src["mlperf", "accelerators_per_node"]
    assert hw.p2p_gbps == hw.a2a_gbps == src["mlperf", "host_networking_rate"] / 8 == 50
    assert hw.gpus_per_node == src["mlperf", "accelerators_per_node"] == 4
    assert hw.nvlink_domain == hw.domain == gpus == 72


def test_gb200_kernel_rates_are_b200s_but_the_domain_sms_fp8_and_attention():
    gb, b = RATES["GB200"], RATES["B200"]
    changed = {f.name for f in dataclasses.fields(gb) if getattr(gb, f.name) != getattr(b, f.name)}
    # s18k: its own SM count and the FP8 peak refitted at it (tests/test_gb200_sms.py); s19m: its own attention rates,
    # B200's half-rate lengths kept (tests/test_attention_gb200.py)
    assert changed == {"name", "nvlink_domain", "sms", "gemm_fp8", "attention_forward", "attention_backward",
                       "attention_fa2"}
    assert (gb.attention_seq_half, gb.attention_seq_half_backward) == \
        (b.attention_seq_half, b.attention_seq_half_backward)
    assert (gb.name, gb.nvlink_domain, b.nvlink_domain, gb.sms, b.sms) == ("GB200", 72, 8, 152, 148)
    assert dataclasses.replace(gb.gemm_fp8, peak=b.gemm_fp8.peak) == b.gemm_fp8


def test_gb200_bf16_gemm_is_gpu_fryers_gb200_burn():
    # huggingface/gpu-fryer's minute-long 8192^3 BF16 burn on a GB200-NVL72: ~1,550 TFLOP/s (a GB200 measurement)
    with open(DATA / "kernels" / "gpu_fryer_sustained.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    burn = next(float(r["value"]) for r in rows if r["gpu"].startswith("NVIDIA GB200-NVL72"))
    r = RATES["GB200"]
    t = gemm.time(8192, 8192, 8192, r.gemm_bf16, r.sms, r.hbm, 2.0, schedule=r.gemm_schedule)
    assert 2 * 8192**3 / t.seconds / 1e12 == pytest.approx(burn, rel=0.01)


def test_nvl72_all_reduce_is_not_below_the_carried_over_nvlink_bus():
    # coreweave/nccl-tests#43: a full rack's all_reduce_perf at 1-2 GiB, the sizes XLA's B200 figure (620 GB/s) is read
    # at: 681-774 GB/s of bus, so the 8-GPU figure carried to 72 GPUs is not fast (the all-reduce may run NVLS)
    with open(DATA / "kernels" / "coreweave_nvl72_all_reduce.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    at = [float(r[k]) for r in rows if 2**30 <= int(r["bytes"]) <= 2**31 for k in ("busbw_out", "busbw_in")]
    assert len(at) == 4 and min(at) * 1e9 > RATES["GB200"].nvlink_bus == 620e9


# Qwen3-30B-A3B's HF config.json (Qwen/Qwen3-30B-A3B), the fields the model reads: 128 experts, top-8, hidden 2048
QWEN3_30B = {
    "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "tie_word_embeddings": False,
}  # fmt: skip


def qwen3(preset: str, tensor: int = 1, expert: int = 1, data: int = 16, **hardware):
    return derive.setup(scenario.sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8},
        # 16 key-value heads above tensor 4 (Qwen3-30B has 4): tensor must divide them (model/derive.py, s16i)
        "model": {**QWEN3_30B, "seq_length": 4096, "micro_batch_size": 1,
                  **({"num_key_value_heads": 16} if tensor > 4 else {})},
        "parallel": {"tensor": tensor, "expert": expert, "data": data, "tp_comm_overlap": False},
        "hardware": {"preset": preset, **hardware},
    }))  # fmt: skip


def dispatch(st):
    return next(k for k in derive.layer_kernels(st, 0) if k.name == "all-to-all" and k.component == "dispatch_forward")


def test_expert_group_of_16_inside_nvl72_is_costed_on_nvlink_and_crosses_the_nic_on_b200():
    # EP 16, BF16, 4,096 tokens a rank, top-8, hidden 2048: every copy bound for another GPU of the group
    n, k, h, e = 4096, 8, 2048, 16
    latency, nvlink, nic = 25.5e-6, 620e9, 47e9  # rates.py: _LATENCY, B200's NVLink bus, _NIC_NDR
    gb = dispatch(qwen3("GB200", expert=e))
    sent = n * k * (e - 1) / e * h * 2  # 7.5 copies of a token leave the rank, 2 bytes a value
    assert gb.shape.endswith("(nvlink)") and gb.bytes == pytest.approx(sent)
    assert gb.seconds == pytest.approx(latency + sent / nvlink)
    # on 8-GPU B200 nodes the group spans 2: Megatron's alltoall sends the copies bound for the other node, k / 2
    b = dispatch(qwen3("B200", expert=e))
    across = n * k * (2 - 1) / 2 * h * 2
    assert b.shape.endswith("(nic)") and b.bytes == pytest.approx(across)
    assert b.seconds == pytest.approx(latency + across / nic)
    assert b.seconds > 3 * gb.seconds


def test_tensor_group_of_16_inside_nvl72_is_costed_on_nvlink_and_refused_on_b200():
    st = qwen3("GB200", tensor=16, data=1)
    rows = [k for k in derive.layer_kernels(st, 0) if k.kind == "comm" and "over 16" in k.shape]
    gathers = [k for k in rows if k.shape.startswith(("all_gather", "reduce_scatter"))]
    assert gathers and all(k.shape.endswith("(nvlink)") for k in rows)
    for k in gathers:  # latency + S (n - 1) / n / bus, the bus NVLink's; the backward's partly under its GEMMs
        full = 25.5e-6 + k.bytes * 15 / 16 / 620e9
        assert k.seconds == pytest.approx(full) if k.component == "attn_forward" else k.seconds <= full * (1 + 1e-12)
    assert sum(k.component == "attn_forward" for k in gathers) == 2  # the forward's all-gather and reduce-scatter
    with pytest.raises(ModelError, match=r"parallel.tensor: must be at most the GPUs of one NVLink domain \(8 on the B200"):
        qwen3("B200", tensor=16, data=1)


def test_nvlink_domain_key_widens_a_preset_and_joins_whole_hosts():
    st = qwen3("H100", tensor=16, data=1, nvlink_domain=16)  # two 8-GPU hosts on one NVLink domain, said so
    assert (st.hw.gpus_per_node, st.hw.domain, st.rates.nvlink_domain) == (8, 16, 16)
    rows = [k for k in derive.layer_kernels(st, 0) if k.kind == "comm" and "over 16" in k.shape]
    assert rows and all(k.shape.endswith("(nvlink)") for k in rows)
    with pytest.raises(ModelError, match=r"hardware.nvlink_domain: must be a multiple of hardware.gpus_per_node "
                                         r"\(5 on the GB200\), got 72"):  # fmt: skip
        qwen3("GB200", gpus_per_node=5)
    assert qwen3("GB200", nvlink_domain=36).rates.nvlink_domain == 36  # an NVL36 rack of 9 trays


@pytest.mark.parametrize("extra,message", [
    (["--set", "hardware.nvlink_domain=0"], "hardware.nvlink_domain: input should be greater than or equal to 1"),
    (["--set", "hardware.nvlink_domain=true"], "hardware.nvlink_domain: must be a whole number"),
    (["--set", "hardware.nvlink_domain=12"], "hardware.nvlink_domain: must be a multiple of hardware.gpus_per_node (8 on the B200), got 12"),
])  # fmt: skip
def test_bad_nvlink_domain_one_line_exit_2_nothing_written(tmp_path, extra, message):
    assert message in cli_error(tmp_path, "run", EIGHT_B, *extra)  # a subprocess: exit 2, one line, nothing written
