"""The vocabulary-parallel embedding's tensor-parallel collective, as each runtime runs it (s12l).

Without sequence parallelism every runtime the rows pin all-reduces the embedding's output in the forward,
blocking, and runs nothing in the backward (the all-reduce's backward is the identity): Megatron-LM 2021
(6985e58 ``mpu/layers.py`` lines 178-198, VocabParallelEmbedding.forward -> ``reduce_from_tensor_model_parallel_region``;
``mpu/mappings.py`` lines 22-32 and 92-105), Megatron-LM 2022 (80389ef ``mpu/layers.py`` lines 182-202),
Megatron-DeepSpeed (8387ae1 ``mpu/layers.py`` lines 222-251), Megatron-core (1e05700 ``tensor_parallel/layers.py``
lines 270-278).  The model charged a reduce-scatter forward and an all-gather backward whatever the layout.

Hand-worked on Narayanan et al.'s GPT 3.6B (n21-3.6b: A100, TP 2, no SP, fp16, micro-batch 16 x 2,048 tokens,
h 3,072): the embedding's output is 32,768 x 3,072 x 2 B = 201,326,592 B.  The A100 preset's measured NVLink bus
bandwidth (nccl-tests all_reduce_perf rows, docs/model.md) is 174.18 GB/s at 128 MiB and 213.87 GB/s at 256 MiB,
linear in log2(bytes) between: at 192 MiB 174.18 + 39.69 x log2(1.5) = 197.397 GB/s.  An all-reduce moves
2 (t - 1) / t of the bytes over the bus (1 at TP 2): 201,326,592 / 197.397e9 = 1.0199 ms; a reduce-scatter or an
all-gather half that, 0.5100 ms each, so the forward's collective doubles and the backward's 0.51 ms goes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels

# the head's input gradient there is the same n x h fp16 tensor at TP 2: its figures, worked out by hand in that file
from test_tp_grad_all_reduce import ALL_REDUCE, BUS, N21, T
from test_tp_grad_all_reduce import GRAD as OUT
from test_tp_grad_all_reduce import REDUCE_SCATTER as HALF  # a reduce-scatter or an all-gather

ROOT = Path(__file__).resolve().parent.parent
BACKWARD = ("mlp_backward_input", "mlp_backward_weight")


def _comms(overrides=(), positions=True):
    st = derive.setup(scenario.load(N21, list(overrides)))
    assert st.layout.tensor == T and st.cfg.max_positions == 2048
    cfg = st.cfg if positions else replace(st.cfg, max_positions=0)  # rotary: no learned position table
    return st, [k for k in kernels.embedding(cfg, st.rates, st.layout) if k.kind == "comm"]


def test_hand_worked_figures():
    assert OUT == 16 * 2048 * 3072 * 2 == 201_326_592 and BUS == pytest.approx(197.397e9, rel=1e-5)
    assert ALL_REDUCE == pytest.approx(1.01991e-3, rel=1e-5) and HALF == pytest.approx(0.509955e-3, rel=1e-5)


@pytest.mark.parametrize("runtime", ["megatron-lm-2021", "megatron-core"])
def test_no_sp_forward_all_reduce_exposed_and_no_backward_collective(runtime):
    st, comms = _comms([f"model.runtime={runtime}"])
    assert not st.layout.sequence_parallel
    assert len(comms) == 1
    (ar,) = comms
    assert (ar.name, ar.component) == ("tp all-reduce", "mlp_forward")
    assert ar.bytes == OUT and ar.seconds == pytest.approx(ALL_REDUCE, rel=1e-9)  # blocking: whole
    assert not any(k.component in BACKWARD for k in comms)


def test_sp_reduce_scatter_forward_all_gather_backward():
    """With sequence parallelism, a model without learned positions in Megatron-core (1e05700
    ``language_model_embedding.py`` lines 48-53, ``reduce_scatter_embeddings``): the forward reduce-scatters along
    the sequence and its backward all-gathers the gradient."""
    st, comms = _comms(["model.runtime=megatron-core", "parallel.sequence_parallel=true"], positions=False)
    assert st.layout.sequence_parallel
    got = {(k.name, k.component): k for k in comms}
    assert set(got) == {("tp reduce-scatter", "mlp_forward"), ("tp all-gather (grad)", "mlp_backward_weight")}
    for k in got.values():
        assert k.bytes == OUT and k.seconds == pytest.approx(HALF, rel=1e-9)


def test_tp1_no_collective():
    st = derive.setup(scenario.load(ROOT / "scenarios" / "validation" / "n21-1.7b.toml", []))
    assert st.layout.tensor == 1
    assert not [k for k in kernels.embedding(st.cfg, st.rates, st.layout) if k.kind == "comm"]
