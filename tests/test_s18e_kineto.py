"""s18e: inputs/kineto.py's attribution edges, on hand-written trace events (planted bugs s18e-kineto-*).

Each trace is a few events written here: an annotation (user_annotation) on CPU thread (1, 1), launches
(cuda_runtime) that name a GPU event by args.correlation, and the GPU events (kernel) on device pid 0."""

import pytest

from dualpipe_sim.inputs.kineto import DEEPSEEK_NAMES, TraceError, attribute

T0 = 1_700_000_000_000_000.0  # a Kineto-like epoch time in us


def annotation(name, ts, dur):
    return {"ph": "X", "cat": "user_annotation", "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur}


def launched(corr, cpu_ts, gpu_ts, dur, name="k"):
    """The launch at cpu_ts and its kernel at gpu_ts (us), tied by correlation ``corr``."""
    return [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": cpu_ts, "dur": 1,
             "args": {"correlation": corr}},
            {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": gpu_ts, "dur": dur,
             "args": {"stream": 7, "correlation": corr}}]  # fmt: skip


def test_a_launch_at_the_annotations_first_microsecond_is_inside_it():
    """The window [ts, ts + dur] holds its start: a kernel launched at ts belongs to it."""
    events = [annotation("attn(F)", T0, 50), *launched(1, T0, T0 + 10, 5), *launched(2, T0 + 20, T0 + 30, 5)]
    p = attribute(events, DEEPSEEK_NAMES)
    assert p.unattributed == 0
    assert [k.component for k in p.kernels] == ["attn_forward", "attn_forward"]


def test_nested_launch_at_the_inner_start_goes_to_the_inner_range():
    """attn(F) holds mlp(F) from T0 + 20 to T0 + 50 (mapped both): a launch at T0 + 20 is the inner one's
    (innermost wins); one at T0 + 60, after mlp(F) ended, is attn(F)'s."""
    events = [annotation("attn(F)", T0, 100), annotation("mlp(F)", T0 + 20, 30),
              *launched(1, T0 + 20, T0 + 40, 5, "inner"), *launched(2, T0 + 60, T0 + 70, 5, "outer")]
    p = attribute(events, DEEPSEEK_NAMES)
    assert p.unattributed == 0
    assert {k.name: k.component for k in p.kernels} == {"inner": "mlp_forward", "outer": "attn_forward"}


def test_times_start_at_the_earliest_kernel_whatever_the_file_order():
    """Kernels written latest-first: times are ms from the earliest (T0 + 10), so 0, 0.02 and 0.1 ms starts."""
    events = [annotation("attn(F)", T0, 200),
              *launched(3, T0 + 50, T0 + 110, 4, "c"), *launched(1, T0 + 1, T0 + 10, 5, "a"),
              *launched(2, T0 + 20, T0 + 30, 6, "b")]  # fmt: skip
    p = attribute(events, DEEPSEEK_NAMES)
    got = {k.name: (k.start, k.end) for k in p.kernels}
    assert got["a"] == pytest.approx((0.0, 0.005))
    assert got["b"] == pytest.approx((0.020, 0.026))
    assert got["c"] == pytest.approx((0.100, 0.104))
    assert min(k.start for k in p.kernels) == 0.0


def test_a_stray_early_kernel_is_the_one_the_span_error_names():
    """Three kernels within 20 us and one two hours earlier (its launch inside a long annotation): the error names
    the stray one, traceEvents[2] (the annotation is [0], its launch [1]), 'before' the others by 7200 s."""
    hours2 = 7.2e9
    events = [annotation("attn(F)", T0 - hours2 - 10, hours2 + 100),
              *launched(9, T0 - hours2 - 5, T0 - hours2, 5, "stray"),
              *launched(1, T0, T0 + 1, 5), *launched(2, T0 + 5, T0 + 8, 5), *launched(3, T0 + 10, T0 + 15, 5)]
    with pytest.raises(TraceError) as got:
        attribute(events, DEEPSEEK_NAMES, "t.json")
    msg = str(got.value)
    # 7.2e9 us + 8 us before the middle start (T0 + 8 of the sorted four), in s to 3 digits
    assert msg.startswith("t.json: traceEvents[2] ('stray') starts 7.2e+03 s before the trace's other kernels")
