"""A model's architecture, read from a Hugging Face ``config.json`` (or the same fields inline).

One normalised :class:`ModelConfig` covers the families the simulator costs:
Llama/Mistral/Qwen-style dense models, Mixtral/Qwen-MoE-style MoE models,
DeepSeek-V2/V3 (MLA attention, shared experts, ``first_k_dense_replace``,
MTP layers) and GPT-2 (LayerNorm, GeLU, biases, learned positions, dropout).
Every problem is a :class:`ModelError` whose one line names the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import limits
from ..errors import shown


class ModelError(ValueError):
    """A model config breaks a rule; the message names the field."""


# head_dim when a config.json leaves it out, as transformers takes it for that model_type: Qwen3Config
# defaults to 128; Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE and Qwen3-MoE take hidden_size // heads (their
# config's own fallback, or their attention module's getattr(config, "head_dim", hidden // heads)).
# docs/model.md "Reading a config" cites each file.
HEAD_DIM_DEFAULTS = {"qwen3": (128, "Qwen3Config's default")}

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
    "gpt2": "gpt2",
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
    "GPT2LMHeadModel": "gpt2",
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
    ffn: str = "swiglu"  # "swiglu" (3 matrices) or "gelu" (2 matrices, GPT-2)
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
    route_groups: int = 0  # DeepSeek node-limited routing: experts in n_group groups (one per node) ...
    route_group_limit: int = 0  # ... of which a token may use topk_group
    mtp_layers: int = 0  # DeepSeek-V3 multi-token-prediction modules
    fp8: bool = False  # the model trains its linears in FP8 (DeepSeek-V3's quantization_config)
    eager_attention: bool = False  # scores materialised (GPT-2 family's default); else flash attention
    # Fields the config left out and what was taken for them, in words (``model --explain`` says so);
    # not part of the architecture, so not compared.
    defaults_taken: tuple[str, ...] = field(default=(), compare=False)

    @property
    def moe(self) -> bool:
        return self.num_experts > 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.moe and i not in self.dense_layers


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
    w = lambda k, **kw: _whole(raw, k, where, **kw)  # noqa: E731
    h, heads = w("hidden_size"), w("num_attention_heads")
    kv = w("num_key_value_heads", default=heads)
    if heads % kv:
        raise ModelError(f"{where}num_key_value_heads: must divide num_attention_heads ({heads}), got {kv}")
    head_dim, taken = _head_dim(raw, mt, h, heads, where)
    common = dict(
        model_type=mt,
        hidden_size=h,
        num_layers=_layers(raw, "num_hidden_layers", where),
        vocab_size=w("vocab_size"),
        num_heads=heads,
        num_kv_heads=kv,
        tie_word_embeddings=_flag(raw, "tie_word_embeddings", where),
    )
    if family == "deepseek":
        return _deepseek(raw, where, common)
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
        shared = w("shared_expert_intermediate_size", default=0, minimum=0)
        extra.update(
            num_experts=w("num_experts"),
            experts_per_token=w("num_experts_per_tok"),
            moe_intermediate_size=w("moe_intermediate_size"),
            shared_intermediate_size=shared,
            shared_expert_gate=shared > 0,
            dense_layers=tuple(i for i in range(L) if i in only or (i + 1) % every),
        )
    cfg = ModelConfig(qk_head_dim=head_dim, v_head_dim=head_dim, intermediate_size=ffn, defaults_taken=taken,
                      **common, **extra)
    return _checked(cfg, where)


def _head_dim(raw: dict, mt: str, h: int, heads: int, where: str) -> tuple[int, tuple[str, ...]]:
    """(head_dim, the default taken in words or ()): the config's own value, else transformers' for ``mt``."""
    if raw.get("head_dim") is not None:
        return _whole(raw, "head_dim", where), ()
    if mt in HEAD_DIM_DEFAULTS:
        value, why = HEAD_DIM_DEFAULTS[mt]
        return value, (f"head_dim = {value} ({why}; the config has no head_dim)",)
    return h // heads, (f"head_dim = hidden_size / num_attention_heads = {h} / {heads} = {h // heads} "
                        f"(transformers' fallback for {mt}; the config has no head_dim)",)


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


# Every HF field name some family reads: what ``[model]`` accepts inline.
INLINE_FIELDS = frozenset(
    """model_type architectures hidden_size num_hidden_layers vocab_size num_attention_heads
    num_key_value_heads head_dim intermediate_size tie_word_embeddings attention_bias
    num_local_experts num_experts num_experts_per_tok moe_intermediate_size
    shared_expert_intermediate_size decoder_sparse_step mlp_only_layers first_k_dense_replace
    moe_layer_freq n_group topk_group n_routed_experts n_shared_experts topk_method q_lora_rank kv_lora_rank
    qk_nope_head_dim qk_rope_head_dim v_head_dim num_nextn_predict_layers quantization_config
    n_embd n_layer n_head n_inner n_positions attn_pdrop resid_pdrop embd_pdrop""".split()
)
