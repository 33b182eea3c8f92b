"""Variability: per-op jitter and per-rank stragglers, as a transformation of durations.

Scenario keys::

    [costs.jitter]
    distribution = "lognormal"   # or "normal", "uniform"
    cv = 0.1                     # coefficient of variation (standard deviation / mean)

    [ranks]
    slowdown = { 3 = 1.2 }       # rank 3 takes 1.2x as long for everything it computes

What changes: each action's timeline (its length and, with the component
model, every component row) is multiplied by one factor,

    factor(rank, action) = slowdown[rank] x jitter(action),

so a slow or unlucky op stretches as a whole, all-to-all components included
(a straggler's kernels delay its own all-to-all phases).  P2P transfers are not
scaled.  ``jitter`` of a plain op is a draw with mean 1 and coefficient of
variation ``cv``; of an FB pair, the mean of its two ops' draws weighted by
their lone durations (the pair is one unit of work on the rank).

Determinism: an op's draw is a pure function of (seed, kind, micro-batch,
stage, direction) -- the seed is hashed by numpy's SeedSequence, the op's
identity mixed in with SplitMix64 -- never of event order, so the same seed
gives the same factors whatever runs first, and two schedules of the same
shape see the same draw for the same op (a fair comparison).  The rank is not
part of the identity: it follows from the op's stage.

Distributions (all mean 1; z standard normal from two hashed uniforms by
Box-Muller, u uniform on (0, 1)):

* ``lognormal``: exp(sigma z - sigma^2 / 2) with sigma^2 = ln(1 + cv^2); cv <= 2;
* ``normal``: 1 + cv z with z cut to [-3, 3] so a factor stays > 0; cv <= 0.3;
* ``uniform``: 1 + cv sqrt(3) (2u - 1); cv <= 0.5.

Runs over many seeds are repeat.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ScenarioError
from ..schedules.ir import FB, Schedule, ops_of
from ..schedules.rules import KIND_CODES

DISTRIBUTIONS = ("lognormal", "normal", "uniform")
MAX_CV = {"lognormal": 2.0, "normal": 0.3, "uniform": 0.5}
NORMAL_CUT = 3.0


@dataclass(frozen=True)
class Variability:
    seed: int = 0
    distribution: str | None = None  # None: no jitter
    cv: float = 0.0
    slowdown: tuple[tuple[int, float], ...] = ()  # (rank, factor), sorted

    def bind(self, schedule: Schedule, costs) -> "Scaler":
        """The factor of every action of ``schedule``; checks slowdown ranks exist."""
        ranks = schedule.num_ranks
        slow = [1.0] * ranks
        for rank, factor in self.slowdown:
            if rank >= ranks:
                raise ScenarioError(
                    f"ranks.slowdown: rank {rank} does not exist, the schedule has {ranks} ranks (0..{ranks - 1})"
                )
            slow[rank] = factor
        ops = [op for actions in schedule.ranks for a in actions for op in ops_of(a)]
        draw = dict(zip(ops, self.jitter(ops))) if self.distribution and self.cv > 0 else {}
        factors = []
        for rank, actions in enumerate(schedule.ranks):
            row = []
            for action in actions:
                if isinstance(action, FB) and draw:
                    f, b = costs.duration(action.forward), costs.duration(action.backward)
                    j = (draw[action.forward] * f + draw[action.backward] * b) / (f + b) if f + b > 0 else 1.0
                else:
                    j = draw.get(action, 1.0)
                row.append(slow[rank] * j)
            factors.append(row)
        return Scaler(factors)

    def jitter(self, ops) -> np.ndarray:
        """Mean-1 factors for ``ops``, each a pure function of (seed, op)."""
        u1, u2 = _uniforms(self.seed, ops)
        cv = self.cv
        if self.distribution == "uniform":
            return 1.0 + cv * np.sqrt(3.0) * (2.0 * u1 - 1.0)
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        if self.distribution == "normal":
            return 1.0 + cv * np.clip(z, -NORMAL_CUT, NORMAL_CUT)
        sigma2 = np.log1p(cv * cv)
        return np.exp(np.sqrt(sigma2) * z - sigma2 / 2.0)


@dataclass(frozen=True)
class Scaler:
    """What the engines ask: the factor of one action."""

    factors: list[list[float]]  # [rank][action index]

    def factor(self, rank: int, idx: int) -> float:
        """How much longer action ``idx`` of ``rank`` takes: its whole timeline is stretched by this."""
        return self.factors[rank][idx]


def from_scenario(scenario) -> Variability | None:
    """The scenario's variability, or None when it has none (the plain, faster path)."""
    jitter = scenario.costs.jitter
    has_jitter = jitter is not None and jitter.cv > 0
    slowdown = tuple(sorted((r, float(f)) for r, f in scenario.ranks.slowdown.items() if f != 1.0))
    if not has_jitter and not slowdown:
        return None
    return Variability(
        seed=scenario.seed,
        distribution=jitter.distribution if has_jitter else None,
        cv=jitter.cv if has_jitter else 0.0,
        slowdown=slowdown,
    )


def cv_problem(distribution: str, cv: float) -> str | None:
    """None if ``cv`` suits the distribution, else the rule (for the scenario schema)."""
    limit = MAX_CV[distribution]
    if cv > limit:
        why = {"normal": "its smallest factor, 1 - 3 cv, must stay >= 0.1",
               "uniform": "its smallest factor, 1 - 1.73 cv, must stay >= 0.13"}.get(distribution, "")  # fmt: skip
        return f"must be <= {limit} for the {distribution} distribution" + (f" ({why})" if why else "")
    return None


# -- hashing ------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijection on uint64 that scatters every bit."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, ops) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms on (0, 1) per op, from (seed, kind, micro-batch, stage, direction)."""
    key = np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]
    fields = np.array([(KIND_CODES[o.kind], o.microbatch, o.stage, o.direction) for o in ops], dtype=np.uint64)
    h = np.full(len(ops), key, dtype=np.uint64)
    for column in fields.reshape(-1, 4).T:
        h = _mix(h ^ column)
    to_unit = lambda x: ((x >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53  # noqa: E731
    return to_unit(_mix(h ^ np.uint64(1))), to_unit(_mix(h ^ np.uint64(2)))
