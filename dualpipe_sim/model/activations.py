"""Activation bytes one layer saves for its backward pass, per micro-batch, by recompute policy.

Counting follows Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models" (Sec. 4): every tensor a layer's backward reads is
listed once, 16-bit unless said otherwise, dropout masks 1 byte per element.
For a GPT layer (LayerNorm, GeLU FFN of 4h, dropout, attention scores
materialised) the list sums to s*b*h*(34 + 5*a*s/h) bytes; ``selective``
recomputes the attention core (softmax, its dropout, attention over V),
leaving 34*s*b*h; ``full`` keeps only each layer's input (2*s*b*h).

Modern families (every family but GPT-2) are counted with their own tensors:
flash attention (no s x s tensors: Q, K, V, the output and a float32
log-sum-exp per row), no dropout, SwiGLU (the gate and up outputs feed the
activation, its output feeds the down projection), GQA (K and V have
num_key_value_heads heads), MLA (the compressed latents and their norms), and
MoE (router probabilities in float32, each token's copy per routed expert).  A sliding-window layer
(gpt-oss) keeps what a full one keeps: flash attention holds no s x s tensor either way; its clamped
SwiGLU keeps the clamps' input too.
With flash attention ``selective`` frees only the log-sum-exp: Megatron-core
checkpoints the flash core too (recompute.core_attn_reruns).  ``deepseek`` is DeepSeek-V3's
policy (report Sec. 3.2.3): recompute every RMSNorm and the MLA
up-projections, so their outputs are not kept.  FP8 models (DeepSeek-V3) cache
the inputs of FP8 linears in FP8 (1 byte), the attention output in E5M6
(1.5 bytes), each with an fp32 scale per 128 values, and the MoE SwiGLU input
in FP8 with its output recomputed (report Sec. 3.3.1-3.3.3).  NVFP4 linears (``fp4``, Transformer Engine
release_v2.8) keep their inputs' NVFP4 copies instead (docs/model.md, "NVFP4 in memory").  Tensor parallelism with sequence parallelism divides
everything by ``tp``; without it (``sp=False``) the tensors outside the tensor-parallel regions (norm
inputs and outputs, residual dropout masks, MLA's latents, the router's input side, a checkpointed
layer input) are whole on every rank (Korthikanti et al. Sec. 4.2.2: ``s*b*h*(10 + 24/t)`` for GPT
with selective recompute).  ``modules`` (memory.recompute_modules, recompute.py): with ``selective``,
Megatron-core's modules: "core_attn" is the attention core above, "layernorm" frees the output of each norm that
is a module of its own (with Transformer Engine's layer spec the pre-MLP norm of an MoE layer and MLA's input norm;
the other norms are fused into the next linear), "moe_act" the routed experts' activation output (fc2's input),
"mlp" all a dense MLP keeps but its input, "moe" all an MoE layer keeps but its input, "mla_up_proj" MLA's
up-projected q, k and v.  docs/model.md walks through each count.
"""

from __future__ import annotations

from . import recompute
from .config import ModelConfig
from .kernels import NVFP4_BYTES

POLICIES = ("none", "selective", "full", "deepseek")
# FP8 (and E5M6, 12 bits) caches carry one fp32 scale per 1 x 128 tile (DeepSeek-V3 Sec. 3.3.1).
FP8_BYTES, E5M6_BYTES = 1.0 + 4 / 128, 1.5 + 4 / 128


# Without sequence parallelism these are whole on every tensor-parallel rank (not divided by tp).
OUTSIDE_TP = frozenset({
    "layer input (checkpoint)", "norm1 input", "qkv input (norm1 output)", "q input (norm1 output)",
    "q_a input (norm1 output)", "q latent (q_a_layernorm input)", "q_b input (q_a_layernorm output)",
    "kv latent + rope key (kv_a output)", "kv_b input (kv_a_layernorm output)",
    "attention residual dropout mask", "norm2 input", "mlp input (norm2 output)",
    "router probabilities (fp32)", "mlp dropout mask",
})  # fmt: skip


def layer(cfg: ModelConfig, i: int, s: int, b: int, policy: str = "none", act: float = 2.0,
          tp: int = 1, sp: bool = True, modules: tuple[str, ...] | None = None,
          legacy: bool = False, etp: int = 1, fp4: bool = False) -> dict[str, float]:  # fmt: skip
    """Saved tensors of layer ``i`` -> bytes, for ``s`` tokens x ``b`` sequences (``legacy``: model.runtime
    "megatron-lm-2021", whose selective recompute leaves a flash attention core alone: recompute.core_attn_reruns;
    ``etp``: parallel.expert_tensor; ``fp4``: model.fp4 = "nvfp4")."""
    h, a, kv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    mods = recompute.selected(policy, modules)
    moe = cfg.is_moe_layer(i)
    # "core_attn" and "moe" checkpoint the module whole (CheckpointFunction): only its inputs are kept
    core = recompute.core_attn_reruns(mods, cfg.eager_attention, legacy)
    up_proj = cfg.mla and "mla_up_proj" in mods  # the up-projected q, k, v freed (CheckpointWithoutOutput)
    # the checkpoint keeps the 16-bit latents (its inputs), not their FP8 copies the up-projections would cache
    lin = NVFP4_BYTES if fp4 else FP8_BYTES if cfg.fp8 else act  # what a linear's cached input costs
    # NVFP4: a linear keeps its input's column-wise copy (wgrad's operand) and drops the row-wise one, but a
    # LayerNormLinear whose input the backward all-gathers again (column-parallel under sequence parallelism) keeps
    # both (TE release_v2.8 layernorm_linear.py 403-412, linear.py 372-383; docs/model.md "NVFP4 in memory")
    gathered = 2 * NVFP4_BYTES if fp4 and sp and tp > 1 else lin
    latent = 0 if policy == "deepseek" else (act if up_proj else lin)
    # CheckpointWithoutOutput frees a norm's output: MLA's input norm and an MoE layer's pre-MLP norm are TENorm
    # modules; the others are fused into the next linear (IdentityOp: nothing to recompute)
    norm1_out = "layernorm" not in mods or not cfg.mla
    norm2_out = "layernorm" not in mods or not moe
    dense_mlp = not moe and "mlp" in mods  # the dense MLP checkpointed whole: only its input kept
    sb = s * b
    if policy == "full":
        return {"layer input (checkpoint)": act * sb * h / (tp if sp else 1)}
    drop_norm = policy == "deepseek"
    eager = cfg.eager_attention  # Korthikanti's setting: scores materialised (model.attention)
    out: dict[str, float] = {"norm1 input": act * sb * h}
    if cfg.mla:
        if cfg.q_lora_rank:
            out["q_a input (norm1 output)"] = 0 if drop_norm or not norm1_out else lin * sb * h
            out["q latent (q_a_layernorm input)"] = act * sb * cfg.q_lora_rank
            out["q_b input (q_a_layernorm output)"] = latent * sb * cfg.q_lora_rank
        else:
            out["q input (norm1 output)"] = 0 if drop_norm or not norm1_out else lin * sb * h
        out["kv latent + rope key (kv_a output)"] = act * sb * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        out["kv_b input (kv_a_layernorm output)"] = latent * sb * cfg.kv_lora_rank
        if not cfg.q_lora_rank:
            out["kv_a input"] = 0  # same tensor as the q input
        up = 0 if drop_norm or up_proj else act  # up-projection outputs: recomputed by deepseek and mla_up_proj
        out["q (up-projected)"] = up * sb * a * cfg.qk_head_dim
        out["k, v (up-projected)"] = up * sb * a * (cfg.qk_head_dim + cfg.v_head_dim)
    else:
        out["qkv input (norm1 output)"] = 0 if drop_norm else gathered * sb * h
        out["q, k"] = act * sb * (a + kv) * cfg.qk_head_dim
        out["v"] = act * sb * kv * cfg.v_head_dim
    if eager:
        out["softmax output"] = 0 if core else act * a * s * s * b
        if cfg.dropout:
            out["attention dropout mask"] = 0 if core else a * s * s * b
            out["attention dropout output"] = 0 if core else act * a * s * s * b
    else:
        out["softmax log-sum-exp (fp32)"] = 0 if core else 4.0 * sb * a  # flash keeps it unless checkpointed
    # NVFP4: the attention's own 16-bit output (its backward reads it) and the projection's NVFP4 copy
    out["o_proj input"] = (act + lin if fp4 else E5M6_BYTES if cfg.fp8 else act) * sb * a * cfg.v_head_dim
    if cfg.dropout:
        out["attention residual dropout mask"] = 1.0 * sb * h
    out["norm2 input"] = act * sb * h
    keep_norm2 = not (drop_norm or dense_mlp) and norm2_out
    out["mlp input (norm2 output)"] = (gathered if not moe else act) * sb * h if keep_norm2 else 0
    if moe:
        if "moe" not in mods:  # "moe": the MoE layer checkpointed whole keeps only its input, the norm2 output
            out.update(_moe_inside(cfg, sb, act, lin, mods, etp, fp4))
    elif cfg.ffn == "gelu":
        out["gelu input"] = 0 if dense_mlp else act * sb * cfg.intermediate_size
        out["fc2 input (gelu output)"] = 0 if dense_mlp else act * sb * cfg.intermediate_size
    elif cfg.ffn == "relu2":  # the fused squared_relu keeps its input, fc2 its own input (docs/model.md "Nemotron")
        out["squared ReLU input"] = 0 if dense_mlp else act * sb * cfg.intermediate_size
        out["fc2 input (squared ReLU output)"] = 0 if dense_mlp else act * sb * cfg.intermediate_size
    else:
        out["SwiGLU input (gate, up outputs)"] = 0 if dense_mlp else act * sb * 2 * cfg.intermediate_size
        out["down input (SwiGLU output)"] = 0 if dense_mlp else lin * sb * cfg.intermediate_size
    if cfg.dropout:
        out["mlp dropout mask"] = 1.0 * sb * h
    return {name: v / (tp if sp or name not in OUTSIDE_TP else 1) for name, v in out.items() if v}


def _moe_inside(cfg: ModelConfig, sb: int, act: float, lin: float, mods: frozenset[str],
                etp: int = 1, fp4: bool = False) -> dict[str, float]:  # fmt: skip
    """What an MoE layer's router and experts keep (before any tensor split).  At expert tensor parallelism ``etp``
    fc1 keeps the rows all-gathered over the ETP group, ``etp`` times its own; the SwiGLU's and fc2's inputs are
    ``etp`` times the rows on 1 / ``etp`` of the columns, the same bytes (kernels.moe_mlp_block)."""
    k, fe, h = cfg.experts_per_token, cfg.moe_intermediate_size, cfg.hidden_size
    out = {"router probabilities (fp32)": 4.0 * sb * cfg.num_experts,
           "routed expert inputs (k copies)": lin * k * sb * h * etp}  # fmt: skip
    if cfg.fp8 and not fp4:  # SwiGLU input cached in FP8, its output recomputed (DeepSeek-V3)
        out["routed SwiGLU inputs"] = FP8_BYTES * k * sb * 2 * fe
    else:
        out["routed SwiGLU inputs"] = act * k * sb * 2 * fe
        if cfg.swiglu_limit:  # gpt-oss: each clamp keeps its input, fc1's unclamped output (kernels.moe_mlp_block);
            # "moe_act" checkpoints the clamps with the activation, keeping only fc1's output (the SwiGLU inputs' place)
            out["routed SwiGLU clamp inputs (fc1 output)"] = 0 if "moe_act" in mods else act * k * sb * 2 * fe
        out["routed down inputs"] = 0 if "moe_act" in mods else lin * k * sb * fe  # fc2's copy (16-bit: act)
    if cfg.shared_intermediate_size:
        fs = cfg.shared_intermediate_size
        if cfg.fp8 and not fp4:
            out["shared-expert SwiGLU input"] = FP8_BYTES * sb * 2 * fs
        else:
            out["shared-expert SwiGLU input"] = act * sb * 2 * fs
            out["shared-expert down input"] = lin * sb * fs
    return out


def layer_total(cfg: ModelConfig, i: int, s: int, b: int, policy: str = "none", act: float = 2.0,
                tp: int = 1, sp: bool = True, modules: tuple[str, ...] | None = None,
                legacy: bool = False, etp: int = 1, fp4: bool = False) -> float:  # fmt: skip
    return float(sum(layer(cfg, i, s, b, policy, act, tp, sp, modules, legacy, etp, fp4).values()))


def embedding(cfg: ModelConfig, s: int, b: int, tp: int = 1, sp: bool = True) -> float:
    """The first stage's own activations: the embedding dropout mask (GPT-2); a lookup saves nothing else."""
    return (1.0 * s * b * cfg.hidden_size if cfg.dropout else 0.0) / (tp if sp else 1)


def head(cfg: ModelConfig, s: int, b: int, act: float = 2.0, tp: int = 1, sp: bool = True) -> float:
    """The last stage's own activations: final-norm input and output (whole on every rank without
    sequence parallelism), and the float32 logits the cross-entropy keeps, split over the vocabulary
    (Korthikanti et al. Sec. 4.3)."""
    return 2 * act * s * b * cfg.hidden_size / (tp if sp else 1) + 4.0 * s * b * cfg.vocab_size / tp


def mtp_module(cfg: ModelConfig, s: int, b: int, policy: str = "none", act: float = 2.0, tp: int = 1,
               sp: bool = True, modules: tuple[str, ...] | None = None, legacy: bool = False,
               etp: int = 1, fp4: bool = False) -> float:  # fmt: skip
    """One MTP module: its two norm inputs, the projection input, one layer and the shared head."""
    proj = 0.0 if policy in ("deepseek", "full") else act * s * b * 2 * cfg.hidden_size
    whole = tp if sp else 1  # norm inputs and the projection input sit outside tensor parallelism
    return (
        2 * act * s * b * cfg.hidden_size / whole
        + proj / whole
        + layer_total(cfg, cfg.num_layers, s, b, policy, act, tp, sp, modules, legacy, etp, fp4)
        + head(cfg, s, b, act, tp, sp)
    )
