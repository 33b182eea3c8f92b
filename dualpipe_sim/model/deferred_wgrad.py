"""The output layer's deferred weight gradients (``model.defer_embedding_wgrad``; docs/model.md, "The output layer's
deferred weight gradients (s18n)").

Megatron-core's ``defer_embedding_wgrad_compute`` with ``wgrad_deferral_limit`` N (NVIDIA/Megatron-LM core_r0.11.0
7c00175 and 24.09-alpha.rc0 dd18205, the same code): on the last pipeline rank the output layer's forward keeps its
input for the first N micro-batches (``ColumnParallelLinear.forward``, tensor_parallel/layers.py lines 928-933) and
their backward keeps the output gradient instead of running the wgrad GEMM and, with sequence parallelism, the input's
re-gather (``LinearWithGradAccumulationAndAsyncCommunication.backward``, lines 446-475: ``wgrad_compute = False``); the
input gradient's reduce-scatter still runs, waited for with no GEMM beside it.  After the rank's last backward (and
its last send), before ``finalize_model_grads``, ``finish_embedding_wgrad_compute`` (pipeline_parallel/schedules.py
lines 528-543, called at 1470 and 1872) runs ``drain_embedding_wgrad_compute`` (utils.py lines 531-616) on the compute
stream: the first input's all-gather waited for (``async_op=False``), then for each of the N inputs its GEMM beside
the next one's all-gather (``async_op=True``, waited for after the GEMM), then the last GEMM alone.

This module times both sides with the kernel model: what one deferred micro-batch's backward saves (input-gradient
and weight-gradient passes) and how long the drain of N runs; and what each deferred micro-batch keeps in memory
until the drain (``held_bytes``: its two buffered tensors, which model/buffers.py holds from its backward's end).
"""

from __future__ import annotations

from typing import NamedTuple

from . import kernels


class Deferral(NamedTuple):
    """What deferring the output layer's wgrad of ``count`` micro-batches changes, on the stage holding the head."""

    stage: int  # the model stage holding the output layer
    count: int  # micro-batches 0 .. count - 1 defer (min of the key and the micro-batches)
    input_less: float  # ms one deferred micro-batch's input-gradient pass saves (the re-gather beside the dgrad GEMM)
    weight_less: float  # ms its weight-gradient pass saves (the wgrad GEMM; the reduce-scatter then waits alone)
    drain: float  # ms of the drain: the count GEMMs and their inputs' all-gathers after the rank's last backward


def _passes(cfg, rates, lay, deferred: bool) -> dict[str, float]:
    tb = kernels.Table(rates, lay, cfg)
    kernels.output_layer_backward(tb, cfg, lay, deferred)
    return dict(kernels.passes(tb.rows))


def drain_ms(cfg, rates, lay, count: int) -> float:
    """drain_embedding_wgrad_compute of ``count`` micro-batches (ms): with sequence parallelism the first all-gather
    alone, then count - 1 GEMMs each beside the next input's all-gather (exposed beyond it), then the last GEMM."""
    return gemm_ends(cfg, rates, lay, count)[-1] if count > 0 else 0.0


def gemm_ends(cfg, rates, lay, count: int) -> list[float]:
    """When each of the drain's ``count`` wgrad GEMMs ends, ms from the drain's start, in the order it runs them (the
    buffers' order, ``pop(0)``: the first micro-batch deferred first); the last is the drain's length.  Micro-batch
    j's buffered tensors are dropped as its GEMM finishes (utils.py lines 592-616: ``grad_output_buffer.pop(0)``, then
    ``all_gathered_input[i % 2], grad_output = None, None`` after ``wgrad_compute``): model/buffers.py frees them there."""
    if count <= 0:
        return []
    n, h, ab = lay.tokens, cfg.hidden_size, lay.act_bytes
    v = -(-cfg.vocab_size // lay.tensor)

    def gemm(tb: kernels.Table) -> None:
        tb.gemm("deferred output layer wgrad", "mlp_backward_weight", h, v, n, fp8=False, out_bytes=lay.wgrad_out)

    def ms(build) -> float:
        tb = kernels.Table(rates, lay, cfg)
        build(tb)
        return sum(k.ms for k in tb.rows)

    one = ms(gemm)
    if not (lay.sequence_parallel and lay.tensor > 1):  # the whole input is on the rank: the GEMMs alone
        return [(j + 1) * one for j in range(count)]
    first = ms(lambda tb: tb.comm("tp all-gather (deferred input, waited)", "mlp_backward_weight", "all_gather",
                                  n * h * ab, lay.tensor, "nvlink"))

    def beside(tb: kernels.Table) -> None:
        with tb.nccl_beside("tp all-gather (next deferred input)", "mlp_backward_weight", "all_gather", n * h * ab):
            gemm(tb)

    each = ms(beside)  # GEMM j (j < count - 1) beside input j + 1's all-gather, waited for after it
    return [first + (j + 1) * each for j in range(count - 1)] + [first + (count - 1) * each + one]


def held_bytes(st) -> float:
    """Bytes one deferred micro-batch keeps on its rank from its backward until the drain (model/buffers.py): the
    output layer's input, as ``ColumnParallelLinear.forward`` appends it to ``embedding_activation_buffer`` (the
    rank's tokens / TP shard under sequence parallelism, gathered only in the drain; the whole input without), and the
    output gradient its backward appends to ``grad_output_buffer`` (tokens x vocabulary / TP, the logits' dtype)."""
    lay, h = st.layout, st.cfg.hidden_size
    n, v = lay.tokens, -(-st.cfg.vocab_size // lay.tensor)
    shard = n / lay.tensor if lay.sequence_parallel and lay.tensor > 1 else n
    return (n * v + shard * h) * lay.act_bytes


def figures(derived, key: int, microbatches: int) -> Deferral | None:
    """The deferral of ``key`` micro-batches (``model.defer_embedding_wgrad``) on a derived model; None when 0."""
    if key <= 0:
        return None
    st = derived.setup
    stage = next(s for s, held in enumerate(st.stages) if held.head)
    cfg, rates, lay = st.cfg, st.rates, st.layout
    full, light = _passes(cfg, rates, lay, False), _passes(cfg, rates, lay, True)
    count = min(key, microbatches)
    return Deferral(stage, count, full[kernels.I] - light[kernels.I], full[kernels.W] - light[kernels.W],
                    drain_ms(cfg, rates, lay, count))
