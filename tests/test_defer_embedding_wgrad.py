"""The output layer's deferred weight gradients (``model.defer_embedding_wgrad``, s18n), worked by hand.

Megatron-core's defer_embedding_wgrad_compute with wgrad_deferral_limit N: on the last stage the first N micro-batches'
backward runs without the output layer's wgrad GEMM and re-gather; the N GEMMs run after the rank's last backward,
before what finalizes the gradients (docs/model.md, "The output layer's deferred weight gradients (s18n)").
"""

from __future__ import annotations

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.step import with_step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.inputs.scenario import ScenarioError
from dualpipe_sim.model import collectives, deferred_wgrad, kernels
from dualpipe_sim.outputs.files import metrics_json
from dualpipe_sim.readers.step_metrics import step_metrics
from dualpipe_sim.schedules import registry
from dualpipe_sim.step_costs import StepCosts
from helpers import TINY_LLAMA_MODEL

# -- the engine: 1F1B, 2 stages x 4 micro-batches, F = 1, B = 3 (W = 1), no P2P cost ------------------------------
#
# Without deferral (rank r's ops by hand, 1F1B: rank 0 F0 F1 B0 F2 B1 F3 B2 B3, rank 1 F0 B0 F1 B1 F2 B2 F3 B3):
#   rank 1: F0 [1,2] B0 [2,5] F1 [5,6] B1 [6,9] F2 [9,10] B2 [10,13] F3 [13,14] B3 [14,17]
#   rank 0: F0 [0,1] F1 [1,2] B0 [5,8] F2 [8,9] B1 [9,12] F3 [12,13] B2 [13,16] B3 [17,20]: makespan 20.
# With stage 1's first 2 backwards 0.5 + 1.0 shorter (B 1.5):
#   rank 1: F0 [1,2] B0 [2,3.5] F1 [3.5,4.5] B1 [4.5,6] F2 [7.5,8.5] B2 [8.5,11.5] F3 [11.5,12.5] B3 [12.5,15.5]
#   rank 0: F0 [0,1] F1 [1,2] B0 [3.5,6.5] F2 [6.5,7.5] B1 [7.5,10.5] F3 [10.5,11.5] B2 [11.5,14.5] B3 [15.5,18.5]
# With every backward of stage 1 at 1.5 (count >= micro-batches):
#   rank 1: ... B1 [4.5,6] F2 [7.5,8.5] B2 [8.5,10] F3 [11.5,12.5] B3 [12.5,14]
#   rank 0: ... F3 [10.5,11.5] B2 [11.5,14.5] B3 [14.5,17.5]: makespan 17.5.

BASE = dict(forward=(1.0, 1.0), backward=(3.0, 3.0), weight=(1.0, 1.0), activation_bytes=(1.0, 1.0),
            parameter_bytes=(1.0, 1.0))


def trace_of(deferred=None):
    schedule = registry.build("1f1b", 2, 4)
    return simulation.simulate(schedule, CostModel(**BASE, deferred=deferred))


def spans(trace, rank):
    c = trace.compute[trace.compute["rank"] == rank]
    return sorted((float(a), float(b)) for a, b in zip(c["start"], c["end"]))


def test_two_deferred_micro_batches_by_hand():
    t = trace_of((1, 2, 0.5, 1.0))
    assert spans(t, 1) == [(1, 2), (2, 3.5), (3.5, 4.5), (4.5, 6), (7.5, 8.5), (8.5, 11.5), (11.5, 12.5), (12.5, 15.5)]
    assert spans(t, 0) == [(0, 1), (1, 2), (3.5, 6.5), (6.5, 7.5), (7.5, 10.5), (10.5, 11.5), (11.5, 14.5),
                           (15.5, 18.5)]  # fmt: skip
    assert t.makespan == 18.5


def test_an_overlapped_pair_is_lighter_only_when_its_backward_defers():
    """A pair's length follows its backward half (rules.BACKWARDS), not its forward: one rank, one stage, 3 micro-batches,
    F0, (F1 & B0), (F2 & B1), B2, F = 1, B = 2 (W = 1), no overlap gain (a pair is F + B); micro-batch 0 defers 0.5 of
    input gradient and 0.25 of weight gradient, so B0 = 1.25 and its pair 2.25, the other pair 3: spans [0,1] [1,3.25]
    [3.25,6.25] [6.25,8.25].  Both pairs are of one stage and kind; given one timeline they would last alike."""
    from dualpipe_sim.engine import simpy_engine
    from dualpipe_sim.schedules.ir import FB, Op, Schedule

    f, b = (lambda m: Op("F", m, 0)), (lambda m: Op("B", m, 0))
    schedule = Schedule("pairs", 1, 3, ((f(0), FB(f(1), b(0)), FB(f(2), b(1)), b(2)),))
    costs = CostModel.uniform(1, forward=1.0, backward=2.0, weight=1.0)
    costs = CostModel(**{**costs.__dict__, "deferred": (0, 1, 0.5, 0.25)})
    for simulate in (simulation.simulate, simpy_engine.simulate):
        t = simulate(schedule, costs)
        c = t.compute
        actions = sorted({(int(a), float(c["start"][c["action"] == a].min()), float(c["end"][c["action"] == a].max()))
                          for a in c["action"]})  # fmt: skip
        assert [(s, e) for _, s, e in actions] == [(0.0, 1.0), (1.0, 3.25), (3.25, 6.25), (6.25, 8.25)]
        assert t.makespan == 8.25


def test_without_deferral_by_hand():
    t = trace_of()
    assert spans(t, 1) == [(1, 2), (2, 5), (5, 6), (6, 9), (9, 10), (10, 13), (13, 14), (14, 17)]
    assert t.makespan == 20


def test_count_past_the_micro_batches_defers_every_one():
    t = trace_of((1, 10, 0.5, 1.0))
    assert spans(t, 1)[-3:] == [(8.5, 10), (11.5, 12.5), (12.5, 14)]
    assert t.makespan == 17.5


def test_zero_count_is_the_plain_trace():
    a, b = trace_of(), trace_of((1, 0, 0.5, 1.0))
    for name in ("compute", "comm"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()


def test_split_backward_takes_each_share_off_its_own_pass():
    """I loses the input-gradient share, W the weight-gradient share, B both; other stages and F untouched."""
    from dualpipe_sim.schedules.ir import Op

    c = CostModel(**BASE, deferred=(1, 2, 0.5, 1.0))
    assert c.duration(Op("I", 0, 1)) == 3.0 - 1.0 - 0.5
    assert c.duration(Op("W", 1, 1)) == 1.0 - 1.0
    assert c.duration(Op("B", 1, 1)) == 1.5
    assert c.duration(Op("B", 2, 1)) == 3.0  # micro-batch 2: not deferred
    assert c.duration(Op("B", 0, 0)) == 3.0  # another stage
    assert c.duration(Op("F", 0, 1)) == 1.0


# -- the step's end: the drain runs after the last rank's pipeline work, before its optimizer --------------------
#
# drain 4 on stage 1 (rank 1), optimizer 0.5 a stage: rank 1's pipeline ends at 15.5 (B3), the drain to 19.5, its
# optimizer [19.5, 20]; rank 0's [18.5, 19].  Grad sync 1 on stage 1: overlapped, released at its last weight-gradient
# op's end (15.5: Megatron's hook fires in the deferred backward too), [15.5, 16.5]; not overlapped, after the
# drain: [19.5, 20.5], then the optimizer [20.5, 21].

def step_of(overlap: bool, drain=(0.0, 4.0)):
    costs = StepCosts(grad_sync=(0.0, 1.0), cross_copy_sync=(0.0, 0.0), optimizer=(0.5, 0.5),
                      overlap_grad_sync=overlap, drain=drain)
    trace = with_step(trace_of((1, 2, 0.5, 1.0)), costs)
    rows = {(int(r["kind"]), int(r["rank"])): (float(r["start"]), float(r["end"])) for r in trace.step}
    return rows, step_metrics(trace, costs)


def test_drain_before_the_optimizer_overlapped_sync_before_it():
    rows, m = step_of(True)
    assert rows[(GRAD_SYNC, 1)] == (15.5, 16.5)
    assert rows[(OPTIMIZER, 1)] == (19.5, 20.0)
    assert rows[(OPTIMIZER, 0)] == (18.5, 19.0)
    assert m.total == 20.0


def test_drain_before_a_sync_that_waits_for_the_pipeline():
    rows, m = step_of(False)
    assert rows[(GRAD_SYNC, 1)] == (19.5, 20.5)
    assert rows[(OPTIMIZER, 1)] == (20.5, 21.0)
    assert m.total == 21.0


def test_drain_with_nothing_after_it_still_ends_the_step():
    costs = StepCosts(grad_sync=(0.0, 0.0), cross_copy_sync=(0.0, 0.0), optimizer=(0.0, 0.0), drain=(0.0, 4.0))
    assert costs.active()
    trace = with_step(trace_of((1, 2, 0.5, 1.0)), costs)
    assert step_metrics(trace, costs).total == 15.5 + 4.0


# -- the kernel figures: one deferred micro-batch's saving and the drain, from head()'s own rows ------------------

def derived_tiny(tmp_path, tail=""):
    path = tmp_path / "t.toml"
    # a 32,000 vocabulary: the wgrad GEMM (2 h V/4 n) outlasts its reduce-scatter, so both savings show
    model = TINY_LLAMA_MODEL.replace("vocab_size = 1000", "vocab_size = 32000")
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + model
                    + 'micro_batch_size = 64\n[parallel]\ntensor = 4\nsequence_parallel = true\n'
                    + '[hardware]\npreset = "H100"\n' + tail)
    sc = scenario.load(path)
    return sc, sc.derived()


def head_row(rows, name):
    (row,) = [k for k in rows if k.name == name]
    return row.ms


def test_saving_is_the_wgrad_gemm_and_the_collectives_beside(tmp_path):
    """weight: the wgrad GEMM row plus the reduce-scatter's exposure beside it, less the reduce-scatter alone;
    input: the dgrad GEMM beside the re-gather plus the re-gather's exposure, less the dgrad GEMM on every SM."""
    sc, d = derived_tiny(tmp_path)
    st = d.setup
    cfg, rates, lay = st.cfg, st.rates, st.layout
    rows = kernels.head(cfg, rates, lay)
    n, h, ab, v = lay.tokens, cfg.hidden_size, lay.act_bytes, -(-cfg.vocab_size // lay.tensor)
    rs_alone = collectives.time("reduce_scatter", n * h * ab, lay.tensor, rates, "nvlink") * 1e3
    tb = kernels.Table(rates, lay, cfg)
    dgrad_alone = tb.gemm("dgrad", "mlp_backward_input", n, h, v, fp8=False) * 1e3
    f = deferred_wgrad.figures(d, 2, 4)
    assert (f.stage, f.count) == (1, 2)
    assert f.weight_less == pytest.approx(head_row(rows, "output layer wgrad") + head_row(rows, "tp reduce-scatter (grad)")
                                          - rs_alone)
    assert f.input_less == pytest.approx(head_row(rows, "output layer dgrad") + head_row(rows, "tp all-gather (wgrad input)")
                                         - dgrad_alone)
    assert f.weight_less > 0 and f.input_less > 0


def test_drain_is_a_waited_gather_then_gemms_beside_the_next(tmp_path):
    """drain(1) = the all-gather alone + one GEMM on every SM; each further micro-batch adds one GEMM beside an
    all-gather (the same as head()'s dgrad-side block shape: a GEMM of h x v x n beside an n x h gather)."""
    sc, d = derived_tiny(tmp_path)
    st = d.setup
    cfg, rates, lay = st.cfg, st.rates, st.layout
    n, h, ab, v = lay.tokens, cfg.hidden_size, lay.act_bytes, -(-cfg.vocab_size // lay.tensor)
    gather = collectives.time("all_gather", n * h * ab, lay.tensor, rates, "nvlink") * 1e3
    tb = kernels.Table(rates, lay, cfg)
    gemm = tb.gemm("output layer wgrad", "mlp_backward_weight", h, v, n, fp8=False, out_bytes=lay.wgrad_out) * 1e3
    one = deferred_wgrad.drain_ms(cfg, rates, lay, 1)
    assert one == pytest.approx(gather + gemm)
    step = deferred_wgrad.drain_ms(cfg, rates, lay, 2) - one
    assert step >= max(gemm, gather) - 1e-12  # beside the gather: no faster than either alone
    assert deferred_wgrad.drain_ms(cfg, rates, lay, 5) == pytest.approx(one + 4 * step)
    assert deferred_wgrad.drain_ms(cfg, rates, lay, 0) == 0.0


def test_drain_without_sequence_parallelism_is_the_gemms(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + TINY_LLAMA_MODEL
                    + '[parallel]\ntensor = 2\nsequence_parallel = false\n[hardware]\npreset = "H100"\n')
    st = scenario.load(path).derived().setup
    tb = kernels.Table(st.rates, st.layout, st.cfg)
    h, v, n = st.cfg.hidden_size, -(-st.cfg.vocab_size // 2), st.layout.tokens
    gemm = tb.gemm("output layer wgrad", "mlp_backward_weight", h, v, n, fp8=False, out_bytes=st.layout.wgrad_out) * 1e3
    assert deferred_wgrad.drain_ms(st.cfg, st.rates, st.layout, 3) == pytest.approx(3 * gemm)


# -- the scenario key ----------------------------------------------------------------------------------------------

def test_key_reaches_the_run(tmp_path):
    """On the last stage (1) micro-batches 0, 1 are lighter by the figures; 2, 3 are not; the drain sits in [step]."""
    tail = '[step]\ngrad_sync = 1.0\noptimizer = 0.5\n'
    sc, d = derived_tiny(tmp_path, tail)
    raw = sc.model_dump(exclude_unset=True)
    raw["model"]["defer_embedding_wgrad"] = 2
    on = scenario.from_dict(raw)
    f = deferred_wgrad.figures(on.derived(), 2, 4)
    costs = on.cost_model()
    assert costs.deferred == (1, 2, f.input_less, f.weight_less)
    assert on.step_costs().drain == (0.0, f.drain)
    t = simulation.run(on).trace
    c = t.compute[t.compute["rank"] == 1]  # rank 1 holds stage 1 only: each micro-batch's F and B
    plain = sc.cost_model().backward[1]
    lengths = {}
    for k, m, a, b in zip(c["kind"], c["microbatch"], c["start"], c["end"]):
        lengths.setdefault(int(m), 0.0)
        lengths[int(m)] += float(b - a)
    fwd = sc.cost_model().forward[1]
    assert [round(lengths[m] - fwd, 9) for m in range(4)] == [round(plain - f.input_less - f.weight_less, 9)] * 2 \
        + [round(plain, 9)] * 2


def test_zero_is_byte_identical_to_the_key_left_out(tmp_path):
    sc, _ = derived_tiny(tmp_path, '[step]\ngrad_sync = "derived"\noptimizer = "derived"\n')
    raw = sc.model_dump(exclude_unset=True)
    raw["model"]["defer_embedding_wgrad"] = 0
    a = simulation.run(sc)
    b = simulation.run(scenario.from_dict(raw))
    assert metrics_json(a.metrics) == metrics_json(b.metrics)


@pytest.mark.parametrize("value, words", [
    (-1, "model.defer_embedding_wgrad"),
    ("2", "model.defer_embedding_wgrad"),
    (2.5, "model.defer_embedding_wgrad"),
    (True, "model.defer_embedding_wgrad"),
])  # fmt: skip
def test_bad_values_are_refused(tmp_path, value, words):
    sc, _ = derived_tiny(tmp_path)
    raw = sc.model_dump(exclude_unset=True)
    raw["model"]["defer_embedding_wgrad"] = value
    with pytest.raises(ScenarioError, match=words):
        scenario.from_dict(raw).cost_model()


def test_one_stage_is_refused(tmp_path):
    sc, _ = derived_tiny(tmp_path)
    raw = sc.model_dump(exclude_unset=True)
    raw["model"]["defer_embedding_wgrad"] = 2
    raw["pipeline"]["stages"] = 1
    with pytest.raises(ScenarioError, match=r"model.defer_embedding_wgrad: needs pipeline.stages >= 2"):
        scenario.from_dict(raw).cost_model()


def test_typed_backward_is_refused(tmp_path):
    sc, _ = derived_tiny(tmp_path)
    raw = sc.model_dump(exclude_unset=True)
    raw["model"]["defer_embedding_wgrad"] = 2
    raw["costs"] = {"backward": 2.0}
    with pytest.raises(ScenarioError, match=r"model.defer_embedding_wgrad: .*costs.backward"):
        scenario.from_dict(raw).cost_model()


def test_cli_error_line(tmp_path, capsys):
    from dualpipe_sim import cli

    sc, _ = derived_tiny(tmp_path)
    path = tmp_path / "t.toml"
    code = cli.main(["run", str(path), "--set", "model.defer_embedding_wgrad=-3", "--out", str(tmp_path / "o"),
                     "--plots", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.defer_embedding_wgrad" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_validation_scenarios_set_it_from_their_configs():
    """WGRAD_DEFERRAL_LIMIT 65 on the two v4.1 GPT-3 rows, 50 on the nine v5.0 405B rows."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
    got = {p.stem: scenario.load(p).model.defer_embedding_wgrad
           for p in sorted(root.glob("mlperf41-gpt3-*.toml")) + sorted(root.glob("mlperf50-llama405b-*.toml"))}
    assert got.pop("mlperf41-gpt3-64b200") == 0  # custom.yaml's default at MINIBS 1024: not deferred (its header)
    assert got == {"mlperf41-gpt3-256": 65, "mlperf41-gpt3-512": 65} | {
        k: 50 for k in got if k.startswith("mlperf50-llama405b")}
    assert len(got) == 11
