"""Megatron-core's selective recompute by module (``memory.recompute_modules``).

``--recompute-granularity selective --recompute-modules <list>`` (megatron/training/arguments.py and
transformer/transformer_config.py @ 1e05700, the same at 6a6cd478, the Megatron-LM of Pai-Megatron-Patch
2b201af): the choices below, default ["core_attn"].  "layernorm" and "moe_act" use output-discarding
checkpointing (tensor_parallel/random.py ``CheckpointWithoutOutput``): the output's storage is freed after its
consumer's forward and, when the gradient of that consumer's output arrives, the module reruns and its output is
copied back into the freed storage.  activations.py drops what each stops storing; kernels.py reruns its forward
kernels in the input gradient.  docs/model.md ("Selective recompute by module") gives the sources.
"""

from __future__ import annotations

MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe")  # Megatron-core's choices
DEFAULT = ("core_attn",)  # transformer_config.py: recompute_modules None -> ['core_attn']
# Accepted by Megatron-core but not costed here (rejected with a "not modelled" error)
NOT_MODELLED = {
    "mla_up_proj": "the MLA up-projections with RoPE applied rerun before the attention core's backward",
    "moe": "the whole MoE layer (router, dispatch, experts, combine, host syncs) rerun in its input gradient",
}


def selected(policy: str, modules: tuple[str, ...] | None) -> frozenset[str]:
    """The modules recomputed: none but with "selective", whose list is ``modules`` or Megatron-core's default."""
    if policy != "selective":
        return frozenset()
    return frozenset(DEFAULT if modules is None else modules)
