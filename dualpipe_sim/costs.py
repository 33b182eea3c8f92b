"""The cost model: how long each op takes and how much memory it holds.

Per-stage values are tuples indexed by model stage, so heterogeneous stages
(an embedding-heavy first stage, a loss-heavy last one) need no special case.
The engine asks this object for durations; it never reads a scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import FB, Op


@dataclass(frozen=True)
class CostModel:
    forward: tuple[float, ...]  # F per stage
    backward: tuple[float, ...]  # B (= I + W) per stage
    weight: tuple[float, ...]  # W per stage
    overlapped: tuple[float, ...] | None = None  # FB per forward stage; None = F + B (no gain)
    p2p: float = 0.0  # one activation or gradient between two ranks
    activation_bytes: tuple[float, ...] = (1.0,)
    parameter_bytes: tuple[float, ...] = (1.0,)

    @classmethod
    def uniform(
        cls,
        stages: int,
        forward: float = 1.0,
        backward: float = 2.0,
        weight: float | None = None,
        overlapped: float | None = None,
        p2p: float = 0.0,
        activation_bytes: float = 1.0,
        parameter_bytes: float = 1.0,
    ) -> "CostModel":
        """Same costs on every stage; W defaults to half of B."""
        rep = lambda x: (float(x),) * stages  # noqa: E731
        return cls(
            forward=rep(forward),
            backward=rep(backward),
            weight=rep(backward / 2 if weight is None else weight),
            overlapped=None if overlapped is None else rep(overlapped),
            p2p=float(p2p),
            activation_bytes=rep(activation_bytes),
            parameter_bytes=rep(parameter_bytes),
        )

    def duration(self, op: Op) -> float:
        s = op.stage
        if op.kind == "F":
            return self.forward[s]
        if op.kind == "B":
            return self.backward[s]
        if op.kind == "I":
            return self.backward[s] - self.weight[s]
        return self.weight[s]  # W

    def pair_duration(self, pair: FB) -> float:
        """Wall time of an overlapped forward+backward pair on one rank."""
        if self.overlapped is not None:
            return self.overlapped[pair.forward.stage]
        return self.duration(pair.forward) + self.duration(pair.backward)


def mean_costs(costs: CostModel, stages: int) -> tuple[float, float, float, float]:
    """(F, B, W, F&B) averaged over stages: closed forms assume uniform stages."""
    mean = lambda xs: sum(xs[:stages]) / stages  # noqa: E731
    F, B, W = mean(costs.forward), mean(costs.backward), mean(costs.weight)
    FB = mean(costs.overlapped) if costs.overlapped is not None else F + B
    return F, B, W, FB
