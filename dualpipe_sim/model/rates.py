"""What one GPU achieves per kind of kernel, each figure from a kernel-level measurement.

One :class:`KernelRates` per GPU preset: GEMM rates per dtype (gemm.py's model,
fitted by ``benchmarks/fit_kernel_rates.py`` to measured GEMM tables), flash
attention's measured forward / backward rates by sequence length, the
achievable HBM bandwidth of a streaming kernel, and NCCL's bus bandwidths and
latency on NVLink and on the NIC.  docs/model.md ("Kernel rates") gives the
source of every number; tests/test_kernels.py checks the fitted ones against
their tables.  No figure here comes from a whole training run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import ModelError
from .gemm import SCHEDULES, GemmRates, measured_passes


@dataclass(frozen=True)
class KernelRates:
    name: str
    sms: int
    gemm_bf16: GemmRates
    gemm_fp8: GemmRates | None  # None: no FP8 tensor cores
    # Flash attention (causal, head dim 128): rate(s) = rate * s / (s + seq_half), FLOPs counted as
    # 4 s^2 h d / 2 forward and 2.5x that backward (flash-attention's benchmark convention).
    attention_forward: float  # FLOP/s
    attention_backward: float
    attention_seq_half: float  # sequence length at which half the rate is reached
    hbm: float  # achievable bytes/s of a streaming (memory-bound) kernel
    floor: float  # seconds: the shortest any kernel takes (launch and synchronisation)
    nvlink_bus: float  # NCCL bus bandwidth inside an NVLink domain, bytes/s (all-gather / reduce-scatter / all-to-all)
    nic_bus: float  # per GPU across NVLink domains, bytes/s
    latency: float  # seconds per collective or P2P transfer
    # GPUs one NVLink domain joins (hardware.nvlink_domain; derive.setup sets the run's): a group of at most this
    # many consecutive ranks is costed on NVLink, a larger one across the NIC. 8: an HGX / DGX board
    nvlink_domain: int = 8
    # Measured NCCL all-reduce bus bandwidth by message size inside a node, ((bytes, bytes/s), ...) rising in
    # bytes; when given, NVLink all-reduce / all-gather / reduce-scatter take the bus bandwidth measured at
    # their size (collectives.py) instead of latency + nvlink_bus.
    nvlink_curve: tuple[tuple[float, float], ...] = ()
    # DeepGEMM's FP8 kernels (fine-grained scaling, DeepSeek's runtime): model.fp8_gemm = "deepgemm" takes
    # these instead of gemm_fp8 (cuBLASLt, as Transformer Engine runs FP8); None: no DeepGEMM table
    gemm_fp8_deepgemm: GemmRates | None = None
    # Dao's flash-attn 2 library (model.attention_kernel = "flash-attn-2"): (forward, backward FLOP/s, forward and
    # backward seq_half), as attention_forward etc.; None: no table (A100's figures are flash-attn 2's already)
    attention_fa2: tuple[float, float, float, float] | None = None
    # Dao's flash-attn 1.x (model.attention_kernel = "flash-attn-1"), the same four numbers; None: no table
    attention_fa1: tuple[float, float, float, float] | None = None
    attention_seq_half_backward: float | None = None  # None: attention_seq_half
    # DeepEP's normal kernels across nodes (model.moe_dispatcher = "deepep", DeepSeek's runtime): measured logical
    # bandwidth, ((EP ranks, bytes/s), ...) rising in ranks, of its dispatch and its combine kernel; the logical bytes
    # count a token once per destination node, its own included (collectives.deepep); (): no table for this GPU
    deepep_dispatch: tuple[tuple[float, float], ...] = ()
    deepep_combine: tuple[tuple[float, float], ...] = ()
    # How the GPU's GEMM library hands output tiles to SMs (gemm.SCHEDULES; docs/model.md, "GEMMs beside a
    # kernel they were not told about"): it matters only while another kernel holds SMs (held_sms)
    gemm_schedule: str = "dynamic"
    # SMs a kernel the GEMM library was not told about holds (an NCCL collective beside the compute): held()
    held_sms: int = 0
    # The NCCL release the run linked, (major, minor, patch) (hardware.nccl_version): which of NCCL's tuning rules
    # collectives.py applies; None: v2.18.5's
    nccl: tuple[int, int, int] | None = None
    # NVFP4 GEMMs (model.fp4 = "nvfp4": E2M1 values, an E4M3 scale a block of 16, cuBLASLt as Transformer Engine
    # runs them); None: no FP4 tensor cores (before Blackwell)
    gemm_fp4: GemmRates | None = None
    # PyTorch's indexSelectLargeIndex, the kernel F.embedding's forward runs (Indexing.cu: one element a thread a step,
    # at most 8 blocks of 128 threads an SM), in elements written a second, measured (docs/model.md, "The embedding's
    # lookup and masked zeroing at their measured rates (s20q)"); None: none measured, the lookup at the HBM rate
    index_select: float | None = None
    # masked_fill_ of a [tokens, hidden] tensor by a [tokens, 1] mask (TensorIterator's unvectorized elementwise_kernel:
    # the broadcast mask is not contiguous), bytes read and written a second, measured; None: at the HBM rate
    masked_fill_broadcast: float | None = None

    def __post_init__(self) -> None:
        if self.gemm_schedule not in SCHEDULES:
            raise ValueError(f"gemm_schedule must be one of {SCHEDULES}, got {self.gemm_schedule!r}")

    def held(self, sms: int) -> "KernelRates":
        """The GPU's rates while a kernel nobody told the compute about holds ``sms`` of its SMs (an NCCL
        collective beside it): each GEMM keeps the tiles and grid its library picks for the whole GPU and
        runs them on the SMs left as its schedule allows (gemm.rounds); flash attention at the share of
        SMs left; memory-bound kernels, HBM and the links unchanged.  The attention library is chosen
        before (with_attention_kernel, at setup), so the rates scaled here are that library's; its tables
        are not read again (with_attention_kernel refuses held rates)."""
        total = self.held_sms + sms  # a kernel beside two (a data-parallel collective and the ring's P2P)
        left = self.sms - total
        if left < 1:
            raise ModelError(f"must be below the GPU's {self.sms} SMs, got {total} held")
        share = left / (self.sms - self.held_sms)
        return replace(self, held_sms=total, attention_forward=self.attention_forward * share,
                       attention_backward=self.attention_backward * share)  # fmt: skip

    def with_fp8_gemm(self, library: str) -> "KernelRates":
        """The same GPU with the FP8 GEMMs of ``library`` ("cublas" or "deepgemm")."""
        if library == "cublas":
            return self
        if self.gemm_fp8_deepgemm is None:
            raise ValueError(f'"deepgemm" has no measured FP8 table on {self.name} (H100, H800, H200 only)')
        return replace(self, gemm_fp8=self.gemm_fp8_deepgemm)

    def with_attention_kernel(self, kernel: str) -> "KernelRates":
        """The same GPU with the flash attention kernels of ``kernel`` ("cudnn", "flash-attn-2" or "flash-attn-1").
        Whole-GPU rates only: held() scales the chosen library's rates, not the tables."""
        if self.held_sms:
            raise RuntimeError("with_attention_kernel: choose the library before SMs are held (held())")
        if kernel == "flash-attn-1":
            if self.attention_fa1 is None:
                raise ValueError(f'"flash-attn-1" has no measured table on {self.name} (H100, H800, H200 only)')
            table = self.attention_fa1
        elif kernel == "cudnn" or self.name == "A100":  # A100's rates are flash-attn 2's (no cuDNN table)
            return self
        elif self.attention_fa2 is None:
            raise ValueError(f'"flash-attn-2" has no measured table on {self.name} '
                             "(H100, H800, H200, B200 and A100 only)")
        else:
            table = self.attention_fa2
        fwd, bwd, half, half_bwd = table
        return replace(self, attention_forward=fwd, attention_backward=bwd, attention_seq_half=half,
                       attention_seq_half_backward=half_bwd)  # fmt: skip

    def attention_rate(self, seq: int, backward: bool) -> float:
        rate = self.attention_backward if backward else self.attention_forward
        half = self.attention_seq_half_backward if backward and self.attention_seq_half_backward else self.attention_seq_half
        return rate * seq / (seq + half)

    def scaled(self, compute: float = 1.0, memory: float = 1.0, nvlink: float = 1.0, nic: float = 1.0) -> "KernelRates":
        """The same GPU generation with other peaks (a custom [hardware] section): each rate scaled
        by the ratio of the given peak to the preset's."""
        g = lambda r: None if r is None else replace(r, peak=r.peak * compute)  # noqa: E731
        return replace(self, gemm_bf16=g(self.gemm_bf16), gemm_fp8=g(self.gemm_fp8),
                       gemm_fp8_deepgemm=g(self.gemm_fp8_deepgemm), gemm_fp4=g(self.gemm_fp4),
                       attention_forward=self.attention_forward * compute,
                       attention_backward=self.attention_backward * compute, hbm=self.hbm * memory,
                       attention_fa2=_scaled_table(self.attention_fa2, compute),
                       attention_fa1=_scaled_table(self.attention_fa1, compute),
                       nvlink_bus=self.nvlink_bus * nvlink, nic_bus=self.nic_bus * nic,
                       nvlink_curve=tuple((size, bus * nvlink) for size, bus in self.nvlink_curve),
                       deepep_dispatch=tuple((ep, bw * nic) for ep, bw in self.deepep_dispatch),
                       deepep_combine=tuple((ep, bw * nic) for ep, bw in self.deepep_combine))  # fmt: skip


def sustained_attention(rates: KernelRates, factor: float) -> KernelRates:
    """``rates`` with every attention library's rates times ``factor``: tables timed at a free clock on a cool GPU,
    at the fraction of them the GPU keeps once sustained load has pulled its clock down (a training step)."""
    return replace(rates, attention_forward=rates.attention_forward * factor,
                   attention_backward=rates.attention_backward * factor,
                   attention_fa2=_scaled_table(rates.attention_fa2, factor),
                   attention_fa1=_scaled_table(rates.attention_fa1, factor))  # fmt: skip


def _scaled_table(table: tuple[float, float, float, float] | None, factor: float):
    """A flash attention library's (forward, backward, seq_half, seq_half backward) with both rates scaled."""
    return None if table is None else (table[0] * factor, table[1] * factor, *table[2:])


# -- the presets ------------------------------------------------------------------------------------
# Fitted by benchmarks/fit_kernel_rates.py (its output, rounded), sources in docs/model.md:
# GEMMs: XLA's sm_90 / sm_100 matmul tables (bf16), Azure's cuBLASLt FP8 tables on H100 and GB200 (Hopper and B200
# fp8, as Transformer Engine runs it) and DeepGEMM's H800 FP8 table (Hopper fp8 in DeepSeek's runtime);
# attention: cuDNN forward / backward, causal, head dim 128 (FlashAttention-3 paper figures, H100), FA2 on A100;
# collectives: XLA's sm_90 collective table (8 GPUs, NVLink); NICs: NVIDIA's NCCL maintainers' 46-49 GB/s per
# 400 Gb/s NDR NIC; HBM: each SKU's measured streaming kernel (one load, one store) at large sizes.
# XLA's sm_90 table is short kernel runs: its fit gives the shape terms (k_overhead, floor) and, kept for the checks
# against short-run sources, its own peak. The preset's peak is where the one sustained BF16 figure for H100 SXM
# puts it (huggingface/gpu-fryer's minute-long 8192^3 cuBLASLt burn, ~730 TFLOP/s), as the Hopper FP8 and A100
# rates are sustained tables (Azure, 10,000 warm-up iterations): a training step runs its GEMMs for minutes
SM90_BF16_SHORT_RUNS = GemmRates(peak=836e12, k_overhead=103, floor=5.54e-6)
_SM90_BF16 = GemmRates(peak=765e12, k_overhead=103, floor=5.54e-6)
_SM90_FP8 = GemmRates(peak=1554e12, k_overhead=434, floor=5.54e-6)  # DeepGEMM
# cuBLASLt (Azure ND H100 v5, 10,000 warm-up iterations); its k_overhead fits to 0 (the grid's edge); sm_90's floor
_SM90_FP8_CUBLAS = GemmRates(peak=1382e12, k_overhead=0.0, floor=5.54e-6)
# Achievable HBM, Hopper: Azure's BabelStream "Mul" (b = scalar * c: one load, one store, gpu-benches' "scale"; 268 MB
# arrays) on ND H100 v5 (H100 80GB HBM3, SXM) and ND H200 v5 (H200 141GB, SXM), the benchmark and row A100's 1.61
# comes from (tests/data/kernels/azure_hbm.csv); H800 takes H100 SXM's (the same 3.35 TB/s HBM3)
_H100_HBM = 2.90e12  # 86.6% of 3.35 TB/s
_H200_HBM = 4.00e12  # 83.3% of 4.8 TB/s
_FLOOR = 2.5e-6  # back-to-back small kernels (gpu-benches gpu-small-kernels, H200 and A100)
# Transformer Engine v0.7-v1.6's cast-transpose (the tiled kernel of NVIDIA/TransformerEngine#101, also in MLPerf
# v3.1's TE @ 09ba842; TE v1.7 on runs #258's NVRTC kernel), timed on an H100 SXM by that PR: 4,096^2 FP16 -> FP8,
# 2 + 1 + 1 B an element (67.1 MB, beyond the 50 MB L2), in 51.95 us: 1.292 TB/s, as a share of H100's HBM row
# (tests/data/kernels/te101_h100_cast_transpose.csv); H800 takes it as it takes H100's HBM row; no other GPU timed
TE_STATIC_CAST_TRANSPOSE_GPUS = ("H100", "H800")
TE_STATIC_CAST_TRANSPOSE_SHARE = 4 * 4096**2 / 51.95e-6 / _H100_HBM  # 0.4455
# B200's own: NVIDIA/cccl#7391's nvbench table of cub::DeviceTransform relu on "NVIDIA B200" (one load, one store a
# value; tests/data/kernels/cccl7391_b200_relu.csv), its batch (back-to-back) times: 2^28 F16 values, 1 GiB moved, in
# 156.563 us; 2^16 values in 2.044 / 2.036 us (F16 / BF16)
_B200_HBM = 6.858e12  # 2^30 B / 156.563 us, bytes over time at the largest size, as BabelStream's Mul gives Hopper's
_B200_FLOOR = 2.04e-6  # the two 2^16 rows' mean
_NIC_NDR = 47e9  # one 400 Gb/s NDR / CX7 NIC per GPU
_LATENCY = 25.5e-6

# Azure ND A100 v4, nccl-tests all_reduce_perf over 8 A100-SXM4-80GB (NCCL 2.18.5): bus GB/s at 2^10 .. 2^33 bytes
_A100_ALL_REDUCE = tuple((float(1 << (10 + i)), gbs * 1e9) for i, gbs in enumerate((
    0.04, 0.08, 0.17, 0.33, 0.67, 1.37, 2.70, 5.15, 10.11, 19.24, 36.22, 53.54, 71.43, 89.99, 109.22, 132.77,
    166.63, 174.18, 213.87, 221.58, 228.10, 230.22, 230.48, 231.58)))  # fmt: skip

# DeepEP's README (@ 3b1045d, H800, CX7 400 Gb/s per GPU, 4096 tokens x 7168, top-8, FP8 dispatch / BF16 combine):
# internode "bottleneck bandwidth (RDMA)" at EP 16, 32, 64 (tests/data/kernels/deepep_h800_internode.csv); taken for
# H100 and H200 too (the same NIC; an H200 pair of nodes on CX7 measured 38-44 GB/s at EP 16, DeepEP#493)
_DEEPEP_DISPATCH = ((16.0, 43e9), (32.0, 58e9), (64.0, 51e9))
_DEEPEP_COMBINE = ((16.0, 43e9), (32.0, 57e9), (64.0, 50e9))

# flash-attn 2 on H100 80GB SXM5 (flash-attention's H100 benchmark figures, causal, head dim 128): forward fitted
# directly, backward from the forward+backward figure (benchmarks/fit_kernel_rates.py)
_H100_FA2 = (350e12, 327e12, 400.0, 580.0)
# flash-attn 1.x on H100 80GB SXM5 (the "FlashAttention" bars of the same forward+backward figure, causal, head dim
# 128): one curve fitted to forward+backward, used for both passes as A100's flash-attn 2 figure is (no FA1
# forward-only figure); benchmarks/fit_kernel_rates.py
_H100_FA1 = (133e12, 133e12, 210.0, 210.0)
# The embedding's forward kernels on sm_90 (docs/model.md, "The embedding's lookup and masked zeroing at their measured
# rates (s20q)"): GindaChen/nsys-ai @ 2be79f6's H200 capture of a Megatron-LM forward (tests/data/kernels/
# distca_h200_llama8b_forward.csv), its vocabulary-parallel embedding over 131,072 tokens x 4,096 BF16 (TP 4, inferred):
# indexSelectLargeIndex 6.455 ms, the masked rows' masked_fill_ (elementwise_kernel) 2.524 ms, reading and writing
# the whole output and the 1-byte mask. Taken for H100 and H800 too: the same 132-SM die, the kernels' grids fixed per SM
_SM90_INDEX_SELECT = 131072 * 4096 / 6.455e-3  # 83.2e9 elements/s: 333 GB/s read and written, 7% of the H200's 4.8 TB/s
_SM90_MASKED_FILL = (2 * 131072 * 4096 * 2 + 131072) / 2.524e-3  # 851 GB/s
_H100 = KernelRates("H100", 132, _SM90_BF16, _SM90_FP8_CUBLAS, 562e12, 500e12, 390.0, _H100_HBM,
                    _FLOOR, 321e9, _NIC_NDR, _LATENCY, gemm_fp8_deepgemm=_SM90_FP8, attention_fa2=_H100_FA2, attention_fa1=_H100_FA1,
                    deepep_dispatch=_DEEPEP_DISPATCH, deepep_combine=_DEEPEP_COMBINE,
                    # cuBLAS's sm_90 GEMMs are persistent, one block per SM (pytorch/pytorch#143988: 132 blocks on
                    # H100, each running several tiles; NVIDIA/cutlass#1921: cuBLAS's 4096^3 grid of 60 x 2 blocks),
                    # and sm_90's persistent schedulers are static (CUTLASS StaticPersistentTileScheduler)
                    gemm_schedule="persistent", index_select=_SM90_INDEX_SELECT, masked_fill_broadcast=_SM90_MASKED_FILL,
                    attention_seq_half_backward=780.0)  # the backward's own fit (benchmarks/fit_kernel_rates.py)
# H100 with XLA's short-run BF16 fit: for checks against sources that time a few iterations (layers, grouped GEMMs,
# MAMF), like for like (tests/helpers.py short_run_h100, benchmarks/te_layer_profiles.py, moe_layer_sources.py)
H100_SHORT_RUNS = replace(_H100, gemm_bf16=SM90_BF16_SHORT_RUNS)

PRESETS: dict[str, KernelRates] = {
    "H100": _H100,
    # the H100's compute and HBM; NVLink cut to 400 GB/s both ways: DeepEP's measured 153-158 GB/s on H800
    "H800": replace(_H100, name="H800", nvlink_bus=155e9),
    "H200": replace(_H100, name="H200", hbm=_H200_HBM),
    # sm_100: XLA's table (bf16; the floor); fp8: Azure's cuBLASLt FP8 table on GB200 after 10,000 warm-up
    # iterations (the B200's GPU at a higher power limit: an upper bound), peak fitted with sm_100's floor and
    # k_overhead 0 (not identified by its grid); attention: cudnn-frontend's SDPA training benchmark on B200 (cuDNN 9.13.1
    # and flash-attn 2.7.4, causal, head dim 128; tests/data/kernels/cudnn_frontend_sdpa.csv, fitted by
    # benchmarks/fit_kernel_rates.py); NVLink 5: XLA's sm_100_B200 collectives (all-gather / reduce-scatter /
    # all-to-all at 1-2 GiB: 601-642 GB/s); HBM and the kernel floor: NVIDIA/cccl#7391's B200 relu table (above)
    "B200": KernelRates("B200", 148, GemmRates(1579e12, 0.0, 5.25e-6), GemmRates(2972e12, 0.0, 5.25e-6),
                        1591e12, 1323e12, 2790.0, _B200_HBM, _B200_FLOOR, 620e9, _NIC_NDR, _LATENCY,
                        attention_seq_half_backward=3660.0,
                        attention_fa2=(452e12, 397e12, 1020.0, 2170.0),
                        # NVFP4: pytorch/ao#2427's B200 sweep (torch._scaled_mm -> cuBLASLt, 1024^3 .. 8192^3;
                        # tests/data/kernels/ao2427_b200_nvfp4.csv), peak fitted with sm_100's floor and k_overhead 0
                        gemm_fp4=GemmRates(5510e12, 0.0, 5.25e-6),
                        # sm_100: tiles taken dynamically (Cluster Launch Control, CUTLASS's sm_100 scheduler; docs/model.md)
                        gemm_schedule="dynamic"),  # fmt: skip
    # sm_80: Azure's A100-SXM4-80GB kernel measurements (cuBLASLt FP16 GEMMs after 10,000 warm-up iterations,
    # i.e. at sustained clocks: peak and k_overhead fitted, sm_90's floor as the table has no tiny shape;
    # NCCL all-reduce bus bandwidth by size over 8 GPUs, used as measured; the streaming "Mul" kernel, one
    # load and one store as gpu-benches' "scale", at 1.61 TB/s); FA2's forward+backward rate for both passes;
    # HDR 200 Gb/s NIC: half the NDR figure
    "A100": KernelRates("A100", 108, GemmRates(262.7e12, 67, 5.54e-6), None, 193e12, 193e12, 480.0,
                        1.61e12, _FLOOR, 230e9, _NIC_NDR / 2, _LATENCY,
                        nvlink_curve=_A100_ALL_REDUCE,
                        # sm_80: one block per tile, launched in waves (docs/model.md)
                        gemm_schedule="waves",
                        # Liger-Kernel's benchmark of torch.nn.Embedding's forward on A100-SXM4-80GB (FP32, 16,384 x
                        # 4,096 ids, triton do_bench; tests/data/kernels/liger_a100_embedding.csv): the median of its
                        # eight vocabulary sizes' medians, 0.85587 ms, for 67,108,864 elements; the masked fill: none
                        index_select=16384 * 4096 / 0.85587e-3),  # fmt: skip
}
# B200's attention tables (cudnn-frontend's, above) ran at free clock, each call followed by a sleep ten times its
# length "to avoid GPU throttling"; a training run is minutes of load, as the GEMM peaks are taken. flashinfer#2899:
# BF16 FA4 attention on a B200, 100 calls back to back, 1,450 TFLOP/s at its peak (calls 10-19) and 1,237 throttled
# (calls 70-79), its SM clock 1,965 -> ~1,580 MHz (tests/data/kernels/flashinfer2899_b200_sustained_attention.csv).
# The throughput ratio, not the clock's: attention lost 15% for a 20% lower clock. Hopper's and A100's tables state
# no clock and no sustained attention figure was reached for them (docs/model.md, "Attention under sustained load").
B200_ATTENTION_SUSTAINED = 1237 / 1450
# B200 with the free-clock attention its table measured: for checks against that table, like for like
B200_FREE_CLOCK = PRESETS["B200"]
PRESETS["B200"] = sustained_attention(B200_FREE_CLOCK, B200_ATTENTION_SUSTAINED)
# GB200 (NVL72): the B200's GPU at a higher power limit (1,200 W against 1,000), so B200's measured rates with the rack's
# 72-GPU NVLink domain (docs/model.md, "GB200 NVL72"). A GB200 measurement: the FP8 GEMMs (Azure's table is GB200's).
# B200's, checked on GB200: the BF16 GEMMs (gpu-fryer's GB200-NVL72 burn, ~1,550 TFLOP/s: the fit 0.9% above it on 152 SMs).
# B200's carried over: attention until s19m (GB200's own since: below, after GB300's), HBM and the kernel
# floor (cccl#7391; GB200's HBM3e is the same 8 TB/s), NCCL's NVLink bus (XLA's 8-GPU sm_100_B200 table; the one
# 72-GPU figure reached, coreweave/nccl-tests#43's all-reduce, is not below it at 1-2 GiB), the NIC (a 400 Gb/s CX7 a GPU)
# s18k (docs/model.md, "GB200's SM count (s18k)"): GB200's own SM count and so its own FP8 fit. SMs: 152 as the device
# reports them (B200: 148): microsoft/mscclpp @ 4e137b7's resident tuning, measured on 32 GB200s and keyed on
# torch's multi_processor_count, "NVIDIA GB200", [10, 0], "sm_count": 152, its winners' grids 152 minus their SM margin;
# flashinfer @ 698aaf5 builds sm_100a kernels for 148- and 152-SM parts. FP8: Azure's GB200 table refitted at 152 SMs
# (benchmarks/fit_kernel_rates.py, the B200 fit's rows, floor and grid); B200 keeps the 148-SM fit of the same table.
GB200_SMS = 152
GB200_FP8_PEAK = 2976e12
PRESETS["GB200"] = replace(PRESETS["B200"], name="GB200", nvlink_domain=72, sms=GB200_SMS,
                           gemm_fp8=replace(PRESETS["B200"].gemm_fp8, peak=GB200_FP8_PEAK))
# GB300 (NVL72): the Blackwell Ultra GPU in the GB200's rack (docs/model.md, "GB300 NVL72"). GB300's own figures: the
# NIC (one 800 Gb/s ConnectX-8 a GPU: the NDR figure's 47 of 50 GB/s, doubled; assumed, no XDR nccl-tests figure was
# reached: docs/searches.md, "GB300's NIC and NVFP4 rates") and its NVFP4 GEMMs: cuBLASLt's NVFP4 GEMM measured on a
# GB300 at 8192^3 (torch._scaled_mm, 130.5 us, a 12-run median: cfregly/ai-performance-engineering @ 66f6307
# docs/gb300-nvfp4-dual2sm.md; tests/data/kernels/gb300_nvfp4_cublaslt.csv), peak fitted to it with the B200 fit's
# floor and k_overhead 0 (one shape: the fit's shape across sizes is B200's). It replaced (s17l) an assumption, B200's
# peak x the datasheets' 15,000 / 10,000 dense FP4 (GB300_FP4_OVER_GB200, kept for the tests' comparison), 6% slow
# there (7% on 148 SMs). The rest is GB200's carried over: BF16 GEMMs (the same 2,500 dense peak), HBM (8 TB/s both),
# the floor, NVLink 5; attention was too until s19k (below).
# s18f (docs/model.md, "GB300: SMs, FP8 and the NIC (s18f)"): GB300's own SM count and FP8 GEMMs.
# SMs: 152 as the device reports them (the die has 160, NVIDIA's Blackwell Ultra blog): flashinfer-ai/flashinfer @ f2230d7
# (#5850) prints "NVIDIA GB300", its uuid, "152 SMs" beside "NVIDIA B200 ... 148 SMs"; on the GB300 tray that measured the
# GEMMs, ncu saw a persistent grid sized from the SM count at 304 = 152 x 2 and 152 x 1 (cfregly/ai-performance-engineering
# @ a39905e code/docs/gb300-fp8-dual2sm.md). The NVFP4 peak is refitted with them (8192^3 at 130.5 us: 8,880 -> 8,796).
GB300_SMS = 152
# FP8: cuBLASLt's FP8 GEMM measured on that GB300 (torch._scaled_mm, e4m3 x e4m3 -> fp16, unit per-tensor scales; the
# same document): seven figures at 8192^3 (six 12-16-rep interleaved session medians and a cold sweep's), their median
# 283.1 us, the peak fitted to it as the NVFP4 one (B200's floor, k_overhead 0; tests/data/kernels/gb300_fp8_cublaslt.csv).
# Both short-run peaks are checks since s20b (below)
GB300_FP8_SHORT_RUN_PEAK = 3965e12
GB300_FP4_OVER_GB200 = 15000 / 10000
GB300_NVFP4_SHORT_RUN_PEAK = 8796e12
# s20b (docs/model.md, "GB300's GEMMs under sustained load (s20b)"): both short-run peaks above (kept for the checks
# against their tables) give way to Azure's cuBLASLt tables on an ND GB300 v6 after 10,000 warm-up iterations, the
# benchmark B200's and GB200's FP8 rate comes from (egmsft/AI-benchmarking-guide @ 18e80a2; tests/data/kernels/
# azure_gb300.csv), fitted by benchmarks/fit_kernel_rates.py as GB200's: 152 SMs, sm_100's floor, k_overhead 0, the rows
# whose FLOPs at the datasheet's rate outlast the floor (4096^3 and up, 6144 x 12288^2, 802816 x 192 x 768)
GB300_FP8_PEAK = 3415e12  # 8192^3 sustained 3,286.3 TFLOP/s against the short runs' 3,884: 0.846
GB300_NVFP4_PEAK = 8322e12  # 8192^3 sustained 8,155.9 against the short runs' 8,427: 0.968
PRESETS["GB300"] = replace(PRESETS["GB200"], name="GB300", sms=GB300_SMS, nic_bus=2 * _NIC_NDR,
                           gemm_fp8=replace(PRESETS["GB200"].gemm_fp8, peak=GB300_FP8_PEAK),
                           gemm_fp4=replace(PRESETS["GB200"].gemm_fp4, peak=GB300_NVFP4_PEAK))
# s19k (docs/model.md, "Attention on Blackwell Ultra (s19k)"): GB300's own attention, B200's until then. cudnn-frontend's
# SDPA training benchmark on an "NVIDIA GB300" (@ 0b1577c artifacts/sdpa_bf16_benchmark_results_NVIDIA_GB300.csv): the
# B200 table's script, software (NGC 25.09, cuDNN 9.13.1, flash-attn 2.7.4) and shapes, free clock; fitted by
# benchmarks/fit_kernel_rates.py as B200's (512-16,384 tokens, a host cost per series not charged;
# tests/data/kernels/cudnn_frontend_sdpa.csv, gb300_913). (forward, backward, seq_half, seq_half backward):
GB300_CUDNN_FREE_CLOCK = (1733e12, 1485e12, 220.0, 2380.0)
GB300_FA2_FREE_CLOCK = (470e12, 373e12, 300.0, 350.0)
# at B200's sustained share (no Blackwell Ultra attention timed under load was reached)
GB300_FREE_CLOCK = replace(PRESETS["GB300"], attention_forward=GB300_CUDNN_FREE_CLOCK[0],
                           attention_backward=GB300_CUDNN_FREE_CLOCK[1], attention_seq_half=GB300_CUDNN_FREE_CLOCK[2],
                           attention_seq_half_backward=GB300_CUDNN_FREE_CLOCK[3], attention_fa2=GB300_FA2_FREE_CLOCK)
PRESETS["GB300"] = sustained_attention(GB300_FREE_CLOCK, B200_ATTENTION_SUSTAINED)
# s19m (docs/model.md, "GB200's attention (s19m)"): GB200's own attention, B200's until then. No GB200 table of the B200
# table's software (cuDNN 9.13.1) was published and no run timed both GPUs; GB300 ran with each. GB200 / B200 at
# 16,384 tokens (the fitted range's longest, where the 9.13.1 table's host cost is under 3% of a call), per library and
# pass, is the product of two same-run, same-shape ratios (Llama 3.1 405B's heads, batch 1, causal, BF16, free
# clock):
# GB300 / B200, cudnn-frontend @ 0b1577c (cuDNN 9.13.1, CUDA events; cudnn_frontend_sdpa.csv b200_913, gb300_913), and
# GB200 / GB300, cudnn-frontend @ b372d39 (cuDNN 9.17.0, kernel time; tests/data/kernels/cudnn_frontend_gb200.csv).
# The curves' shape stays B200's: GB200 is the B200's die (sm_100, 152 SMs against 148, 1,200 W against 1,000), GB300 is
# not (sm_103). flash-attn 2: Dao's flash_attn_func at 9.13.1, PyTorch's flash-attn 2 kernels at 9.17 (Dao's not run
# there). Then B200's sustained share (no GB200 attention timed under load was reached). (forward, backward):
GB200_OVER_B200_CUDNN = (6.602 / 5.167 * 4.448 / 5.273, 20.460 / 17.345 * 15.721 / 16.863)
GB200_OVER_B200_FA2 = (20.690 / 18.936 * 20.296 / 20.445, 65.324 / 59.595 * 61.516 / 62.397)
GB200_FREE_CLOCK = replace(PRESETS["GB200"],
                           attention_forward=B200_FREE_CLOCK.attention_forward * GB200_OVER_B200_CUDNN[0],
                           attention_backward=B200_FREE_CLOCK.attention_backward * GB200_OVER_B200_CUDNN[1],
                           attention_fa2=(B200_FREE_CLOCK.attention_fa2[0] * GB200_OVER_B200_FA2[0],
                                          B200_FREE_CLOCK.attention_fa2[1] * GB200_OVER_B200_FA2[1],
                                          *B200_FREE_CLOCK.attention_fa2[2:]))  # fmt: skip
PRESETS["GB200"] = sustained_attention(GB200_FREE_CLOCK, B200_ATTENTION_SUSTAINED)
# B300 (HGX B300, s18m; docs/model.md, "HGX B300 (s18m)"): the Blackwell Ultra GPU (GB300's die, sm_103) on an 8-GPU HGX
# board at 1,100 W (GB300: 1,400 W), so GB300's short-run GEMM figures are not carried over. B300's own:
# SMs: 148 as the device reports them (ademeure/QuickRunCUDA @ b913c35 MICROBENCH_RESULTS_GPU1.md, "NVIDIA B300 SXM6 AC",
# "SMs | 148"; the same repository's b300_clean/B300_TRUE_REFERENCE.md @ fdfb34c: "148 SMs", "TDP 1100 W").
B300_SMS = 148
# GEMMs: Transformer Engine's GEMM profiling guide on a B300 (NVIDIA/TransformerEngine @ 8f2e635
# docs/examples/gemm_profiling/gemm_profiling.rst, "GEMM Benchmark (Model Config Mode) on NVIDIA B300 SXM6 AC":
# benchmarks/gemm/benchmark_gemm.py, CUDA events over 100 calls after 10 warm-up, randn operands): a layer's 12 GEMMs
# (hidden 4,096, FFN 16,384, M = 15,872 tokens: 19.17 TFLOP) per precision and pass. Each peak is fitted to the
# forward's four GEMMs (s21j: the backward's two passes take their measured factors, BACKWARD_GEMMS below) with B200's
# floor (5.25 us) and no K overhead (the GB300 fits'): peak = sum(2mnk / efficiency) / (fprop sum - 4 floors).
# BF16: torch.matmul, the mean of its two runs (4.196 and 4.250 ms: the same kernels; no quantisation in either); FP8:
# per-tensor current scaling, pre-quantized (tex.generic_gemm, kernel only), 2.158 ms; NVFP4: pre-quantized, 1.254 ms
# (tests/data/kernels/te_gemm_profiling_b300.csv, tests/test_b300_preset.py). Sustained-state figures: the script
# runs 5 s of matmuls first, then every shape and precision back to back (s19a: QuickRunCUDA's 8192^3 cuBLAS, 25% / 36%
# above, is the fastest single call at the boost clock; its long NVFP4 runs hold 0.79-0.87 of such: docs/model.md).
# The guide's per-pass sums, ms (fprop, dgrad, wgrad), pre-quantized; BF16 the mean of its two runs:
B300_PASSES = {"bf16": ((4.196 + 4.250) / 2, (4.290 + 4.434) / 2, (4.272 + 4.418) / 2),
               "fp8": (2.158, 2.329, 2.325), "fp4": (1.254, 1.305, 1.205)}  # fmt: skip
B300_BF16_PEAK = 1531.7e12
B300_FP8_PEAK = 3011.7e12
B300_NVFP4_PEAK = 5219.8e12
# HBM: a copy kernel (one load, one store a value) on that B300 at its largest size, 4 GiB copied in 1.2401 ms: 6,927 GB/s
# read + written (QuickRunCUDA MICROBENCH_RESULTS_GPU1.md, section 1.4), as B200's cccl relu at its largest.
B300_HBM = 6.927e12
# Carried over from B200 (the HGX board, not the rack): the kernel floor (cccl#7391), NCCL's NVLink bus (XLA's 8-GPU sm_100_B200 table; no
# nccl-tests figure on a B300 board was reached); from GB300: the NIC, one 800 Gb/s ConnectX-8 a GPU (assumed 94 GB/s).
PRESETS["B300"] = replace(PRESETS["B200"], name="B300", sms=B300_SMS, hbm=B300_HBM, nic_bus=2 * _NIC_NDR,
                          gemm_bf16=replace(PRESETS["B200"].gemm_bf16, peak=B300_BF16_PEAK),
                          gemm_fp8=replace(PRESETS["B200"].gemm_fp8, peak=B300_FP8_PEAK),
                          gemm_fp4=replace(PRESETS["B200"].gemm_fp4, peak=B300_NVFP4_PEAK))
# s19k: B300's attention is GB300's free-clock curves x B300 / GB300 measured like for like: cudnn-frontend's
# autoregressive-DiT SDPA (9 heads of 128, 4,096 and 8,192 queries on 62,208 keys, no mask, BF16 forward, cuDNN):
# GB300 0.579 / 1.147 ms (@ 9fcc4d9, cuDNN 9.23), "NVIDIA B300 SXM6 AC" 0.588 / 1.175 ms (@ c9532e4, cuDNN 9.30), the mean
# of the two ratios (tests/data/kernels/cudnn_frontend_ar_dit_blackwell_ultra.csv). No backward was timed on both: the
# backward takes the forward's ratio (assumed). Then B200's sustained share, as GB300's.
B300_OVER_GB300_ATTENTION = (0.579 / 0.588 + 1.147 / 1.175) / 2
B300_FREE_CLOCK = sustained_attention(replace(PRESETS["B300"], attention_forward=GB300_FREE_CLOCK.attention_forward,
                                              attention_backward=GB300_FREE_CLOCK.attention_backward,
                                              attention_seq_half=GB300_CUDNN_FREE_CLOCK[2],
                                              attention_seq_half_backward=GB300_CUDNN_FREE_CLOCK[3],
                                              attention_fa2=GB300_FA2_FREE_CLOCK), B300_OVER_GB300_ATTENTION)
PRESETS["B300"] = sustained_attention(B300_FREE_CLOCK, B200_ATTENTION_SUSTAINED)

# s21j (docs/model.md, "The backward's GEMMs at their measured pass ratios (s21j)"): a linear's input-gradient (dgrad)
# and weight-gradient (wgrad) GEMMs against its forward's, as Transformer Engine's GEMM profiling guide measured them
# (NVIDIA/TransformerEngine @ 8f2e635 docs/examples/gemm_profiling/gemm_profiling.rst, #2863;
# benchmarks/gemm/benchmark_gemm.py): one layer's four linears, (M, K, N) as the guide writes them, each pass's shapes
# timed as forward GEMMs of those shapes back to back; per pass the sum. Per GPU family and precision, the factor is the
# measured dgrad / fprop (wgrad / fprop) over the tile model's own ratio at those shapes on the GPU measured
# (gemm.measured_passes): Blackwell from the B300 (sm_103) run, taken for every Blackwell part (sm_100 B200 and GB200
# too: assumed); Hopper from the H200 NVL run (the H200 preset's tile model; H100 and H800 the same die). A100: none
# measured (1). FP8: per-tensor current scaling pre-quantized, the cuBLASLt kernel delayed scaling runs too (the guide's
# delayed rows are autocast, quantisation inside); NVFP4: pre-quantized; BF16: the mean of its two runs. DeepGEMM's FP8
# table (model.fp8_gemm = "deepgemm") keeps 1: a different library, not the one timed.
TE_GUIDE_SHAPES = ((15872, 4096, 12288), (15872, 4096, 4096), (15872, 4096, 16384), (15872, 16384, 4096))
H200_NVL_PASSES = {"bf16": ((10.653 + 10.632) / 2, (10.813 + 10.747) / 2, (10.548 + 10.530) / 2),
                   "fp8": (5.577, 5.661, 5.547)}  # fmt: skip
FAMILIES = {"B300": (B300_PASSES, ("B200", "GB200", "GB300", "B300")), "H200": (H200_NVL_PASSES, ("H100", "H800", "H200"))}
PRECISION_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1 / 16}  # an operand element: NVFP4's value and its block's scale


def _measured_passes(measured_on: KernelRates, passes: dict) -> dict[str, GemmRates]:
    """The GEMM rates of ``measured_on`` per precision with the factors ``passes`` (fprop, dgrad, wgrad sums) give."""
    return {p: measured_passes(getattr(measured_on, f"gemm_{p}"), sums, TE_GUIDE_SHAPES, measured_on.sms,
                               measured_on.hbm, PRECISION_BYTES[p]) for p, sums in passes.items()}  # fmt: skip


# per measured GPU and precision, (dgrad, wgrad) factors
BACKWARD_GEMMS = {gpu: {p: (g.dgrad, g.wgrad) for p, g in _measured_passes(PRESETS[gpu], passes).items()}
                  for gpu, (passes, _) in FAMILIES.items()}  # fmt: skip
for _gpu, (_, _members) in FAMILIES.items():
    for _name in _members:
        _r = PRESETS[_name]
        PRESETS[_name] = replace(_r, **{f"gemm_{p}": replace(getattr(_r, f"gemm_{p}"), dgrad=d, wgrad=w)
                                        for p, (d, w) in BACKWARD_GEMMS[_gpu].items()
                                        if getattr(_r, f"gemm_{p}") is not None})  # a precision the GPU lacks: none
