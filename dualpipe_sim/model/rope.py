"""Rotary embedding without its fused kernel (``model.rope_fusion = false``): Megatron-core's
``apply_rotary_pos_emb_bshd`` as eager PyTorch ops, and its backward as autograd runs it.

Read from NVIDIA/Megatron-LM @ core_r0.8.0 ``megatron/core/models/common/embeddings/rotary_pos_embedding.py``
lines 156-198 (``_rotate_half``, ``apply_rotary_pos_emb_bshd``), called once for q and once for k per layer
(``transformer/attention.py`` lines 300-310) when ``config.apply_rope_fusion`` is False (lines 225-250).  For one tensor ``t`` of ``elems``
elements whose first ``rotated`` (per head: ``rot_dim`` of ``head_dim``) are turned, ``freqs`` being fp32
``[s, 1, 1, rot_dim]`` (``s x rot_dim = freq_elems``):

forward, 6 kernels over ``t`` and 4 over ``freqs`` (docs/model.md "Unfused RoPE"):
  ``torch.cos(freqs).to(dtype)``, ``torch.sin(freqs).to(dtype)``: 4 kernels, each read + write of freq_elems
  (fp32 -> fp32, fp32 -> dtype), computed on every call (no cache at core_r0.8.0);
  ``t * cos_``: read + write rotated (and cos_ once); ``-x2``: read + write rotated / 2;
  ``torch.cat((-x2, x1))``: read + write rotated; ``* sin_``: as ``* cos_``; ``+``: two reads, one write;
  ``torch.cat((t, t_pass))``: read + write elems (cat always writes a new tensor).
backward (pytorch ``tools/autograd/derivatives.yaml``): the cats' backwards are narrow views and the add's passes
its gradient through (no kernels); then ``grad * sin_``, ``neg``, the chunk's ``split_backward`` (a cat of the two
halves' gradients), ``grad * cos_``, the add of the two gradients ``t[..., :rot_dim]`` got; ``slice_backward`` for
each slice of ``t`` (``zeros`` of elems, then a copy of the slice; ``t[..., :rot_dim]`` is ``t`` itself when the
whole head turns, PyTorch's applySlice skips a full slice, and a copy of nothing launches nothing); the add of the
two whole-size gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

FREQS_BYTES = 4  # RotaryEmbedding's inv_freq is fp32 and so are freqs and emb (rotary_pos_embedding.py lines 77-78, 102-106)


@dataclass(frozen=True)
class Pass:
    """Kernels of one pass over one tensor: big (over t), small (over freqs), and their bytes."""

    launches: int
    nbytes: float
    freq_launches: int = 0
    freq_bytes: float = 0.0


def forward(elems: float, rotated: float, freq_elems: float, ab: float) -> Pass:
    """apply_rotary_pos_emb_bshd on one tensor (module docstring)."""
    big = (2 + 1 + 2 + 2 + 3) * rotated + 2 * elems  # *cos, neg, cat, *sin, +, final cat
    cos_sin = 2 * ((FREQS_BYTES + FREQS_BYTES) + (FREQS_BYTES + ab)) * freq_elems  # cos, .to, sin, .to
    return Pass(6, big * ab + 2 * freq_elems * ab, 4, cos_sin)  # the two multiplies read cos_ and sin_ once


def backward(elems: float, rotated: float, freq_elems: float, ab: float) -> Pass:
    """Its autograd backward on one tensor (module docstring)."""
    launches = 5  # *sin, neg, split_backward's cat, *cos, the add of t[..., :rot_dim]'s two gradients
    nbytes = (2 + 1 + 2 + 2 + 3) * rotated
    if rotated < elems:  # t[..., :rot_dim] is a real slice: zeros, then the gradient copied in
        launches += 2
        nbytes += elems + 2 * rotated
        launches += 1  # t_pass's slice_backward copies its (non-empty) gradient into its zeros
        nbytes += 2 * (elems - rotated)
    launches += 2  # t_pass's zeros, and the add of the two whole-size gradients
    nbytes += elems + 3 * elems
    return Pass(launches, nbytes * ab + 2 * freq_elems * ab)
