"""1F1B and GPipe against their closed forms (zero communication, uniform costs)."""

import pytest

from helpers import run_uniform

SHAPES = [(p, m) for p in (1, 2, 3, 4, 5, 8) for m in (1, 2, 3, 4, 7, 8, 16, 33)]


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
@pytest.mark.parametrize("p,m", SHAPES)
@pytest.mark.parametrize("F,B", [(1.0, 2.0), (1.5, 1.5), (0.7, 2.9)])
def test_idle_is_p_minus_1_times_f_plus_b(name, p, m, F, B):
    result = run_uniform(name, p, m, forward=F, backward=B)
    for rank in result.metrics.per_rank:
        assert rank.idle == pytest.approx((p - 1) * (F + B), abs=1e-9)
        assert rank.busy == pytest.approx(m * (F + B))
    assert result.metrics.makespan == pytest.approx((m + p - 1) * (F + B))
    assert result.metrics.bubble_ratio == pytest.approx((p - 1) / (m + p - 1))
    assert result.metrics.analytic.bubble == pytest.approx((p - 1) * (F + B))


@pytest.mark.parametrize("p,m", SHAPES)
def test_peak_activation(p, m):
    one_f = run_uniform("1f1b", p, m, memory__activation=3.0)
    assert [r.peak_activation for r in one_f.metrics.per_rank] == [min(p - i, m) for i in range(p)]
    assert [r.peak_activation_bytes for r in one_f.metrics.per_rank] == [3.0 * min(p - i, m) for i in range(p)]
    gpipe = run_uniform("gpipe", p, m)
    assert [r.peak_activation for r in gpipe.metrics.per_rank] == [m] * p


def test_parameters_one_stage_per_rank():
    result = run_uniform("1f1b", 4, 8, memory__parameters=5.0)
    assert [r.parameter_bytes for r in result.metrics.per_rank] == [5.0] * 4
    assert [r.parameter_copies for r in result.metrics.per_rank] == [1] * 4


def test_memory_returns_to_zero():
    result = run_uniform("1f1b", 4, 8)
    mem = result.trace.memory
    for rank in range(4):
        assert mem["units"][mem["rank"] == rank].sum() == 0
