"""Parameter counts of a :class:`~.config.ModelConfig`, per layer kind, as the HF modules hold them.

Each count is the number of elements of the weights (and biases) a PyTorch
implementation of that family holds; tests/test_model_params.py works the
published totals out by hand from the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class LayerParams:
    """One transformer layer's parameters, split by what shards them differently."""

    attention: int  # q/k/v/o (or MLA's down/up projections and their norms)
    norms: int  # the two pre-norms
    mlp: int  # dense FFN, or an MoE layer's shared experts + router (replicated over EP)
    routed: int  # all routed experts (sharded over EP); 0 in a dense layer
    routed_active: int  # the experts_per_token of them one token uses
    whole: int = 0  # of ``dense``, the elements every tensor rank holds whole (whole_on_tensor)

    @property
    def total(self) -> int:
        return self.attention + self.norms + self.mlp + self.routed

    @property
    def activated(self) -> int:
        return self.attention + self.norms + self.mlp + self.routed_active

    @property
    def dense(self) -> int:
        """Everything but the routed experts: replicated across expert-parallel ranks."""
        return self.attention + self.norms + self.mlp

    def dense_over_tensor(self, tensor: int) -> int:
        """``dense`` as a stage's count takes it, which one rank holds ``1 / tensor`` of: the
        ``whole`` part counts ``tensor`` times (as embedding_over_tensor counts learned positions)."""
        return self.dense + (tensor - 1) * self.whole


def _norm(cfg: ModelConfig, width: int) -> int:
    return width * (2 if cfg.norm == "layernorm" else 1)


def attention(cfg: ModelConfig) -> int:
    h, a, kv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    if cfg.mla:
        nope = cfg.qk_head_dim - cfg.qk_rope_head_dim
        if cfg.q_lora_rank:  # q = W_qb(norm(W_qa x))
            q = h * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * a * cfg.qk_head_dim
        else:
            q = h * a * cfg.qk_head_dim
        kv_a = h * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank  # + kv_a_layernorm
        kv_b = cfg.kv_lora_rank * a * (nope + cfg.v_head_dim)
        return q + kv_a + kv_b + a * cfg.v_head_dim * h
    d, dv = cfg.qk_head_dim, cfg.v_head_dim
    n = h * a * d + 2 * h * kv * d + a * dv * h  # q, k, v, o
    if cfg.bias or cfg.qkv_bias:
        n += a * d + 2 * kv * d
    n += out_bias(cfg)
    if cfg.qk_norm:
        n += 2 * d
    return n + (a if cfg.attention_sinks else 0)  # gpt-oss: one sink logit per head


def out_bias(cfg: ModelConfig) -> int:
    """Elements of the attention output projection's bias (GPT-2's, gpt-oss's): whole on every tensor rank."""
    return cfg.hidden_size if cfg.bias or cfg.out_bias else 0


def router_bias(cfg: ModelConfig) -> int:
    """Elements of an MoE router's per-expert bias: DeepSeek-V3's correction bias (a buffer) or gpt-oss's
    linear bias (a parameter)."""
    return cfg.num_experts if cfg.router_bias or cfg.router_learned_bias else 0


def attention_norms(cfg: ModelConfig) -> int:
    """Of ``attention(cfg)``, the norms every tensor rank holds whole (whole_on_tensor): MLA's latent
    norms, or Qwen3's per-head q and k norms (one head's width each)."""
    if cfg.mla:
        return (cfg.q_lora_rank or 0) + cfg.kv_lora_rank
    return 2 * cfg.qk_head_dim if cfg.qk_norm else 0


def ffn(cfg: ModelConfig, width: int) -> int:
    h = cfg.hidden_size
    if cfg.ffn_matrices == 2:  # up (fc1) and down (fc2): GeLU or squared ReLU
        return 2 * h * width + ((width + h) if cfg.bias else 0)
    return 3 * h * width  # gate, up, down


def expert(cfg: ModelConfig) -> int:
    """One routed expert: its FFN, and gpt-oss's biases (gate_up_proj_bias of 2f, down_proj_bias of h)."""
    f = cfg.moe_intermediate_size
    return ffn(cfg, f) + ((2 * f + cfg.hidden_size) if cfg.expert_bias else 0)


def whole_on_tensor(cfg: ModelConfig, i: int) -> int:
    """Elements of layer ``i``'s dense parameters every tensor-parallel rank holds whole, as
    Megatron-core builds them (NVIDIA/Megatron-LM @ 1e05700): the two pre-norms (weight, and bias
    for LayerNorm: ``input_layernorm`` / ``pre_mlp_layernorm`` built with ``hidden_size``,
    megatron/core/transformer/transformer_layer.py lines 309-314 and 356-361; TENorm, a
    te.pytorch.LayerNorm / RMSNorm of ``hidden_size``, extensions/transformer_engine.py lines 74-88),
    the row-parallel linears' biases (attention output, fc2: ``RowParallelLinear``'s bias is
    ``torch.empty(self.output_size)``, tensor_parallel/layers.py line 1146), and an MoE layer's router
    (``torch.empty((num_moe_experts, hidden_size))``, transformer/moe/router.py lines 49-51; its
    expert bias a per-expert vector).  As ddp_buckets lists a layer's tensors.  Since s12d also the
    norms inside attention: Qwen3's per-head q / k norms (``--qk-layernorm``: ``q_layernorm`` /
    ``k_layernorm`` of ``hidden_size_per_attention_head``, transformer/attention.py lines 808-823),
    MLA's latent norms (``q_layernorm`` of ``q_lora_rank``, ``kv_layernorm`` of ``kv_lora_rank``,
    multi_latent_attention.py lines 329-342; in the TE spec the layer norm of the up projections'
    TELayerNormColumnParallelLinear, gpt_layer_specs.py lines 117-127, the same whole vectors), and a
    shared expert's gate (``torch.empty((1, hidden_size))``, moe/shared_experts.py line 53)."""
    h = cfg.hidden_size
    n = 2 * _norm(cfg, h) + out_bias(cfg) + attention_norms(cfg)  # + the output projection's bias
    if not cfg.is_moe_layer(i):
        return n + (h if cfg.bias and cfg.ffn == "gelu" else 0)  # + fc2's bias
    n += h * cfg.num_experts + router_bias(cfg)
    n += h if cfg.shared_expert_gate else 0
    return n + (h if cfg.bias and cfg.ffn == "gelu" and cfg.shared_intermediate_size else 0)  # shared fc2's bias


def layer(cfg: ModelConfig, i: int) -> LayerParams:
    """Parameters of layer ``i`` (0-based; MTP layers are MoE layers like the last one)."""
    attn, norms, whole = attention(cfg), 2 * _norm(cfg, cfg.hidden_size), whole_on_tensor(cfg, i)
    if not cfg.is_moe_layer(i):
        return LayerParams(attn, norms, ffn(cfg, cfg.intermediate_size), 0, 0, whole)
    h, E = cfg.hidden_size, cfg.num_experts
    one = expert(cfg)
    router = h * E + router_bias(cfg)
    shared = (ffn(cfg, cfg.shared_intermediate_size) if cfg.shared_intermediate_size else 0) + (
        h if cfg.shared_expert_gate else 0
    )
    return LayerParams(attn, norms, shared + router, E * one, cfg.experts_per_token * one, whole)


def embedding(cfg: ModelConfig) -> int:
    """Token embedding (and learned positions), held by the first stage."""
    return cfg.vocab_size * cfg.hidden_size + cfg.max_positions * cfg.hidden_size


def embedding_over_tensor(cfg: ModelConfig, tensor: int) -> int:
    """The embedding as a stage's dense count takes it, which one rank holds ``1 / tensor`` of:
    the word table is split over the tensor ranks, the learned position table is whole on every
    one (Megatron-core's "Position embedding (serial)", a torch.nn.Embedding beside the
    VocabParallelEmbedding: NVIDIA/Megatron-LM @ 1e05700 language_model_embedding.py lines 65-68;
    Megatron-LM 2021 the same, 6985e58 megatron/model/language_model.py lines 139-141), so it
    counts ``tensor`` times."""
    return cfg.vocab_size * cfg.hidden_size + tensor * cfg.max_positions * cfg.hidden_size


def head_over_tensor(cfg: ModelConfig, tensor: int, unique: bool = False) -> int:
    """The head (``unique``: head_unique) as a stage's dense count takes it: its final norm, whole on
    every tensor rank (a TENorm of ``hidden_size``, as whole_on_tensor's), counts ``tensor`` times."""
    return (head_unique(cfg) if unique else head(cfg)) + (tensor - 1) * _norm(cfg, cfg.hidden_size)


def head(cfg: ModelConfig) -> int:
    """Final norm and output projection, held by the last stage (a tied head holds its own copy
    there, as Megatron does when embedding and head sit on different stages)."""
    return _norm(cfg, cfg.hidden_size) + cfg.vocab_size * cfg.hidden_size  # no bias, GPT-2 included


def head_unique(cfg: ModelConfig) -> int:
    """What the head adds to the model's distinct parameters (a tied head adds only its norm)."""
    return head(cfg) - (cfg.vocab_size * cfg.hidden_size if cfg.tie_word_embeddings else 0)


def mtp_module(cfg: ModelConfig) -> LayerParams:
    """One DeepSeek-V3 MTP module without the embedding and head it shares with the main model:
    enorm + hnorm, the 2h -> h projection, one MoE layer and the shared head's norm."""
    one = layer(cfg, cfg.num_layers)
    h = cfg.hidden_size
    extra = 2 * _norm(cfg, h) + 2 * h * h + _norm(cfg, h)
    norms = 3 * _norm(cfg, h)  # enorm, hnorm and the final norm: whole on every tensor rank too
    return LayerParams(one.attention, one.norms + extra, one.mlp, one.routed, one.routed_active, one.whole + norms)


@dataclass(frozen=True)
class Totals:
    total: int  # main model: embedding + layers + head (no MTP)
    activated: int  # per token: layers with their active experts + head (the embedding is a lookup)
    embedding: int
    head: int
    layers: int
    mtp: int  # MTP modules' own parameters (not in total)
    by_kind: dict  # attention / norms / mlp / routed experts / embedding / head, summed over layers


def totals(cfg: ModelConfig) -> Totals:
    layers = [layer(cfg, i) for i in range(cfg.num_layers)]
    emb, hd = embedding(cfg), head_unique(cfg)
    kinds = {
        "embedding": emb,
        "attention": sum(p.attention for p in layers),
        "norms": sum(p.norms for p in layers),
        "mlp_dense_and_shared": sum(p.mlp for p in layers),
        "routed_experts": sum(p.routed for p in layers),
        "head": hd,
    }
    body = sum(p.total for p in layers)
    return Totals(
        total=emb + body + hd,
        activated=sum(p.activated for p in layers) + head(cfg),
        embedding=emb,
        head=hd,
        layers=body,
        mtp=cfg.mtp_layers * mtp_module(cfg).total,
        by_kind=kinds,
    )


def _ffn_weights(cfg: ModelConfig, width: int) -> int:
    return cfg.ffn_matrices * cfg.hidden_size * width


def linear_weights(cfg: ModelConfig, i: int) -> tuple[int, int]:
    """(dense, routed) weight elements of layer ``i``'s linears: what FP8 GEMMs read (norms, biases
    and the router stay in higher precision, DeepSeek-V3 report Sec. 3.3)."""
    h, a, kv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    if cfg.mla:
        q = h * cfg.q_lora_rank + cfg.q_lora_rank * a * cfg.qk_head_dim if cfg.q_lora_rank else h * a * cfg.qk_head_dim
        nope = cfg.qk_head_dim - cfg.qk_rope_head_dim
        attn = q + h * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank * a * (nope + cfg.v_head_dim)
        attn += a * cfg.v_head_dim * h
    else:
        attn = h * a * cfg.qk_head_dim + 2 * h * kv * cfg.qk_head_dim + a * cfg.v_head_dim * h
    if not cfg.is_moe_layer(i):
        return attn + _ffn_weights(cfg, cfg.intermediate_size), 0
    shared = _ffn_weights(cfg, cfg.shared_intermediate_size) if cfg.shared_intermediate_size else 0
    return attn + shared, cfg.num_experts * _ffn_weights(cfg, cfg.moe_intermediate_size)


def mtp_linear_weights(cfg: ModelConfig) -> tuple[int, int]:
    """One MTP module's linears: its layer's and the 2h -> h projection's."""
    dense, routed = linear_weights(cfg, cfg.num_layers)
    return dense + 2 * cfg.hidden_size**2, routed
