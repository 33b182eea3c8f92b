"""Megatron-core's selective recompute by module (``memory.recompute_modules``).

``--recompute-granularity selective --recompute-modules <list>`` (megatron/training/arguments.py and
transformer/transformer_config.py @ 1e05700, the same at 6a6cd478, the Megatron-LM of Pai-Megatron-Patch
2b201af): the choices below, default ["core_attn"].  Two mechanisms, both in tensor_parallel/random.py:
``checkpoint`` (CheckpointFunction: the module's forward under no_grad keeping only its inputs, rerun whole when
its output's gradient arrives: "core_attn", "mlp", "moe") and ``CheckpointWithoutOutput`` (the output's storage is
freed after its consumer's forward and, when the gradient of that consumer's output arrives, the module reruns and
its output is copied back into the freed storage: "layernorm", "moe_act", "mla_up_proj").  activations.py drops
what each stops storing; kernels.py reruns its forward kernels in the input gradient.  docs/model.md ("Selective
recompute by module") gives the sources.
"""

from __future__ import annotations

MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe")  # Megatron-core's choices
DEFAULT = ("core_attn",)  # transformer_config.py: recompute_modules None -> ['core_attn']


def selected(policy: str, modules: tuple[str, ...] | None) -> frozenset[str]:
    """The modules recomputed: none but with "selective", whose list is ``modules`` or Megatron-core's default."""
    if policy != "selective":
        return frozenset()
    return frozenset(DEFAULT if modules is None else modules)


def core_attn_reruns(mods: frozenset[str], eager: bool, legacy: bool) -> bool:
    """Whether the checkpointed attention core reruns in the backward.  Megatron-core checkpoints its core
    attention whatever the kernel (transformer/attention.py @ 1e05700 lines 160-163, 180-217, 704-713: Transformer
    Engine's fused or flash DotProductAttention included; transformer_config.py lines 785-791 only warns), as TE's
    own ``checkpoint_core_attention`` does (release_v0.8 transformer.py lines 552-568).  Megatron-LM's own
    ParallelAttention (``model.runtime = "megatron-lm-2021"``) checkpoints only its eager core: 6985e58 had no
    selective recompute, cfd2e21 (Apr 2022) added it with no flash path, and flash-attn came in d693034 (Dec 2022)
    unchecked (megatron/model/transformer.py lines 562-576: ``if not self.use_flash_attn``)."""
    return "core_attn" in mods and (eager or not legacy)
