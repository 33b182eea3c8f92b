"""GPU presets: peak dense TFLOP/s, HBM capacity and link bandwidths, with where each figure is from.

Figures are per GPU, dense (no 2:4 sparsity), SXM parts.  Bandwidths are in
GB/s (10^9 bytes/s) per direction; capacities in bytes: the total the device
reports (nvidia-smi, in MiB), not the datasheet's decimal "80 GB", so an H100
holds 85.5 GB (10^9).  Sources (full citations in docs/model.md):

* H100 SXM: NVIDIA H100 Tensor Core GPU datasheet: BF16 989.4 TFLOPS and FP8
  1,978.9 TFLOPS dense (the datasheet's 1,979 / 3,958 are with sparsity),
  80 GB HBM3, NVLink 900 GB/s bidirectional (450 per direction).
  Inter-node: one 400 Gb/s ConnectX-7 NDR port per GPU = 50 GB/s (DGX H100).
* H800 SXM: the export variant of the H100: the same compute and HBM, NVLink
  cut to 400 GB/s bidirectional.  DeepSeek-V3 report (Sec. 3.2.2): "IB (50 GB/s)",
  NVLink "160 GB/s" achieved.
* H200 SXM: NVIDIA H200 datasheet: the H100's compute, 141 GB HBM3e, NVLink 900 GB/s.
* B200 (HGX/DGX B200): NVIDIA DGX B200 datasheet: 72 PFLOPS FP8 training and
  1,440 GB for 8 GPUs = 9 PFLOPS sparse, 4.5 dense FP8 and 2.25 dense BF16 per
  GPU, 180 GB; NVLink 5 1,800 GB/s bidirectional; ConnectX-7 400 Gb/s per GPU.
* GB200 (GB200 NVL72): the B200's GPU at 1,200 W; NVIDIA's GB200 NVL72 datasheet: 720 PFLOPS FP8 and 360 BF16
  with sparsity for 72 GPUs = 5,000 / 2,500 dense per GPU; NVLink 5 1,800 GB/s bidirectional; one NVLink domain
  of 72 GPUs (18 compute trays of 4, Grace hosts); one 400 Gb/s ConnectX-7 NDR per GPU (MLPerf v5.0/v5.1 Tyche).
* GB300 (GB300 NVL72): the Blackwell Ultra GPU; NVIDIA's GB300 NVL72 datasheet, per 72 GPUs: 1,080 PFLOPS dense FP4,
  360 PFLOPS FP8 and 180 BF16 (dense; the rack's "720 / 360" sparse) = 15,000 / 5,000 / 2,500 dense per GPU; NVLink 5
  1,800 GB/s bidirectional over 72 GPUs; one 800 Gb/s ConnectX-8 XDR per GPU (MLPerf v5.1 Theia) = 100 GB/s.
  FP4 (dense) of the others: B200 9,000 (DGX B200: 144 PFLOPS FP4 sparse per 8), GB200 10,000 (GB200 NVL72:
  1,440 PFLOPS FP4 sparse per 72); none before Blackwell.
* B300 (HGX B300): the Blackwell Ultra GPU on an 8-GPU HGX board at 1,100 W; NVIDIA's HGX B300 figures as restated,
  per 8 GPUs: 105 PFLOPS dense FP4, 72 / 36 PFLOPS FP8 / BF16 sparse = 13,125 / 4,500 / 2,250 dense per GPU; NVLink 5
  1,800 GB/s bidirectional; one 800 Gb/s ConnectX-8 per GPU = 100 GB/s (docs/model.md, "HGX B300 (s18m)").
* A100 SXM 80GB: NVIDIA A100 datasheet: BF16 312 TFLOPS dense, no FP8, 80 GB
  HBM2e, NVLink 600 GB/s bidirectional; HDR InfiniBand 200 Gb/s = 25 GB/s per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16_tflops: float  # peak dense
    fp8_tflops: float | None  # None: no FP8 tensor cores (A100)
    hbm_bytes: float
    p2p_gbps: float  # pipeline send/recv between neighbouring stages (inter-node: the NIC)
    a2a_gbps: float  # all-to-all per GPU across nodes (the NIC)
    a2a_intra_gbps: float  # all-to-all per GPU inside a node (NVLink, per direction)
    gpus_per_node: int = 8  # GPUs one host drives (an HGX / DGX board; a GB200 compute tray: 4)
    # GPUs one NVLink domain joins: collectives and all-to-alls among them are costed on NVLink, beyond it on
    # the NIC; None: the node (an 8-GPU board's NVSwitch); a GB200 NVL72 rack: 72 over 18 hosts
    nvlink_domain: int | None = None
    fp4_tflops: float | None = None  # peak dense FP4 (NVFP4); None: no FP4 tensor cores (before Blackwell)

    @property
    def domain(self) -> int:
        """GPUs reached over NVLink: the NVLink domain, or the node where none is given."""
        return self.nvlink_domain or self.gpus_per_node

    def peak(self, fp8: bool) -> float:
        """Peak FLOP/s for a matmul in FP8 (if the GPU has it) or BF16."""
        tflops = self.fp8_tflops if fp8 and self.fp8_tflops else self.bf16_tflops
        return tflops * 1e12


MIB = 2**20

# Device memory as reported (MLPerf Training system descriptions, "accelerator_memory_capacity", nvidia-smi's
# total).  The model's runtime allowance (memory.py) is charged on top, so "fits" means needed <= this total.
# H100-SXM5-80GB: mlcommons/training_results_v4.0 @ 6fe9543 NVIDIA/systems/eos_n128_ngc24.04_nemo.json
H100_HBM = 81559 * MIB
# H200-SXM5-141GB: mlcommons/training_results_v4.0 @ 6fe9543 NVIDIA/systems/h200_ngc24.04_dgl.json
H200_HBM = 143771 * MIB
# B200-SXM-180GB: mlcommons/training_results_v5.1 @ 441d65f Dell/systems/1xXE9680Lx8B200-SXM-180GB.json
B200_HBM = 183359 * MIB
# NVIDIA Blackwell GPU (GB200): mlcommons/training_results_v5.0 @ 0fdc28f
# NVIDIA/systems/tyche_ngpu256_ngc25.04_nemo.json
# (the same in v5.1 @ 441d65f NVIDIA/systems/tyche_ngpu8_ngc25.09_nemo.json)
GB200_HBM = 189471 * MIB
# NVIDIA Blackwell Ultra GPU (GB300): mlcommons/training_results_v5.1 @ 441d65f NVIDIA/systems/theia_ngpu72_ngc25.09_nemo.json
# (the same in theia_ngpu8 / theia_ngpu512)
GB300_HBM = 284208 * MIB
# NVIDIA B300 SXM6 AC (HGX B300): nvidia-smi's total, ademeure/QuickRunCUDA @ b913c35 MICROBENCH_RESULTS_GPU1.md ("Memory |
# 275040 MiB"; 288 GB the marketing figure); no B300 MLPerf system description was reached
B300_HBM = 275040 * MIB
# A100-SXM4-80GB: the MLPerf v2.1-v4.0 systems give only "80 GB", no reported total was reached: the datasheet's.
A100_HBM = 80e9

PRESETS = {
    "H100": Hardware("H100", 989.4, 1978.9, H100_HBM, 50.0, 50.0, 450.0),
    "H800": Hardware("H800", 989.4, 1978.9, H100_HBM, 50.0, 50.0, 160.0),  # assumed: H100's die and memory
    "H200": Hardware("H200", 989.4, 1978.9, H200_HBM, 50.0, 50.0, 450.0),
    "B200": Hardware("B200", 2250.0, 4500.0, B200_HBM, 50.0, 50.0, 900.0, fp4_tflops=9000.0),
    "A100": Hardware("A100", 312.0, None, A100_HBM, 25.0, 25.0, 300.0),
    # 4 GPUs a compute tray (the systems json's accelerators_per_node), 72 in the rack's NVLink domain
    "GB200": Hardware("GB200", 2500.0, 5000.0, GB200_HBM, 50.0, 50.0, 900.0, gpus_per_node=4, nvlink_domain=72,
                      fp4_tflops=10000.0),
    # the GB200's tray and rack (4 GPUs a host, 72 a domain); an 800 Gb/s ConnectX-8 a GPU (Theia's systems json)
    "GB300": Hardware("GB300", 2500.0, 5000.0, GB300_HBM, 100.0, 100.0, 900.0, gpus_per_node=4, nvlink_domain=72,
                      fp4_tflops=15000.0),
    # an HGX board: 8 GPUs a node, one NVSwitch domain; an 800 Gb/s ConnectX-8 a GPU (docs/model.md, "HGX B300 (s18m)")
    "B300": Hardware("B300", 2250.0, 4500.0, B300_HBM, 100.0, 100.0, 900.0, fp4_tflops=13125.0),
}


def preset(name: str, **overrides) -> Hardware:
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def unknown_preset_rule(name) -> str:
    """The rule an unknown preset name breaks, with the preset it most likely meant: case first (h100 -> H100),
    then a near miss (H10 -> H100).  One wording for [hardware] preset and plan's --hardware."""
    import difflib

    close = [p for p in PRESETS if p.lower() == str(name).lower()] or difflib.get_close_matches(
        str(name).upper(), list(PRESETS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown GPU preset{hint} (known: {', '.join(PRESETS)})"
