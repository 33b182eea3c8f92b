"""Jitter, stragglers (dualpipe_sim/inputs/variability.py) and --repeat (dualpipe_sim/repeat.py).

The draws are checked against the distributions' own moments (fixed seeds, so
the checks are deterministic; tolerances are several standard errors), for
being a function of (seed, op) alone, and end to end in the engine: every
action lasts its base cost times its factor, a slow rank's busy time is its
factor times the plain one, and the metrics.json contract holds for the first
seed of a repeat.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim import repeat, simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main
from dualpipe_sim.schedules.ir import FB, Op, ops_of
from dualpipe_sim.outputs.files import metrics_json
from dualpipe_sim.inputs.variability import Variability

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
MANY = [Op(k, m, s, d) for k in "FBIW" for m in range(250) for s in range(10) for d in (0, 1)]  # 20 000 ops


def raw(schedule="1f1b", stages=4, microbatches=8, jitter=None, slowdown=None, seed=0, **costs):
    data = {
        "pipeline": {"schedule": schedule, "stages": stages, "microbatches": microbatches},
        "costs": {"forward": 1.0, "backward": 2.0, **costs},
        "comm": {"p2p": 0.1},
        "seed": seed,
    }
    if jitter:
        data["costs"]["jitter"] = jitter
    if slowdown:
        data["ranks"] = {"slowdown": slowdown}
    return data


def run(data):
    return simulation.run(scenario.from_dict(data))


# -- the draws -------------------------------------------------------------------------------
@pytest.mark.parametrize("dist,cv", [("lognormal", 0.1), ("lognormal", 0.5), ("normal", 0.1), ("uniform", 0.2)])
def test_draws_have_mean_one_and_the_asked_cv(dist, cv):
    f = Variability(seed=7, distribution=dist, cv=cv).jitter(MANY)
    n = len(f)
    assert np.all(f > 0) and np.all(np.isfinite(f))
    assert abs(f.mean() - 1) < 4 * cv / math.sqrt(n)
    # The sample sd of n draws has standard error about sd * sqrt((kurtosis - 1) / 4n);
    # 5% is many standard errors for n = 20 000 and these cvs.
    assert f.std() == pytest.approx(cv, rel=0.05)


def test_draws_follow_their_shape():
    normal = Variability(1, "normal", 0.1).jitter(MANY)
    assert normal.min() >= 1 - 3 * 0.1 and normal.max() <= 1 + 3 * 0.1
    within = np.mean(np.abs(normal - 1) < 0.1)  # P(|z| < 1) = 0.6827
    assert within == pytest.approx(0.6827, abs=0.015)
    uniform = Variability(1, "uniform", 0.2).jitter(MANY)
    half = math.sqrt(3) * 0.2
    assert uniform.min() >= 1 - half and uniform.max() <= 1 + half
    assert np.histogram(uniform, bins=4, range=(1 - half, 1 + half))[0] / len(MANY) == pytest.approx(0.25, abs=0.02)
    logs = np.log(Variability(1, "lognormal", 0.3).jitter(MANY))
    sigma2 = math.log(1 + 0.3**2)
    assert logs.mean() == pytest.approx(-sigma2 / 2, abs=4 * math.sqrt(sigma2 / len(MANY)))
    assert logs.std() == pytest.approx(math.sqrt(sigma2), rel=0.03)


def test_draw_is_a_function_of_seed_and_op_only():
    v = Variability(seed=3, distribution="lognormal", cv=0.2)
    forward = v.jitter(MANY)
    backward = v.jitter(MANY[::-1])[::-1]
    assert np.array_equal(forward, backward)  # order does not matter
    some = MANY[5000:5100]
    assert np.array_equal(v.jitter(some), forward[5000:5100])  # nor what else is drawn
    other = Variability(seed=4, distribution="lognormal", cv=0.2).jitter(MANY)
    assert np.mean(other == forward) < 0.001  # another seed, other draws
    # Neighbouring ops (micro-batch m and m+1) are uncorrelated.
    assert abs(np.corrcoef(forward[:-1], forward[1:])[0, 1]) < 0.03


# -- in the engine ---------------------------------------------------------------------------
def lengths(trace) -> dict:
    """(rank, action) -> total length of its compute rows."""
    out: dict = {}
    for r in trace.compute:
        key = (int(r["rank"]), int(r["action"]))
        out[key] = out.get(key, 0.0) + float(r["end"] - r["start"])
    return out


def test_every_action_lasts_base_cost_times_its_factor():
    data = raw("dualpipe", 4, 8, jitter={"distribution": "lognormal", "cv": 0.3}, seed=11,
               overlapped=2.5, weight=1.0)  # fmt: skip
    result = run(data)
    plain = run(raw("dualpipe", 4, 8, overlapped=2.5, weight=1.0))
    ops = [op for acts in result.schedule.ranks for a in acts for op in ops_of(a)]
    draw = dict(zip(ops, Variability(11, "lognormal", 0.3).jitter(ops)))
    base, got = lengths(plain.trace), lengths(result.trace)
    pairs = 0
    for (rank, idx), length in got.items():
        action = result.schedule.ranks[rank][idx]
        if isinstance(action, FB):
            pairs += 1
            f, b = result.costs.duration(action.forward), result.costs.duration(action.backward)
            factor = (draw[action.forward] * f + draw[action.backward] * b) / (f + b)
        else:
            factor = draw[action]
        assert length == pytest.approx(base[(rank, idx)] * factor, rel=1e-12)
    assert pairs > 0  # DualPipe 4x8 has overlapped pairs: the weighted mean was exercised


def test_same_op_same_factor_under_any_schedule():
    """The draw follows the op, not the order events happen in: GPipe and 1F1B run the
    same ops in different orders and see the same durations."""
    jitter = {"distribution": "uniform", "cv": 0.3}
    durations = []
    for name in ("gpipe", "1f1b"):
        trace = run(raw(name, 4, 8, jitter=jitter, seed=5)).trace
        durations.append({(int(r["kind"]), int(r["microbatch"]), int(r["stage"])): float(r["end"] - r["start"])
                          for r in trace.compute})  # fmt: skip
    assert durations[0] == pytest.approx(durations[1], rel=1e-12)  # end - start rounds at different times
    assert len(set(durations[0].values())) > 10  # and they do vary


def test_slow_rank_takes_its_factor_longer_and_others_do_not():
    plain = run(raw("1f1b", 4, 8))
    slow = run(raw("1f1b", 4, 8, slowdown={"2": 1.5}))
    for before, after in zip(plain.metrics.per_rank, slow.metrics.per_rank):
        factor = 1.5 if before.rank == 2 else 1.0
        assert after.busy == pytest.approx(factor * before.busy, rel=1e-12)
    assert slow.metrics.makespan >= 1.5 * plain.metrics.per_rank[2].busy
    assert slow.metrics.makespan > plain.metrics.makespan


def test_straggler_and_jitter_multiply():
    jitter = {"distribution": "normal", "cv": 0.2}
    a = run(raw("gpipe", 3, 4, jitter=jitter, seed=2))
    b = run(raw("gpipe", 3, 4, jitter=jitter, seed=2, slowdown={"0": 2.0}))
    assert b.metrics.per_rank[0].busy == pytest.approx(2 * a.metrics.per_rank[0].busy, rel=1e-12)
    assert b.metrics.per_rank[1].busy == pytest.approx(a.metrics.per_rank[1].busy, rel=1e-12)


def test_component_model_stretches_whole_timeline():
    chunk = {"layers": 1, "attn_forward": 1, "dispatch_forward": 0.5, "mlp_forward": 1, "combine_forward": 0.5,
             "combine_backward": 0.5, "mlp_backward_input": 1, "mlp_backward_weight": 0.5,
             "dispatch_backward": 0.5, "attn_backward_input": 1, "attn_backward_weight": 0.5}  # fmt: skip
    data = {"pipeline": {"schedule": "dualpipe", "stages": 2, "microbatches": 4}, "chunk": chunk}
    plain = run(data)
    slow = run({**data, "ranks": {"slowdown": {"1": 1.25}}})
    for table in ("compute", "comm"):
        before, after = getattr(plain.trace, table), getattr(slow.trace, table)
        for rank, factor in ((0, 1.0), (1, 1.25)):
            b, a = before[before["rank"] == rank], after[after["rank"] == rank]
            assert np.sum(a["end"] - a["start"]) == pytest.approx(factor * np.sum(b["end"] - b["start"]))


def test_no_variability_is_the_plain_run():
    plain = metrics_json(run(raw("dualpipe", 4, 8)).metrics)
    assert metrics_json(run(raw("dualpipe", 4, 8, jitter={"distribution": "lognormal", "cv": 0})).metrics) == plain
    assert metrics_json(run(raw("dualpipe", 4, 8, slowdown={"1": 1.0})).metrics) == plain


def test_same_seed_same_bytes_other_seed_other_result():
    jitter = {"distribution": "lognormal", "cv": 0.2}
    first = metrics_json(run(raw("dualpipe", 4, 8, jitter=jitter, seed=9)).metrics)
    assert metrics_json(run(raw("dualpipe", 4, 8, jitter=jitter, seed=9)).metrics) == first
    assert metrics_json(run(raw("dualpipe", 4, 8, jitter=jitter, seed=10)).metrics) != first


def test_slowdown_of_a_rank_that_does_not_exist():
    with pytest.raises(scenario.ScenarioError, match=r"ranks.slowdown: rank 4 does not exist, the schedule has 4 ranks"):
        run(raw("1f1b", 4, 8, slowdown={"4": 2.0}))


# -- the scenario keys --------------------------------------------------------------------------
BAD = [
    ({"jitter": {"distribution": "gamma", "cv": 0.1}}, "costs.jitter.distribution: input should be 'lognormal'"),
    ({"jitter": {"distribution": "normal", "cv": 0.5}}, "costs.jitter.cv: must be <= 0.3 for the normal"),
    ({"jitter": {"distribution": "uniform", "cv": 0.6}}, "costs.jitter.cv: must be <= 0.5 for the uniform"),
    ({"jitter": {"distribution": "lognormal", "cv": -0.1}}, "costs.jitter.cv: input should be greater than or equal to 0"),
    ({"jitter": {"distribution": "lognormal", "cv": float("inf")}}, "costs.jitter.cv: must be a finite number"),
    ({"jitter": {"distribution": "lognormal"}}, "costs.jitter.cv: required key is missing"),
    ({"slowdown": {"x": 1.2}}, "ranks.slowdown.x: input should be a valid integer"),
    ({"slowdown": {"1": 0}}, "ranks.slowdown.1: input should be greater than 0"),
    ({"slowdown": {"1": float("nan")}}, "ranks.slowdown.1: must be a finite number"),
    ({"slowdown": [1, 1.2]}, "ranks.slowdown: must be a table of keys ([ranks.slowdown] in TOML), got [1, 1.2]"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_variability_keys(extra, message):
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.from_dict(raw(**extra))
    assert message in str(exc.value)


# -- --repeat ------------------------------------------------------------------------------------
def test_repeat_reports_percentiles_and_keeps_the_contract(tmp_path, capsys):
    jitter = ["--set", "costs.jitter={distribution='lognormal', cv=0.2}", "--set", "ranks.slowdown={3=1.2}"]
    assert main(["run", QUICK, *jitter, "--out", str(tmp_path / "one")]) == 0
    assert main(["run", QUICK, *jitter, "--out", str(tmp_path / "rep"), "--repeat", "6"]) == 0
    out = capsys.readouterr().out
    assert "repeat: 6 seeds (0..5)" in out and "p95" in out
    # metrics.json is the first seed's, byte for byte.
    assert (tmp_path / "rep" / "metrics.json").read_bytes() == (tmp_path / "one" / "metrics.json").read_bytes()
    doc = json.loads((tmp_path / "rep" / "repeat.json").read_text())
    assert [r["seed"] for r in doc["runs"]] == list(range(6))
    assert doc["runs"][0]["makespan"] == json.loads((tmp_path / "one" / "metrics.json").read_text())["makespan"]
    for key in ("makespan", "bubble_ratio"):
        values = sorted(r[key] for r in doc["runs"])
        s = doc["summary"][key]
        assert s["max"] == values[-1] and s["min"] == values[0]
        assert values[0] <= s["p50"] <= s["p95"] <= s["max"]
        assert s["p50"] == pytest.approx((values[2] + values[3]) / 2)  # median of 6
    assert len({r["makespan"] for r in doc["runs"]}) > 1  # the seeds differ
    assert doc["jitter"] == {"distribution": "lognormal", "cv": 0.2} and doc["slowdown"] == {"3": 1.2}


def test_repeat_without_jitter_repeats_one_result(tmp_path):
    assert main(["run", QUICK, "--out", str(tmp_path), "--repeat", "3", "--json"]) == 0
    doc = json.loads((tmp_path / "repeat.json").read_text())
    assert len({r["makespan"] for r in doc["runs"]}) == 1
    assert doc["summary"]["makespan"]["p95"] == doc["runs"][0]["makespan"]


@pytest.mark.parametrize("n", ["0", "-2", str(repeat.MAX_REPEAT + 1)])
def test_repeat_out_of_range(tmp_path, capsys, n):
    assert main(["run", QUICK, "--out", str(tmp_path / "o"), "--repeat", n]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --repeat:") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
