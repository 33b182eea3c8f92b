"""A model's architecture, read from a Hugging Face ``config.json`` (or the same fields inline).

One normalised :class:`ModelConfig` covers the families the simulator costs:
Llama/Mistral/Qwen-style dense models, Mixtral/Qwen-MoE-style MoE models,
DeepSeek-V2/V3 (MLA attention, shared experts, ``first_k_dense_replace``,
MTP layers), GLM-4.5 (DeepSeek-V3's MoE and MTP with GQA attention), Llama 4 (its text model:
interleaved MoE / dense layers, chunked attention on the RoPE layers, full attention on the NoPE ones),
gpt-oss (alternating sliding-window and full attention, attention sinks, biases on every linear), GPT-2
(LayerNorm, GeLU, biases, learned positions, dropout) and Nemotron-4 (LayerNorm1P, squared-ReLU MLP, no biases).
Every problem is a :class:`ModelError` whose one line names the field.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .. import limits
from ..errors import shown


class ModelError(ValueError):
    """A model config breaks a rule; the message names the field."""


# head_dim when a config.json leaves it out, as transformers takes it for that model_type: Qwen3Config
# defaults to 128; Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE and Qwen3-MoE take hidden_size // heads (their
# config's own fallback, or their attention module's getattr(config, "head_dim", hidden // heads)).
# docs/model.md "Reading a config" cites each file.
HEAD_DIM_DEFAULTS = {"qwen3": (128, "Qwen3Config's default"), "gpt_oss": (64, "GptOssConfig's default")}
HEAD_DIM_DEFAULTS["llama4"] = HEAD_DIM_DEFAULTS["llama4_text"] = (128, "Llama4TextConfig's default")

# model_type -> family.  The family decides which HF field names are read.
FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen_moe",
    "qwen3_moe": "qwen_moe",
    "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek",
    "glm4_moe": "glm4_moe",
    "gpt2": "gpt2",
    "nemotron": "nemotron",
    "llama4": "llama4",  # Llama4Config: the text model's fields in text_config, beside a vision_config
    "llama4_text": "llama4",  # Llama4TextConfig: the text model's fields at the top level
    "gpt_oss": "gpt_oss",
}


# architectures[0] -> model_type, for configs that name only the class.
_ARCH_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Glm4MoeForCausalLM": "glm4_moe",
    "GPT2LMHeadModel": "gpt2",
    "NemotronForCausalLM": "nemotron",
    "Llama4ForConditionalGeneration": "llama4",
    "Llama4ForCausalLM": "llama4_text",
    "GptOssForCausalLM": "gpt_oss",
}


@dataclass(frozen=True)
class ModelConfig:
    """What the parameter, FLOP and activation counts need, in one vocabulary."""

    model_type: str
    hidden_size: int
    num_layers: int  # main model, without MTP layers
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    qk_head_dim: int  # per head, query/key (MLA: nope + rope part)
    v_head_dim: int
    intermediate_size: int  # dense FFN width (dense layers of an MoE model too)
    ffn: str = "swiglu"  # "swiglu" (3 matrices), "gelu" (2 matrices, GPT-2) or "relu2" (2 matrices, Nemotron)
    norm: str = "rmsnorm"  # "rmsnorm" (weight only) or "layernorm" (weight and bias)
    bias: bool = False  # GPT-2: every linear has a bias
    qkv_bias: bool = False  # Qwen2: q, k, v projections have biases
    qk_norm: bool = False  # Qwen3: RMSNorm on each head's q and k
    tie_word_embeddings: bool = False
    max_positions: int = 0  # learned position embeddings (GPT-2); 0 = rotary, no parameters
    dropout: bool = False  # attention and hidden dropout in training (GPT-2)
    # MLA (DeepSeek): 0 = no low-rank compression of that side
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    # MoE
    num_experts: int = 0  # routed experts per MoE layer; 0 = dense model
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_intermediate_size: int = 0  # all shared experts together (0 = none)
    shared_expert_gate: bool = False  # Qwen-MoE: a sigmoid gate (h -> 1) on the shared expert
    router_bias: bool = False  # DeepSeek-V3: e_score_correction_bias per expert
    dense_layers: tuple[int, ...] = ()  # layer indices with a dense FFN in an MoE model
    moe_layers_key: str = field(default="", compare=False)  # the config field that picked them (for errors)
    route_groups: int = 0  # DeepSeek node-limited routing: experts in n_group groups (one per node) ...
    route_group_limit: int = 0  # ... of which a token may use topk_group
    mtp_layers: int = 0  # DeepSeek-V3 multi-token-prediction modules
    fp8: bool = False  # the model trains its linears in FP8 (DeepSeek-V3's quantization_config)
    eager_attention: bool = False  # scores materialised (GPT-2 family's default); else flash attention
    # Llama 4: layers without rotary embedding attend over the whole sequence; the others attend within
    # chunks of attention_chunk tokens (0 = no chunking), after an L2 norm of q and k (qk_l2_norm)
    nope_layers: tuple[int, ...] = ()
    attention_chunk: int = 0
    qk_l2_norm: bool = False  # on the RoPE layers only; no weights
    attn_temperature: bool = False  # the NoPE layers' queries scaled by a per-position factor (elementwise)
    # gpt-oss: the layers whose attention is a causal window of ``sliding_window`` keys (the rest attend to all)
    sliding_window: int = 0
    sliding_layers: tuple[int, ...] = ()
    attention_sinks: bool = False  # one learned logit per head in each layer's softmax (gpt-oss)
    out_bias: bool = False  # the attention output projection has a bias (gpt-oss's attention_bias: q, k, v and o)
    router_learned_bias: bool = False  # the router is a linear with a bias (a parameter with a gradient; gpt-oss)
    expert_bias: bool = False  # each routed expert's gate/up and down projections have biases (gpt-oss)
    swiglu_limit: float = 0.0  # gpt-oss's clamp on the experts' SwiGLU inputs; 0 = none (elementwise: no cost)
    # partial RoPE: the share of each head's dims turned (Nemotron's, GLM's 0.5); only unfused RoPE's kernels see it
    rotary_fraction: float = 1.0
    # Fields the config left out and what was taken for them, in words (``model --explain`` says so);
    # not part of the architecture, so not compared.
    defaults_taken: tuple[str, ...] = field(default=(), compare=False)
    # Fields read and checked that change no count or kernel, and why, in words (``model --explain``)
    not_costed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices of one FFN: gate, up, down for SwiGLU; up and down for GeLU and squared ReLU."""
        return 3 if self.ffn == "swiglu" else 2

    @property
    def moe(self) -> bool:
        return self.num_experts > 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    # Sets of the index tuples: derive asks of every layer several times, and a tuple is searched end to end
    # (Llama 4 lists half its layers dense and a quarter NoPE)
    @cached_property
    def _dense_set(self) -> frozenset[int]:
        return frozenset(self.dense_layers)

    @cached_property
    def _nope_set(self) -> frozenset[int]:
        return frozenset(self.nope_layers)

    @cached_property
    def _sliding_set(self) -> frozenset[int]:
        return frozenset(self.sliding_layers)

    def is_moe_layer(self, i: int) -> bool:
        return self.moe and i not in self._dense_set

    def chunked(self, i: int) -> bool:
        """Layer ``i`` attends within chunks of ``attention_chunk`` tokens (Llama 4's RoPE layers)."""
        return self.attention_chunk > 0 and i not in self._nope_set

    def window(self, i: int) -> int:
        """Keys a query of layer ``i`` may attend to at most (its sliding window); 0 = every earlier key."""
        return self.sliding_window if i in self._sliding_set else 0

    def layer_kind(self, i: int) -> tuple[bool, bool, int]:
        """(MoE, NoPE, sliding window): layers of one kind have the same parameters, FLOPs and kernels."""
        return self.is_moe_layer(i), i in self._nope_set, self.window(i)


def _whole(raw: dict, key: str, where: str, *, default=None, minimum: int = 1) -> int:
    value = raw.get(key, default)
    if value is None:
        raise ModelError(f"{where}{key}: required key is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())
    ):
        raise ModelError(f"{where}{key}: must be a whole number, got {shown(value)}")
    if value < minimum:
        raise ModelError(f"{where}{key}: must be >= {minimum}, got {shown(value)}")
    if value > 10**9:
        raise ModelError(f"{where}{key}: must be <= 1e9, got {shown(value)}")
    return int(value)


MAX_LAYERS = 10_000  # the largest published models have ~100-200; the counts loop over layers


def _layers(raw: dict, key: str, where: str) -> int:
    n = _whole(raw, key, where)
    if n > MAX_LAYERS:
        raise ModelError(f"{where}{key}: must be <= {MAX_LAYERS:,}, got {n}")
    return n


def _flag(raw: dict, key: str, where: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelError(f"{where}{key}: must be true or false, got {shown(value)}")
    return value


def model_type_of(raw: dict, where: str = "") -> str:
    mt = raw.get("model_type")
    if mt is None:
        archs = raw.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            mt = _ARCH_CLASSES.get(archs[0], archs[0])
        else:
            raise ModelError(f"{where}model_type: required key is missing (or give architectures)")
    if not isinstance(mt, str) or mt not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ModelError(f"{where}model_type: unknown architecture {shown(mt)} (known: {known})")
    return mt


def from_hf(raw: dict, where: str = "") -> ModelConfig:
    """Normalise an HF config dict.  ``where`` prefixes field names in errors."""
    if not isinstance(raw, dict):
        raise ModelError(f"{where.rstrip(': .') or 'model'}: expected a JSON object of config fields")
    mt = model_type_of(raw, where)
    family = FAMILIES[mt]
    if family == "gpt2":
        return _gpt2(raw, where)
    if family == "llama4":
        return _llama4(raw, mt, where)
    w = lambda k, **kw: _whole(raw, k, where, **kw)  # noqa: E731
    common, head_dim, taken = _common(raw, mt, lambda k: where, head_dim=family != "deepseek")
    if family == "deepseek":
        return _deepseek(raw, where, common)
    if family == "glm4_moe":
        return _glm4_moe(raw, where, common, head_dim, taken)
    if family == "nemotron":
        return _nemotron(raw, where, common, head_dim, taken)
    if family == "gpt_oss":
        return _gpt_oss(raw, where, common, head_dim, taken)
    ffn = w("intermediate_size")
    extra = dict(qkv_bias=_flag(raw, "attention_bias", where, default=mt in ("qwen2", "qwen2_moe")),
                 qk_norm=mt in ("qwen3", "qwen3_moe"))
    if family == "mixtral":
        extra.update(
            num_experts=w("num_local_experts"),
            experts_per_token=w("num_experts_per_tok"),
            moe_intermediate_size=ffn,
        )
    elif family == "qwen_moe":
        every = w("decoder_sparse_step", default=1)
        only = raw.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
            raise ModelError(f"{where}mlp_only_layers: must be a list of layer indices, got {shown(only)}")
        L = common["num_layers"]
        # Qwen3-MoE's block has no shared expert (transformers' Qwen3MoeSparseMoeBlock): the field is not read
        shared = w("shared_expert_intermediate_size", default=0, minimum=0) if mt != "qwen3_moe" else 0
        extra.update(
            num_experts=w("num_experts"),
            experts_per_token=w("num_experts_per_tok"),
            moe_intermediate_size=w("moe_intermediate_size"),
            shared_intermediate_size=shared,
            shared_expert_gate=shared > 0,
            dense_layers=tuple(i for i in range(L) if i in only or (i + 1) % every),
            moe_layers_key="mlp_only_layers" if only else "decoder_sparse_step",
        )
    window, sliding, window_taken = _hf_window(raw, mt, common["num_layers"], where)
    cfg = ModelConfig(qk_head_dim=head_dim, v_head_dim=head_dim, intermediate_size=ffn,
                      defaults_taken=(*taken, *window_taken), sliding_window=window, sliding_layers=sliding,
                      **common, **extra)  # fmt: skip
    return _checked(cfg, where)


# Mistral's and the Qwen families' sliding window as transformers @ 008e574 sets it (docs/model.md, "Sliding-window
# attention"): the window's default when the config has none, and the layers it applies to.
HF_WINDOW = 4096  # MistralConfig's, Qwen2Config's, Qwen3Config's, Qwen2MoeConfig's and Qwen3MoeConfig's default
HF_MAX_WINDOW_LAYERS = 28  # Qwen2Config's, Qwen3Config's and Qwen2MoeConfig's max_window_layers default
WINDOW_FIELDS = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")
WINDOWED = ("mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")  # the model types _hf_window reads


def _hf_window(raw: dict, mt: str, L: int, where: str) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    """(window, its layers, the defaults taken in words) of a Llama-family or Qwen-MoE config.  Mistral windows
    every layer by ``sliding_window`` (4096 unless the config says null); the Qwen families only with
    ``use_sliding_window`` (their __post_init__ sets the window to None, Qwen2-MoE's to 0, without it), then
    Qwen3-MoE every layer (Qwen3MoeAttention passes config.sliding_window on every layer; max_window_layers is not
    a field), the others the layers ``layer_types`` marks "sliding_attention", by default Qwen2's and Qwen3's from
    index max_window_layers on and Qwen2-MoE's even indices below it.  Llama and Mixtral: none (not read)."""
    if mt not in WINDOWED or (mt != "mistral" and not _flag(raw, "use_sliding_window", where)):
        return 0, (), ()
    if "sliding_window" in raw and raw["sliding_window"] is None:  # null: no window (Mistral v0.2 on, Qwen3 releases)
        return 0, (), ()
    taken = [] if "sliding_window" in raw else [f"sliding_window = {HF_WINDOW} ({mt}'s config default; the config "
                                                 f"has none)"]  # fmt: skip
    window = _whole(raw, "sliding_window", where, default=HF_WINDOW)
    if mt in ("mistral", "qwen3_moe"):
        return window, tuple(range(L)), tuple(taken)
    kinds = _layer_types(raw, L, where)
    if kinds is None:
        top = _whole(raw, "max_window_layers", where, default=HF_MAX_WINDOW_LAYERS, minimum=0)
        if "max_window_layers" not in raw:
            taken.append(f"max_window_layers = {HF_MAX_WINDOW_LAYERS} ({mt}'s config default; the config has none)")
        windowed = (lambda i: (i + 1) % 2 and i < top) if mt == "qwen2_moe" else (lambda i: i >= top)
        return window, tuple(i for i in range(L) if windowed(i)), tuple(taken)
    return window, tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention"), tuple(taken)


def _layer_types(raw: dict, L: int, where: str) -> list[str] | None:
    """The config's layer_types checked (one of LAYER_TYPES per layer), or None when it has none."""
    kinds = raw.get("layer_types")
    if kinds is None:
        return None
    if not isinstance(kinds, list) or len(kinds) != L:
        got = f"{len(kinds)} entries" if isinstance(kinds, list) else shown(kinds)
        raise ModelError(f"{where}layer_types: must list one entry per layer (num_hidden_layers = {L}), got {got}")
    for i, kind in enumerate(kinds):
        if kind not in LAYER_TYPES:
            raise ModelError(f"{where}layer_types: entry {i} must be \"sliding_attention\" or \"full_attention\", "
                             f"got {shown(kind)}")
    return kinds


def _common(raw: dict, mt: str, where, head_dim: bool = True) -> tuple[dict, int, tuple[str, ...]]:
    """The fields every family but GPT-2 names alike, head_dim and the default taken for it (0 and () when
    ``head_dim`` is false: MLA's head sizes are its own fields).  ``where(key)``: the prefix of that key's errors."""
    w = lambda k, **kw: _whole(raw, k, where(k), **kw)  # noqa: E731
    h, heads = w("hidden_size"), w("num_attention_heads")
    kv = w("num_key_value_heads", default=heads)
    if heads % kv:
        raise ModelError(f"{where('num_key_value_heads')}num_key_value_heads: must divide num_attention_heads "
                         f"({heads}), got {kv}")  # fmt: skip
    head_dim, taken = _head_dim(raw, mt, h, heads, where("head_dim")) if head_dim else (0, ())
    common = dict(
        model_type=mt,
        hidden_size=h,
        num_layers=_layers(raw, "num_hidden_layers", where("num_hidden_layers")),
        vocab_size=w("vocab_size"),
        num_heads=heads,
        num_kv_heads=kv,
        tie_word_embeddings=_flag(raw, "tie_word_embeddings", where("tie_word_embeddings")),
    )
    return common, head_dim, taken


def _head_dim(raw: dict, mt: str, h: int, heads: int, where: str) -> tuple[int, tuple[str, ...]]:
    """(head_dim, the default taken in words or ()): the config's own value, else transformers' for ``mt``."""
    given = raw.get("head_dim")
    if given is not None and "head_dim" in fields_of(mt):
        return _whole(raw, "head_dim", where), ()
    if mt in HEAD_DIM_DEFAULTS:
        value, why = HEAD_DIM_DEFAULTS[mt]
        return value, (f"head_dim = {value} ({why}; the config has no head_dim)",)
    if mt == "qwen2_moe" and h % heads:  # Qwen2MoeAttention raises: its heads split the hidden size exactly
        raise ModelError(f"{where}num_attention_heads: must divide hidden_size ({h}) for qwen2_moe, got {heads}")
    unread = ("the config has no head_dim" if given is None
              else f"{mt} reads no head_dim; the config's {shown(given)} ignored")  # fmt: skip
    return h // heads, (f"head_dim = hidden_size / num_attention_heads = {h} / {heads} = {h // heads} "
                        f"(transformers' fallback for {mt}; {unread})",)


def _deepseek(raw: dict, where: str, common: dict) -> ModelConfig:
    w = lambda k, **kw: _whole(raw, k, where, **kw)  # noqa: E731
    L = common["num_layers"]
    first_dense = w("first_k_dense_replace", default=0, minimum=0)
    freq = w("moe_layer_freq", default=1)
    experts = w("n_routed_experts", default=0, minimum=0)
    quant = raw.get("quantization_config")
    fp8 = isinstance(quant, dict) and quant.get("quant_method") == "fp8"
    nope, rope = w("qk_nope_head_dim"), w("qk_rope_head_dim", minimum=0)
    moe = dict()
    if experts:
        moe_ffn = w("moe_intermediate_size")
        moe = dict(
            num_experts=experts,
            experts_per_token=w("num_experts_per_tok"),
            moe_intermediate_size=moe_ffn,
            shared_intermediate_size=w("n_shared_experts", default=0, minimum=0) * moe_ffn,
            router_bias=raw.get("topk_method") == "noaux_tc",
            route_groups=w("n_group", default=0, minimum=0),
            route_group_limit=w("topk_group", default=0, minimum=0),
            dense_layers=tuple(i for i in range(L) if i < first_dense or i % freq),
            moe_layers_key="first_k_dense_replace" if first_dense else "moe_layer_freq",
        )
    cfg = ModelConfig(
        **common,
        qk_head_dim=nope + rope,
        v_head_dim=w("v_head_dim"),
        intermediate_size=w("intermediate_size"),
        q_lora_rank=w("q_lora_rank", default=0, minimum=0) if raw.get("q_lora_rank") is not None else 0,
        kv_lora_rank=w("kv_lora_rank"),
        qk_rope_head_dim=rope,
        mtp_layers=w("num_nextn_predict_layers", default=0, minimum=0),
        fp8=fp8,
        **moe,
    )
    return _checked(cfg, where)


# Glm4MoeConfig's defaults for the switches a GLM-4.5 config may leave out (transformers v4.54.0, the release that
# added glm4_moe: models/glm4_moe/configuration_glm4_moe.py L170-199); sizes have no default here (required).
GLM4_MOE_DEFAULTS = {"attention_bias": False, "use_qk_norm": False, "partial_rotary_factor": 0.5,
                     "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                     "routed_scaling_factor": 1.0, "norm_topk_prob": True}


def _glm4_moe(raw: dict, where: str, common: dict, head_dim: int, taken: tuple[str, ...]) -> ModelConfig:
    """GLM-4.5 / GLM-4.5-Air: DeepSeek-V3's MoE (sigmoid router with a per-expert correction bias, shared
    expert, ``first_k_dense_replace`` dense layers, MTP layers) behind GQA attention (q, k, v biases, optional
    per-head q/k RMSNorms).  As transformers' Glm4MoeDecoderLayer builds it (docs/model.md "GLM-4.5")."""
    missing = [k for k in GLM4_MOE_DEFAULTS if raw.get(k) is None]
    taken += tuple(f"{k} = {json.dumps(GLM4_MOE_DEFAULTS[k])} (Glm4MoeConfig's default; the config has no {k})"
                   for k in missing)
    raw = {**raw, **{k: GLM4_MOE_DEFAULTS[k] for k in missing}}
    w = lambda k, **kw: _whole(raw, k, where, **kw)  # noqa: E731
    experts, groups = w("n_routed_experts"), w("n_group")
    if experts % groups:  # the router views the scores as n_group groups of n_routed_experts / n_group
        raise ModelError(f"{where}n_group: must divide n_routed_experts ({experts}), got {groups}")
    limit = w("topk_group")
    if limit > groups:
        raise ModelError(f"{where}topk_group: must be <= n_group ({groups}), got {limit}")
    rotary = _positive(raw, "partial_rotary_factor", where, top=1.0)
    scale = _positive(raw, "routed_scaling_factor", where)
    _flag(raw, "norm_topk_prob", where)
    first_dense = w("first_k_dense_replace", minimum=0)
    moe_ffn = w("moe_intermediate_size")
    cfg = ModelConfig(
        **common,
        qk_head_dim=head_dim,
        v_head_dim=head_dim,
        intermediate_size=w("intermediate_size"),
        qkv_bias=_flag(raw, "attention_bias", where),  # q, k, v only: o_proj has no bias (modeling L140-149)
        qk_norm=_flag(raw, "use_qk_norm", where),
        rotary_fraction=rotary,
        num_experts=experts,
        experts_per_token=w("num_experts_per_tok"),
        moe_intermediate_size=moe_ffn,
        shared_intermediate_size=w("n_shared_experts", minimum=0) * moe_ffn,
        router_bias=True,  # Glm4MoeTopkRouter always holds e_score_correction_bias (modeling L236)
        route_groups=groups,
        route_group_limit=limit,
        dense_layers=tuple(range(min(first_dense, common["num_layers"]))),  # MoE from layer_idx >= it (L354)
        moe_layers_key="first_k_dense_replace",
        mtp_layers=w("num_nextn_predict_layers", default=0, minimum=0),
        defaults_taken=taken,
        not_costed=(
            f"partial_rotary_factor = {rotary:g}: RoPE turns {int(head_dim * rotary)} of each head's {head_dim} "
            "dims; the fused RoPE kernel still reads and writes whole q and k heads (it copies the rest), so its "
            "bytes are the same (unfused, model.rope_fusion = false, they are not: model/rope.py)",
            f"routed_scaling_factor = {scale:g}, norm_topk_prob: elementwise on the top-k weights, not costed",
        ),
    )
    return _checked(cfg, where)


def _positive(raw: dict, key: str, where: str, top: float | None = None) -> float:
    """A positive number (at most ``top``)."""
    value = raw.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf  # NaN fails too
    if not ok or (top is not None and value > top):
        rule = f"a number in (0, {top:g}]" if top is not None else "a positive number"
        raise ModelError(f"{where}{key}: must be {rule}, got {shown(value)}")
    return float(value)


def _nemotron(raw: dict, where: str, common: dict, head_dim: int, taken: tuple[str, ...]) -> ModelConfig:
    """Nemotron-4 (transformers' NemotronConfig / modeling_nemotron.py, docs/model.md "Nemotron"): two
    NemotronLayerNorm1P a layer (an nn.LayerNorm, weight and bias), an MLP of up_proj and down_proj with
    squared ReLU between, partial RoPE (no parameters; the rope kernel still reads and writes whole heads)."""
    act = raw.get("hidden_act", "relu2")  # NemotronConfig's default
    if act != "relu2":
        raise ModelError(f'{where}hidden_act: must be "relu2" for nemotron (squared ReLU), got {shown(act)}')
    for key in ("attention_bias", "mlp_bias"):  # Nemotron-4 has none; a biased variant is not modelled
        if _flag(raw, key, where):
            raise ModelError(f"{where}{key}: must be false for nemotron (biases are not modelled), got true")
    # NemotronConfig's default 0.5; costed only by unfused RoPE (model.rope_fusion = false, rope.py)
    rotary = _positive({"partial_rotary_factor": 0.5, **raw}, "partial_rotary_factor", where, top=1.0)
    ffn = _whole(raw, "intermediate_size", where)
    cfg = ModelConfig(qk_head_dim=head_dim, v_head_dim=head_dim, intermediate_size=ffn, rotary_fraction=rotary,
                      ffn="relu2", norm="layernorm", defaults_taken=taken, **common)
    return _checked(cfg, where)


# Llama4TextConfig's defaults for the fields that shape its layers (huggingface/transformers @ 008e574
# src/transformers/models/llama4/configuration_llama4.py); a config without one takes it, and --explain says so
LLAMA4_DEFAULTS = {"interleave_moe_layer_step": 1, "intermediate_size_mlp": 16384, "no_rope_layer_interval": 4,
                   "attention_chunk_size": 8192, "use_qk_norm": True, "attn_temperature_tuning": True}


def _llama4(raw: dict, mt: str, where: str) -> ModelConfig:
    """Llama 4's text model.  Its vision encoder and projector are not modelled: the case is pre-training on text."""
    text, place = _llama4_text(raw, where)
    common, head_dim, taken = _common(text, mt, place)
    taken = list(taken)
    L = common["num_layers"]

    def read(key: str, reader, **kw):
        if key not in text:
            taken.append(f"{key} = {LLAMA4_DEFAULTS[key]} (Llama4TextConfig's default; the config has no {key})")
        return reader(text, key, place(key), default=LLAMA4_DEFAULTS[key], **kw)

    w = lambda k, **kw: _whole(text, k, place(k), **kw)  # noqa: E731
    if _flag(text, "attention_bias", place("attention_bias")):
        raise ModelError(f"{place('attention_bias')}attention_bias: Llama 4 with attention biases is not modelled "
                         "(no published Llama 4 has them), got true")  # fmt: skip
    step = read("interleave_moe_layer_step", _whole)  # read even beside moe_layers: a step of 0 is an error
    listed = text.get("moe_layers")
    moe = set(range(step - 1, L, step)) if listed is None else set(_indices(text, "moe_layers", place, L))
    dense = tuple(i for i in range(L) if i not in moe)
    width_mlp = read("intermediate_size_mlp", _whole) if dense else w("intermediate_size_mlp", default=16384)
    flags = text.get("no_rope_layers")
    if flags in (None, []):  # as transformers: no list, a NoPE layer every no_rope_layer_interval layers
        every = read("no_rope_layer_interval", _whole)
        nope = tuple(i for i in range(L) if (i + 1) % every == 0)
    else:
        ok = isinstance(flags, list) and len(flags) >= L and all(type(f) is int and f in (0, 1) for f in flags)
        if not ok:
            raise ModelError(f"{place('no_rope_layers')}no_rope_layers: must be a list of 1 (RoPE) or 0 (NoPE), one "
                             f"per layer ({L}), got {shown(flags)}")  # fmt: skip
        nope = tuple(i for i in range(L) if flags[i] == 0)
    if "attention_chunk_size" in text and text["attention_chunk_size"] is None:
        chunk = 0  # null: no chunked attention, every layer attends over the whole sequence
    else:
        chunk = read("attention_chunk_size", _whole)
    cfg = ModelConfig(
        **common,
        qk_head_dim=head_dim,
        v_head_dim=head_dim,
        intermediate_size=width_mlp,
        num_experts=w("num_local_experts"),
        experts_per_token=w("num_experts_per_tok"),
        moe_intermediate_size=w("intermediate_size"),
        shared_intermediate_size=w("intermediate_size"),  # Llama4TextMoe.shared_expert: Llama4TextMLP(config)
        dense_layers=dense,
        moe_layers_key="interleave_moe_layer_step" if listed is None else "moe_layers",
        nope_layers=nope,
        attention_chunk=chunk,
        qk_l2_norm=read("use_qk_norm", _flag),
        attn_temperature=read("attn_temperature_tuning", _truthy),
        defaults_taken=tuple(taken),
    )
    return _checked(cfg, place("num_experts_per_tok"))


def _llama4_text(raw: dict, where: str):
    """(the text model's fields, key -> its error prefix): ``text_config`` with any top-level field over it
    (inline overrides), or the top level alone (a ``llama4_text`` config)."""
    sub = raw.get("text_config")
    if sub is None:
        if raw.get("hidden_size") is None:
            raise ModelError(f"{where}text_config: required key is missing (Llama 4 keeps its text model's fields "
                             "there; or give them at the top level, as a llama4_text config does)")  # fmt: skip
        return raw, lambda k: where
    if not isinstance(sub, dict):
        raise ModelError(f"{where}text_config: must be a table of the text model's fields, got {shown(sub)}")
    top = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "text_config", "vision_config")}
    return {**sub, **top}, lambda k: where if k in top else f"{where}text_config."


def _indices(raw: dict, key: str, place, n: int) -> list[int]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(type(i) is int and 0 <= i < n for i in value):
        raise ModelError(f"{place(key)}{key}: must be a list of layer indices below num_hidden_layers ({n}), "
                         f"got {shown(value)}")  # fmt: skip
    return value


def _truthy(raw: dict, key: str, where: str, default: bool) -> bool:
    """A switch transformers reads by truth value (the Hub's Llama 4 Scout config has attn_temperature_tuning 4)."""
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value != 0
    raise ModelError(f"{where}{key}: must be true or false (or a number, nonzero meaning true), got {shown(value)}")


def _gpt2(raw: dict, where: str) -> ModelConfig:
    w = lambda k, **kw: _whole(raw, k, where, **kw)  # noqa: E731
    h, heads = w("n_embd"), w("n_head")
    inner = raw.get("n_inner")
    drop = max(_dropout(raw, k, where) for k in ("attn_pdrop", "resid_pdrop", "embd_pdrop")) > 0  # checks all three
    cfg = ModelConfig(
        model_type="gpt2",
        hidden_size=h,
        num_layers=_layers(raw, "n_layer", where),
        vocab_size=w("vocab_size"),
        num_heads=heads,
        num_kv_heads=heads,
        qk_head_dim=h // heads,
        v_head_dim=h // heads,
        intermediate_size=4 * h if inner is None else w("n_inner"),
        ffn="gelu",
        norm="layernorm",
        bias=True,
        tie_word_embeddings=_flag(raw, "tie_word_embeddings", where, default=True),
        max_positions=w("n_positions"),
        dropout=drop,
        eager_attention=True,  # Megatron's fused masked softmax, as Korthikanti et al. measured it
    )
    return _checked(cfg, where)


# gpt-oss's two attention kinds, as its config's layer_types names them (transformers GptOssAttention: a
# "sliding_attention" layer attends through config.sliding_window, any other with no window)
LAYER_TYPES = ("sliding_attention", "full_attention")
GPT_OSS_WINDOW = 128  # GptOssConfig's sliding_window default
GPT_OSS_SWIGLU_LIMIT = 7.0  # GptOssConfig's swiglu_limit default


def _gpt_oss(raw: dict, where: str, common: dict, head_dim: int, taken: tuple[str, ...]) -> ModelConfig:
    """gpt-oss (openai/gpt-oss-120b, -20b): every layer MoE (num_local_experts of intermediate_size, top
    num_experts_per_tok, router and experts with biases, clamped SwiGLU), GQA with biases on q, k, v and o
    and a learned sink logit per head, layer_types alternating sliding-window and full attention."""
    w = lambda k, **kw: _whole(raw, k, where, **kw)  # noqa: E731
    L = common["num_layers"]
    taken = list(taken)
    if raw.get("sliding_window") is None:
        taken.append(f"sliding_window = {GPT_OSS_WINDOW} (GptOssConfig's default; the config has none)")
    window = w("sliding_window", default=GPT_OSS_WINDOW)
    kinds = _layer_types(raw, L, where)
    if kinds is None:  # GptOssConfig: "sliding_attention" if (i + 1) % 2 else "full_attention"
        kinds = [LAYER_TYPES[i % 2] for i in range(L)]
        taken.append("layer_types: sliding_attention and full_attention alternating from layer 0 "
                     "(GptOssConfig's default; the config has none)")
    limit = raw.get("swiglu_limit", GPT_OSS_SWIGLU_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
        raise ModelError(f"{where}swiglu_limit: must be a number > 0, got {shown(limit)}")
    ffn = w("intermediate_size")
    bias = _flag(raw, "attention_bias", where, default=True)  # GptOssConfig's default
    cfg = ModelConfig(
        **common,
        qk_head_dim=head_dim,
        v_head_dim=head_dim,
        intermediate_size=ffn,
        qkv_bias=bias,
        out_bias=bias,
        num_experts=w("num_local_experts"),
        experts_per_token=w("num_experts_per_tok"),
        moe_intermediate_size=ffn,
        router_learned_bias=True,
        expert_bias=True,
        attention_sinks=True,
        sliding_window=window,
        sliding_layers=tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention"),
        swiglu_limit=float(limit),
        defaults_taken=tuple(taken),
    )
    return _checked(cfg, where)


def _dropout(raw: dict, key: str, where: str) -> float:
    value = raw.get(key, 0.1)  # GPT2Config's default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{where}{key}: must be a probability in [0, 1), got {shown(value)}")
    return float(value)


def _checked(cfg: ModelConfig, where: str) -> ModelConfig:
    if cfg.hidden_size % cfg.num_heads and cfg.model_type == "gpt2":
        raise ModelError(f"{where}n_head: must divide n_embd ({cfg.hidden_size}), got {cfg.num_heads}")
    if cfg.moe and cfg.experts_per_token > cfg.num_experts:
        raise ModelError(
            f"{where}num_experts_per_tok: must be <= the number of experts ({cfg.num_experts}), "
            f"got {cfg.experts_per_token}"
        )
    return cfg


def read(path: str | Path, where: str | None = None) -> ModelConfig:
    """Read and normalise a config.json file."""
    return from_hf(read_raw(path), f"{path}: " if where is None else where)


def read_raw(path: str | Path) -> dict:
    """A config.json file's fields, unchecked (errors name the file)."""
    path = Path(path)
    try:
        raw = json.loads(limits.read_text(path))  # size-capped: /dev/zero is not a config
        problem = None if isinstance(raw, dict) else "expected a JSON object of config fields"
    except limits.TooBig:
        problem = f"more than {limits.MAX_SCENARIO_BYTES // 1024**2} MiB, too large to be a model config"
    except FileNotFoundError:
        problem = "model config file not found"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot read model config: {exc}"
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or nesting too deep
        problem = f"not valid JSON: {str(exc)[:120]}"
    if problem:
        raise ModelError(f"{path}: {problem}")
    return raw


# The HF fields each family's reader reads (a field any value of which the reader checks or uses), declared
# beside the readers rather than recorded from a run: what a reader reads can depend on the values (DeepSeek
# reads its MoE fields only when n_routed_experts > 0), and an inline field must be judged before the read.
# tests/test_inline_fields.py proves each reader reads exactly its tuple (a bogus value in any other field
# changes nothing).  An inline ``[model]`` field outside the scenario's family's tuple is refused.
_COMMON = ("model_type architectures hidden_size num_hidden_layers vocab_size num_attention_heads "
           "num_key_value_heads head_dim tie_word_embeddings").split()
_LLAMA = [*_COMMON, "intermediate_size", "attention_bias"]
_DEEPSEEK_MOE = ("first_k_dense_replace n_routed_experts n_shared_experts moe_intermediate_size num_experts_per_tok "
                 "n_group topk_group num_nextn_predict_layers").split()
FAMILY_FIELDS: dict[str, frozenset[str]] = {f: frozenset(keys) for f, keys in {
    "llama": [*_LLAMA, *WINDOW_FIELDS],  # the window's fields: Mistral's, Qwen2's and Qwen3's (_hf_window)
    "mixtral": [*_LLAMA, "num_local_experts", "num_experts_per_tok"],
    "qwen_moe": [*_LLAMA, "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                 "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers", *WINDOW_FIELDS],
    "deepseek": [*(k for k in _COMMON if k != "head_dim"), *_DEEPSEEK_MOE, "intermediate_size", "moe_layer_freq",
                 "topk_method", "quantization_config", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                 "qk_rope_head_dim", "v_head_dim"],  # MLA: head sizes from the qk_/v_ fields, not head_dim
    "glm4_moe": [*_LLAMA, *_DEEPSEEK_MOE, *GLM4_MOE_DEFAULTS],
    "gpt2": ["model_type", "architectures", "vocab_size", "tie_word_embeddings", "n_embd", "n_layer", "n_head",
             "n_inner", "n_positions", "attn_pdrop", "resid_pdrop", "embd_pdrop"],
    "nemotron": [*_LLAMA, "hidden_act", "mlp_bias", "partial_rotary_factor"],
    "llama4": [*_LLAMA, "text_config", "num_local_experts", "num_experts_per_tok", "moe_layers",
               "no_rope_layers", *LLAMA4_DEFAULTS],
    "gpt_oss": [*_LLAMA, "num_local_experts", "num_experts_per_tok", "sliding_window", "layer_types",
                "swiglu_limit"],
}.items()}

# Every HF field name some family reads: what ``[model]`` accepts inline.
INLINE_FIELDS = frozenset().union(*FAMILY_FIELDS.values())

# The fields the readers take as whole numbers (``_whole``).  A config FILE may carry 4096.0 (JSON writers do) and
# is read as 4096; inline in a scenario the user typed it, so it is refused as `run` refuses a float count
# (check_inline).  tests/test_s18r_polish.py proves this is exactly the fields a reader refuses 7.5 in.
INTEGER_FIELDS = frozenset(
    "attention_chunk_size decoder_sparse_step first_k_dense_replace head_dim hidden_size interleave_moe_layer_step "
    "intermediate_size intermediate_size_mlp kv_lora_rank max_window_layers moe_intermediate_size moe_layer_freq n_embd "
    "n_group n_head n_inner n_layer n_positions n_routed_experts n_shared_experts no_rope_layer_interval num_attention_heads "
    "num_experts num_experts_per_tok num_hidden_layers num_key_value_heads num_local_experts num_nextn_predict_layers "
    "q_lora_rank qk_nope_head_dim qk_rope_head_dim shared_expert_intermediate_size sliding_window topk_group "
    "v_head_dim vocab_size".split())

# A family's field one of its model_types does not read: Qwen2-MoE's attention takes hidden / heads whatever
# head_dim says (docs/model.md "Reading a config"), Qwen3-MoE's reads it; Qwen3-MoE's MoE block has no shared
# expert (transformers' Qwen3MoeSparseMoeBlock: a gate and the routed experts), Qwen2-MoE's reads its size.
_NOT_READ = {"qwen2_moe": frozenset({"head_dim"}),
             "qwen3_moe": frozenset({"shared_expert_intermediate_size", "max_window_layers", "layer_types"}),
             "llama": frozenset(WINDOW_FIELDS),  # LlamaConfig has no window
             "mistral": frozenset({"use_sliding_window", "max_window_layers", "layer_types"})}  # fmt: skip
# What Llama 4's text_config holds: its family's fields but those of the outer config.
_TEXT_CONFIG_FIELDS = FAMILY_FIELDS["llama4"] - {"model_type", "architectures", "text_config"}


def fields_of(mt: str) -> frozenset[str]:
    """The HF fields the reader of ``mt`` reads."""
    return FAMILY_FIELDS[FAMILIES[mt]] - _NOT_READ.get(mt, frozenset())


def check_inline(inline: dict, mt: str) -> None:
    """Refuse an inline ``[model]`` field that ``mt``'s reader does not read, and inside an inline
    ``[model.text_config]`` table a field Llama 4's text model does not read: a user who typed it believes it
    took effect.  (A config file's other fields stay ignored: HF configs carry many we do not read.)"""
    _refuse_unread(inline, fields_of(mt), "model.", f'model_type "{mt}"')
    _refuse_floats(inline, "model.")
    if isinstance(inline.get("text_config"), dict):
        _refuse_unread(inline["text_config"], _TEXT_CONFIG_FIELDS, "model.text_config.", "Llama 4's text model")
        _refuse_floats(inline["text_config"], "model.text_config.")


def _refuse_floats(fields: dict, prefix: str) -> None:
    """An integer field written as a float (hidden_size = 2048.0): `run`'s line for a float count."""
    for key, value in fields.items():
        if key in INTEGER_FIELDS and isinstance(value, float):
            raise ModelError(f"{prefix}{key}: must be a whole number, got {shown(value)}")


def _refuse_unread(keys, own: frozenset[str], prefix: str, reader: str) -> None:
    for key in keys:
        if key not in own:
            close = difflib.get_close_matches(key, own, n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ModelError(f'{prefix}{key}: not read for {reader} (its fields: {", ".join(sorted(own))})' + hint)
