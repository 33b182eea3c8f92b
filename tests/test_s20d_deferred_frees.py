"""s20d: the deferred output-layer wgrad buffers (model.defer_embedding_wgrad) are freed as the drain's GEMMs that read
them finish, not held past the drain's end.  Megatron-core core_r0.11.0 (7c00175) megatron/core/utils.py
drain_embedding_wgrad_compute, lines 592-616: each loop pops micro-batch i's output gradient, runs its wgrad GEMM and
drops it and its (gathered) input (``all_gathered_input[i % 2], grad_output = None, None``); the last after the loop.

The tiny Llama of tests/test_s19i_review.py: 1F1B, 2 stages x 4 micro-batches, TP 4, the head on rank 1; all 4
micro-batches deferred.  One deferred micro-batch holds 8,192 x 8,000 x 2 + (2,048 or 8,192) x 256 x 2 bytes."""

import numpy as np
import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import DRAIN
from dualpipe_sim.inputs.resolve import resolve
from dualpipe_sim.model import buffers
from dualpipe_sim.schedules.rules import KIND_CODES
from test_s19i_review import STEP, deferred, write


def events(tmp_path, sp: bool):
    path = write(tmp_path, STEP)
    if not sp:
        path.write_text(path.read_text().replace("sequence_parallel = true", "sequence_parallel = false"))
    sc = deferred(path, 4)
    inputs = resolve(sc)
    trace = simulation.run(sc).trace
    rank, time, delta = buffers.deferred_events(trace, inputs.derived.setup, inputs.costs.deferred)
    (drain,) = trace.step[trace.step["kind"] == DRAIN]
    return trace, rank, time, delta, drain


def test_without_sequence_parallelism_each_gemm_frees_its_micro_batch_at_quarters_of_the_drain(tmp_path):
    """No all-gather: the drain is 4 equal GEMMs, so the frees fall at 1/4, 2/4, 3/4 and the end of the DRAIN row; the
    allocations at the ends of rank 1's 4 backwards.  Before s20d there were no frees: the 4 x 135,266,304 B stayed."""
    trace, rank, time, delta, drain = events(tmp_path, sp=False)
    held = 8192 * 8000 * 2 + 8192 * 256 * 2  # 135,266,304
    assert rank.tolist() == [1] * 8 and delta.tolist() == [held] * 4 + [-held] * 4
    c = trace.compute
    backs = c[(c["rank"] == 1) & (c["kind"] == KIND_CODES["B"])]
    assert len(backs) == 4 and sorted(time[:4]) == pytest.approx(sorted(backs["end"]))
    length = drain["end"] - drain["start"]
    assert time[4:] == pytest.approx(drain["start"] + length * np.array([0.25, 0.5, 0.75, 1.0]))
    # the running sum: 4 held from the last backward to the first GEMM's end (the peak), nothing after the drain
    order = np.lexsort((delta > 0, time))
    running = np.cumsum(delta[order])
    assert running.max() == 4 * held and running[-1] == 0
    assert time[order][np.argmax(running)] == max(time[:4]) and min(time[4:]) > max(time[:4])


def test_with_sequence_parallelism_the_first_all_gather_comes_first(tmp_path):
    """Under sequence parallelism the drain waits for the first input's all-gather, then runs GEMMs 0-2 each beside the
    next input's all-gather, then GEMM 3 alone: the frees after GEMMs 0-2 are equally spaced, the last is the row's
    end, one GEMM alone (no longer than one beside an all-gather) after the third, and the first comes after more than
    a quarter of the drain (the waited all-gather before it)."""
    trace, rank, time, delta, drain = events(tmp_path, sp=True)
    frees = time[4:]
    gaps = np.diff(frees)
    assert gaps[0] == pytest.approx(gaps[1]) and 0 < gaps[2] <= gaps[0] * (1 + 1e-9)
    assert frees[-1] == pytest.approx(drain["end"])
    assert frees[0] - drain["start"] > gaps[0]
    assert delta.sum() == 0 and delta[:4].tolist() == [8192 * 8000 * 2 + 2048 * 256 * 2] * 4
