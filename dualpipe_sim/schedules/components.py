"""The component vocabulary of the [chunk] model: what an action is made of, named.

An action of the component model is ``layers`` MoE layers, each made of compute
and all-to-all components (costs.py times them, channels.py lays them out).  The
trace records each row's component as its ``part`` index, so everything that
reads a trace (metrics, model/buffers.py, the plots, the Chrome export) names
parts through this module and never imports the cost model.  What each
component needs inside an action is stated in costs.py's docstring.
"""

from __future__ import annotations

from enum import IntEnum

from .rules import RULES, Channel, Kind


class Component(IntEnum):
    """A component of one MoE layer; the value is the trace's ``part`` index, the name the [chunk] key.

    One layer's forward is 0-3 in order; its backward is 4-9 in order (combine
    backward first, as the gradient enters through the layer's output), with
    each weight-gradient part right after the input-gradient part it belongs
    to, as DeepSeek-V3's Figure 4 places them."""

    attn_forward = 0
    dispatch_forward = 1
    mlp_forward = 2
    combine_forward = 3
    combine_backward = 4
    mlp_backward_input = 5
    mlp_backward_weight = 6
    dispatch_backward = 7
    attn_backward_input = 8
    attn_backward_weight = 9

    @property
    def channel(self) -> Channel:
        return _CHANNEL.get(self, Channel.COMPUTE)

    @property
    def grad(self) -> Kind:
        """Which pass the component belongs to: F (forward), I (input-gradient) or W (weight-gradient)."""
        return _PASS[self]

    @property
    def input_part(self) -> "Component | None":
        """The input-gradient component a weight-gradient component needs (None for the others)."""
        return Component[self.name.replace("_weight", "_input")] if self.grad == Kind.W else None

    @property
    def may_be_zero(self) -> bool:
        """All-to-all (a dense layer has none) and weight-gradient parts may cost 0."""
        return self.channel == Channel.A2A or self.grad == Kind.W


_CHANNEL = {c: Channel.A2A for c in (Component.dispatch_forward, Component.combine_forward,
                                    Component.combine_backward, Component.dispatch_backward)}  # fmt: skip
_PASS = {c: Kind.F if c.name.endswith("_forward") else Kind.W if c.name.endswith("_weight") else Kind.I
         for c in Component}  # fmt: skip
COMPONENTS = tuple(c.name for c in Component)  # part index -> name
A2A_PARTS = tuple(c for c in Component if c.channel == Channel.A2A)
WEIGHT_PARTS = tuple(c for c in Component if c.grad == Kind.W)
# Which passes an op kind runs (rules.RULES): a split backward I has no W parts, a W op runs only the W parts.
OP_PASSES = {k: rule.passes for k, rule in RULES.items()}
# One layer's components per op kind, in layer order.
LAYER_PARTS = {k: tuple(c for c in Component if c.grad in passes) for k, passes in OP_PASSES.items()}
