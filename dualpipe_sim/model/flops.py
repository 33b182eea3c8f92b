"""FLOPs per token, forward and training, from a :class:`~.config.ModelConfig`.

Convention (Megatron-LM, Narayanan et al. 2021, "Efficient Large-Scale Language
Model Training on GPU Clusters", Sec. 5.1): a matmul of an (m x k) by a (k x n)
matrix is 2mkn FLOPs; only matmuls count (norms, activations, softmax and
biases do not); attention scores and attention-over-values count the full
s x s square (no causal halving); the backward pass is twice the forward
(input gradient + weight gradient), so training = 3 x forward without
recomputation.  For a GPT layer this gives Megatron's
72 B s l h^2 (1 + s/(6h) + V/(12 l h)) per iteration, i.e. 6N + 12 l s h per
token with N the non-embedding matmul parameters plus the head.
Chunked attention (Llama 4's RoPE layers) counts each chunk's square: a query
sees the keys of its own chunk only (attention_keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs per token of one layer, by component."""

    attn_linear: float  # projections (MLA: down and up projections)
    attn_core: float  # QK^T and attention-over-V against seq_length keys
    mlp: float  # dense FFN, or shared experts + router + the active routed experts
    up_projection: float = 0.0  # MLA q_b and kv_b part of attn_linear (recomputed by the deepseek policy)

    @property
    def total(self) -> float:
        return self.attn_linear + self.attn_core + self.mlp


def attention_weights(cfg: ModelConfig) -> tuple[int, int]:
    """(elements of all attention weight matrices, of MLA's up-projections alone)."""
    h, a, kv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    if cfg.mla:
        nope = cfg.qk_head_dim - cfg.qk_rope_head_dim
        q_up = cfg.q_lora_rank * a * cfg.qk_head_dim if cfg.q_lora_rank else 0
        q = h * cfg.q_lora_rank + q_up if cfg.q_lora_rank else h * a * cfg.qk_head_dim
        kv_up = cfg.kv_lora_rank * a * (nope + cfg.v_head_dim)
        total = q + h * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + kv_up + a * cfg.v_head_dim * h
        return total, q_up + kv_up
    return h * a * cfg.qk_head_dim + 2 * h * kv * cfg.qk_head_dim + a * cfg.v_head_dim * h, 0


def ffn_weights(cfg: ModelConfig, width: int) -> int:
    return cfg.ffn_matrices * cfg.hidden_size * width


def attention_keys(cfg: ModelConfig, i: int, s: int) -> float:
    """Keys per query of layer ``i`` at sequence length ``s``, in the full-square convention: ``s``; a sliding
    window's ``min(w, s)``; with chunked attention the square is block-diagonal, ``s // C`` chunks of ``C`` and one
    of ``s % C``, so ``(s // C) * C^2 + (s % C)^2`` over ``s`` queries (transformers' create_chunked_causal_mask);
    ``s <= C`` is one chunk, the square."""
    if cfg.window(i):  # a sliding window: at most its width (attended_keys)
        return float(attended_keys(cfg, i, s))
    C = cfg.attention_chunk
    if not cfg.chunked(i) or s <= C:
        return float(s)
    whole, rest = divmod(s, C)
    return (whole * C * C + rest * rest) / s


def attended_keys(cfg: ModelConfig, i: int, seq_length: int) -> int:
    """Keys the convention counts each query of layer ``i`` against: the whole sequence (no causal halving),
    or a sliding-window layer's window where that is shorter (a query sees at most ``window`` keys)."""
    w = cfg.window(i)
    return min(w, seq_length) if w else seq_length


def causal_keys(cfg: ModelConfig, i: int, seq_length: int) -> float:
    """Mean keys a query of layer ``i`` attends to in a causal call over ``seq_length`` tokens, as a flash kernel
    computes it: the lower triangle (s^2 / 2, the kernels' causal half) less the triangle beyond the window,
    (s^2 - (s - w)^2) / (2 s); s / 2 without a window or with one as long as the sequence."""
    s, w = seq_length, cfg.window(i)
    beyond = s - w if w and w < s else 0
    return (s * s - beyond * beyond) / (2 * s)


def layer(cfg: ModelConfig, i: int, seq_length: int) -> LayerFlops:
    weights, up = attention_weights(cfg)
    # gpt-oss's sink adds one logit per head and query to the softmax: no matmul, so nothing here
    core = 2 * attention_keys(cfg, i, seq_length) * cfg.num_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    if cfg.is_moe_layer(i):
        mlp = (
            cfg.experts_per_token * ffn_weights(cfg, cfg.moe_intermediate_size)
            + (ffn_weights(cfg, cfg.shared_intermediate_size) if cfg.shared_intermediate_size else 0)
            + cfg.hidden_size * cfg.num_experts  # router
        )
    else:
        mlp = ffn_weights(cfg, cfg.intermediate_size)
    return LayerFlops(2.0 * weights, float(core), 2.0 * mlp, 2.0 * up)


def head(cfg: ModelConfig) -> float:
    return 2.0 * cfg.hidden_size * cfg.vocab_size


def mtp_module(cfg: ModelConfig, seq_length: int) -> float:
    """One DeepSeek-V3 MTP module's forward per token: 2h -> h projection, one layer, shared head."""
    return 2.0 * 2 * cfg.hidden_size**2 + layer(cfg, cfg.num_layers, seq_length).total + head(cfg)


@dataclass(frozen=True)
class PerToken:
    forward: float  # main model (no MTP)
    training: float  # 3 x forward: forward + input gradient + weight gradient
    six_n: float  # 6 x the activated matmul parameters (layers + head)
    attention: float  # training's attention-score term (3 x the forward QK^T and AV)
    mtp_forward: float  # what the MTP modules add to the forward


def per_token(cfg: ModelConfig, seq_length: int) -> PerToken:
    layers = [layer(cfg, i, seq_length) for i in range(cfg.num_layers)]
    fwd = sum(x.total for x in layers) + head(cfg)
    core = sum(x.attn_core for x in layers)
    return PerToken(
        forward=fwd,
        training=3 * fwd,
        six_n=3 * (fwd - core),
        attention=3 * core,
        mtp_forward=cfg.mtp_layers * mtp_module(cfg, seq_length),
    )
