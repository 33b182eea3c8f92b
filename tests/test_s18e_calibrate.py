"""s18e: calibrate.py's measurement from a hand-built Profile (planted bugs s18e-calibrate-*).

Two layers on compute stream 7, one ms a component, the layer pairs in two orders:
  layer 0: attn_forward [0, 1], mlp_forward [1, 2], mlp_backward_input [2, 3], attn_backward_input [3, 4]
  layer 1: attn_forward [4, 5], mlp_backward_input [5, 6], mlp_forward [6, 7], attn_backward_input [7, 8]
and on stream 27 dispatch_forward [0.5, 2.5] and [4.5, 6.5] with a piece of layer 0's mlp_forward at [2, 3]
beside them.  Span: 0 to 8 ms."""

import pytest

from dualpipe_sim import calibrate
from dualpipe_sim.inputs.kineto import Kernel, Profile

LAYER0 = ("attn_forward", "mlp_forward", "mlp_backward_input", "attn_backward_input")
LAYER1 = ("attn_forward", "mlp_backward_input", "mlp_forward", "attn_backward_input")


def profile() -> Profile:
    ks = [Kernel(7, 4.0 * n + i, 4.0 * n + i + 1, c, n, f"{c}{n}") for n, order in enumerate((LAYER0, LAYER1))
          for i, c in enumerate(order)]
    ks += [Kernel(27, 0.5, 2.5, "dispatch_forward", 0, "d0"), Kernel(27, 4.5, 6.5, "dispatch_forward", 1, "d1"),
           Kernel(27, 2.0, 3.0, "mlp_forward", 0, "m0-piece")]
    layers = dict.fromkeys((*LAYER0, "dispatch_forward"), 2)
    return Profile(tuple(sorted(ks, key=lambda k: (k.start, k.end, k.stream))), layers, 0, ("0",))


def test_a_tie_between_layer_orders_takes_the_first_layers():
    """Each order is seen once: the first layer's is the channel's order, and layer 1 is noted."""
    cal = calibrate.measure(profile())
    assert cal.order["compute"] == list(LAYER0)
    assert cal.order_notes[0] == "compute: layer 1 runs " + " -> ".join(LAYER1)


def test_a_streams_busy_time_is_the_union_of_its_kernels():
    """Stream 27: [0.5, 2.5] + [4.5, 6.5] of all-to-all and [2, 3] of compute: union [0.5, 3] + [4.5, 6.5] = 4.5 ms
    (not 4 + 1 = 5); all-to-all fills more of it (4 > 1).  Stream 7: eight 1 ms kernels end to end, 8 ms."""
    cal = calibrate.measure(profile())
    assert cal.streams[27] == ("a2a", pytest.approx(4.5))
    assert cal.streams[7] == ("compute", pytest.approx(8.0))
    # mlp_forward's layer 0: [1, 2] on stream 7 and [2, 3] on 27, 2 ms; layer 1 1 ms
    assert cal.components["mlp_forward"].per_layer == pytest.approx((2.0, 1.0))
    assert cal.span == pytest.approx(8.0)


def test_the_span_error_is_a_share_of_the_measured_span():
    """Measured 8 ms, predicted 10: (10 - 8) / 8 = +25.0% (of the measurement, not of the prediction: +20%)."""
    cal = calibrate.measure(profile())
    cal.predicted_span = 10.0
    assert "span (first kernel to last): 8.00 ms measured, 10.00 predicted (+25.0%)" in calibrate.report_text(cal)
    assert "| span, first kernel to last | 8.00 | 10.00 (+25.0%) |" in calibrate.report_markdown(cal)
    cal.predicted_span = 6.0
    assert "6.00 predicted (-25.0%)" in calibrate.report_text(cal)
