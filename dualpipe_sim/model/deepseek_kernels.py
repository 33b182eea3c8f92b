"""The kernels of one DeepSeek-V3 MoE layer as DeepSeek's own runtime runs them (``model.fp8_gemm = "deepgemm"``).

Kernel LIST only: which kernels run, in which [chunk] component, on what shapes and in what precision, as
the kernel names and launch grids of DeepSeek's profile (deepseek-ai/profile-data ``train.json``, one
overlapped forward+backward pair of 4 MoE layers, EP64, H800) show them (docs/validation.md, "Which kernels
DeepSeek's step runs").  Every time comes from the same rates as every other kernel (tile/wave GEMMs on
DeepGEMM's table, flash attention's table, bytes over the achievable HBM bandwidth, the per-kernel floor,
collectives); no time or rate is taken from the profile.

What differs from the Megatron-core / Transformer Engine list (kernels.py):

* every FP8 linear casts its own bf16 input per token (1 x 128 scales) and transposes the scales (two
  kernels); norms write bf16.  The backward transposes each FP8 weight for its dgrad GEMM and casts the
  output gradient per token (dgrad) and per channel, transposed (wgrad), and the input per channel;
* the attention output is cached for the backward in a 12-bit format (E5M6, DeepSeek-V3 report Sec. 3.3)
  by its own cast kernel, and cast back in the backward; MLA's K (k_nope with the shared rope key on every
  head) and V are copied into contiguous tensors for the flash attention;
* the residual add and the pre-MLP RMSNorm are one kernel; it, the router and the FP8 cast of the tokens
  to dispatch run in attn(F), the router's backward in attn(B);
* DeepEP sends the FP8 tokens without a permute; the received rows are expanded by local expert with their
  scales and reduced back (weighted) in one kernel each; the SwiGLU is fused with the routing weight and
  the FP8 cast; the SwiGLU inputs are cached in FP8 (report Sec. 3.3) and cast back in the backward;
* the experts' weight gradients are one GEMM per expert (not grouped), on two streams, accumulating into
  the fp32 main gradient like every wgrad GEMM here (DeepGEMM-style "acc" kernels: fp32 read and written);
* DeepEP's layout and notify kernels beside each all-to-all; the output gradient cast to FP8 before the
  backward dispatch.

Rows are counted per the expanded copies (n x k rows) where the profile's received rows are fewer (a
token reaching a rank once for several of its experts): an upper bound on those few memory-bound kernels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # kernels.py calls this module; the Table is only passed in
    from .kernels import Table

SCALE = 4 / 128  # one fp32 scale per 128 values (1 x 128 tiles, DeepSeek-V3 report Sec. 3.3.2)
ROW_CAST = 2 + 1 + SCALE  # bf16 read, FP8 + scales written
FP8_ROW = 1 + SCALE  # an FP8 row with its scales
E5M6 = 1.5  # the attention output's cached format: 12 bits (report Sec. 3.3)
WGRAD_OUT = 8.0  # an fp32 main gradient read and written by an accumulating wgrad GEMM
WGRAD_STREAMS = 2  # the profile's expert wgrad GEMMs alternate between two streams
# Launches of the router's gating (sigmoid, group-limited top-k, normalised weights, the sequence-wise aux
# statistics), each a small PyTorch kernel: counted in the profile's attn(F) and attn(B), one layer.
GATING_FORWARD_KERNELS = 37
GATING_BACKWARD_KERNELS = 26


def linear(tb: Table, name: str, comp: str, m: int, n: int, k: int) -> None:
    """An FP8 linear's forward: the per-token cast of its bf16 input (+ its scales' transpose), the GEMM."""
    tb.memory(f"{name} input cast", comp, m * k * ROW_CAST, launches=2)
    tb.gemm(name, comp, m, n, k)


def linear_backward(tb: Table, name: str, comp: str, wcomp: str, m: int, n: int, k: int, saved_bytes: float) -> None:
    """dgrad (weight transposed, gradient cast per token) and wgrad (gradient and input cast per channel,
    transposed; the input read at ``saved_bytes`` per value) of an m x n x k FP8 linear."""
    tb.memory(f"{name} weight transpose (dgrad)", comp, 2.0 * n * k)
    tb.memory(f"{name} grad cast", comp, m * n * ROW_CAST, launches=2)
    tb.gemm(f"{name} dgrad", comp, m, k, n)
    tb.memory(f"{name} grad cast, per channel (wgrad)", comp, m * n * ROW_CAST)
    tb.memory(f"{name} input cast, per channel (wgrad)", comp, m * k * (saved_bytes + FP8_ROW))
    wgrad(tb, f"{name} wgrad", wcomp, k, n, m)


def wgrad(tb: Table, name: str, comp: str, m: int, n: int, k: int, groups: int = 1) -> None:
    tb.gemm(name, comp, m, n, k, groups=groups, out_bytes=WGRAD_OUT)


def moe_layer(tb: Table) -> None:
    """Every kernel of one MLA + MoE layer, recompute "deepseek" (norms and MLA up-projections rerun)."""
    cfg, lay = tb.cfg, tb.lay
    n, h, ab, a = lay.tokens, cfg.hidden_size, lay.act_bytes, cfg.num_heads
    ql, kl, r, v = cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.v_head_dim
    d, nope = cfg.qk_head_dim, cfg.qk_head_dim - cfg.qk_rope_head_dim
    E, k, fe, fs = cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size, cfg.shared_intermediate_size
    local = max(1, E // lay.expert)
    m = max(1, round(n * k * lay.expert / E))  # rows per local expert, balanced routing
    rows = n * k
    core = 2.0 * n * lay.seq * a * (d + v) * 0.5  # causal
    F, B, W = "attn_forward", "attn_backward_input", "attn_backward_weight"

    def latent_and_up(comp: str, suffix: str = "") -> None:
        tb.memory(f"q latent norm{suffix}", comp, n * ql * 2 * ab)
        tb.memory(f"kv latent norm{suffix}", comp, n * kl * 2 * ab)
        tb.memory(f"latent copies{suffix}", comp, 2 * n * (ql + kl) * ab, launches=2)
        linear(tb, f"q_up{suffix}", comp, n, a * d, ql)
        linear(tb, f"kv_up{suffix}", comp, n, a * (nope + v), kl)
        tb.memory(f"rope, shared key{suffix}", comp, n * r * 2 * ab)
        tb.memory(f"K assembly (k_nope + rope key per head){suffix}", comp, n * a * (nope + d) * ab + n * r * ab)
        tb.memory(f"V made contiguous{suffix}", comp, 2 * n * a * v * ab)
        tb.memory(f"rope, queries{suffix}", comp, n * a * r * 2 * ab)

    # -- attn(F): attention, then the MoE layer's norm, router and the FP8 tokens to dispatch
    tb.memory("input norm", F, n * h * 2 * ab)
    linear(tb, "q_down", F, n, ql, h)
    linear(tb, "kv_down", F, n, kl + r, h)
    latent_and_up(F)
    tb.attention("flash attention", F, core, backward=False)
    tb.memory("attention output cache cast (E5M6)", F, n * a * v * (ab + E5M6 + SCALE))
    linear(tb, "out_proj", F, n, h, a * v)
    tb.memory("out_proj output scale", F, 2 * n * h * ab)
    tb.memory("residual add + pre-mlp norm (fused)", F, 4 * n * h * ab)
    tb.gemm("router", F, n, E, h, fp8=False)
    tb.memory("router gating", F, n * E * 4 * 3, launches=GATING_FORWARD_KERNELS)
    tb.memory("dispatch input cast", F, n * h * ROW_CAST)

    # -- mlp(F): shared expert beside the routed experts' rows
    M, MB, MW = "mlp_forward", "mlp_backward_input", "mlp_backward_weight"
    tb.memory("shared expert fc1 scales transpose", M, n * h / 128 * 4 * 2)
    tb.gemm("shared expert fc1", M, n, 2 * fs, h)
    tb.memory("expert counts + mapping", M, rows * 4 * 2, launches=2)
    tb.memory("sort by local expert (expand with scales)", M, 2 * rows * h * FP8_ROW)
    tb.memory("experts fc1 weight transpose", M, 2.0 * local * 2 * fe * h)
    tb.experts("experts fc1 (grouped)", M, m, 2 * fe, h, local)
    tb.memory("experts swiglu + routing weight + cast (fused)", M, rows * (2 * fe * ab + fe * FP8_ROW))
    tb.memory("experts fc2 weight transpose", M, 2.0 * local * fe * h)
    tb.experts("experts fc2 (grouped)", M, m, h, fe, local)
    tb.memory("unsort + weighted sum (reduce)", M, rows * h * ab * 2)
    tb.memory("shared expert swiglu + cast (fused)", M, n * (2 * fs * ab + fs * FP8_ROW))
    tb.memory("shared expert fc2 scales transpose", M, n * fs / 128 * 4 * 2)
    tb.gemm("shared expert fc2", M, n, h, fs)
    tb.memory("experts swiglu input cache cast", M, rows * 2 * fe * ROW_CAST)
    tb.memory("shared expert swiglu input cache cast", M, n * 2 * fs * ROW_CAST)

    # -- mlp(B): shared fc2, routed experts, shared fc1 (the profile's order)
    tb.memory("shared expert swiglu input cast back", MB, n * 2 * fs * (FP8_ROW + ab))
    tb.memory("shared expert fc2 weight transpose (dgrad)", MB, 2.0 * h * fs)
    tb.memory("shared expert fc2 output grad scales transpose", MB, n * h / 128 * 4 * 2)  # its dgrad's input
    tb.gemm("shared expert fc2 dgrad", MB, n, fs, h)
    tb.memory("shared expert fc2 grad cast, per channel (wgrad)", MB, n * h * ROW_CAST)
    tb.memory("shared expert swiglu recompute + cast, per channel", MB, n * (2 * fs * ab + fs * FP8_ROW))
    tb.memory("shared expert swiglu backward", MB, n * 5 * fs * ab)
    tb.memory("experts swiglu input cast back", MB, rows * 2 * fe * (FP8_ROW + ab))
    tb.memory("sort received grads by local expert (expand)", MB, 2 * rows * h * FP8_ROW)
    tb.experts("experts fc2 dgrad (grouped)", MB, m, fe, h, local)
    tb.memory("experts swiglu recompute + backward (routing weight)", MB, rows * 5 * fe * ab)
    tb.memory("routing weight gradient", MB, rows * 2 * fe * ab)
    tb.memory("experts swiglu output cast, per channel (wgrad)", MB, rows * fe * ROW_CAST)
    tb.memory("pre-mlp norm (recompute)", MB, n * h * 2 * ab)
    tb.memory("experts fc1 grad cast", MB, rows * 2 * fe * ROW_CAST)
    tb.experts("experts fc1 dgrad (grouped)", MB, m, h, 2 * fe, local)
    tb.memory("unsort grads (reduce)", MB, rows * h * ab * 2)
    tb.memory("experts fc1 grad cast, per channel (wgrad)", MB, rows * 2 * fe * ROW_CAST)
    tb.memory("shared expert fc1 weight transpose (dgrad)", MB, 2.0 * 2 * fs * h)
    tb.memory("shared expert fc1 grad cast", MB, n * 2 * fs * ROW_CAST, launches=2)
    tb.gemm("shared expert fc1 dgrad", MB, n, h, 2 * fs)
    tb.memory("shared expert fc1 grad cast, per channel (wgrad)", MB, n * 2 * fs * ROW_CAST)
    tb.memory("pre-mlp norm output cast, per channel (wgrad)", MB, n * h * ROW_CAST)

    # -- mlp(W): one GEMM per expert on two streams, the shared expert's two
    wgrad(tb, "shared expert fc2 wgrad", MW, fs, h, n)
    # the experts' inputs and fc2 output gradients arrive in FP8 (DeepEP): requantised per channel
    tb.memory("expert inputs + fc2 grads cast, per channel (wgrad)", MW, 2 * rows * h * 2 * FP8_ROW, launches=2)
    kept = tb.lay
    tb.lay = replace(kept, expert_streams=WGRAD_STREAMS)
    tb.experts("experts fc1 wgrad (per expert)", MW, h, 2 * fe, m, local, out_bytes=WGRAD_OUT)
    tb.experts("experts fc2 wgrad (per expert)", MW, fe, h, m, local, out_bytes=WGRAD_OUT)
    tb.lay = kept
    wgrad(tb, "shared expert fc1 wgrad", MW, h, 2 * fs, n)

    # -- attn(B): the router's backward, out_proj, recompute, attention backward, the input projections
    tb.memory("router gating backward", B, n * E * 4 * 3, launches=GATING_BACKWARD_KERNELS)
    tb.gemm("router dgrad", B, n, h, E, fp8=False)
    tb.gemm("router wgrad", B, h, E, n, fp8=False)
    tb.memory("residual grad add", B, 3 * n * h * ab)
    tb.memory("pre-mlp norm backward", B, 4 * n * h * ab, launches=2)
    tb.memory("out_proj output scale backward", B, 2 * n * h * ab)
    tb.memory("attention output cast back (E5M6)", B, n * a * v * (E5M6 + SCALE + ab))
    linear_backward(tb, "out_proj", B, W, n, h, a * v, ab)
    latent_and_up(B, " (recompute)")
    tb.attention("flash attention backward", B, 2.5 * core, backward=True)
    tb.memory("flash attention backward pre/post-processing", B, n * a * (v * 2 * ab + d * (4 + ab)), launches=2)
    tb.memory("rope backward, queries", B, n * a * r * 2 * ab)
    tb.memory("rope key gradient sum over heads", B, n * a * r * ab + n * r * ab)
    tb.memory("rope backward, shared key", B, n * r * 2 * ab)
    tb.memory("dK, dV into the kv_up gradient", B, 2 * n * a * (nope + v) * ab, launches=2)
    linear_backward(tb, "q_up", B, W, n, a * d, ql, ab)
    linear_backward(tb, "kv_up", B, W, n, a * (nope + v), kl, ab)
    tb.memory("latent norms backward", B, 4 * n * (ql + kl) * ab, launches=4)
    tb.memory("kv_down output gradient assembly", B, 2 * n * (kl + r) * ab * 2, launches=5)
    tb.memory("input norm (recompute)", B, n * h * 2 * ab)
    linear_backward(tb, "kv_down", B, W, n, kl + r, h, ab)
    linear_backward(tb, "q_down", B, W, n, ql, h, ab)
    tb.memory("input gradient sum", B, 3 * n * h * ab)
    tb.memory("input norm backward", B, 4 * n * h * ab, launches=2)

    # -- DeepEP's layout and notify kernels and the gradient's FP8 cast (the all-to-alls: kernels.py)
    tb.memory("dispatch layout", "dispatch_forward", n * k * 8 + n * E / 8)
    tb.memory("grad cast (FP8 dispatch)", "combine_backward", n * h * ROW_CAST)
    for comp in ("combine_forward", "dispatch_backward", "combine_backward"):
        tb.comm("cached notify", comp, "all_gather", E * 8.0 * lay.expert, lay.expert,
                tb.group("ep").link)  # fmt: skip
