"""Checks for the planted bugs of mutations.toml's m31 section that the suite let through.

Each test holds one number, order, message or chart label against a hand-worked case, a published
rule (Hugging Face's modelling code, the family's own documented constraint) or an invariant, never
against what the code printed before.  The mutation each one kills is named in its docstring.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dualpipe_sim import compare, repeat, simulation, units  # noqa: E402
from dualpipe_sim.actions import ignored_note, parse_actions  # noqa: E402
from dualpipe_sim.engine.trace import COMPUTE_DTYPE  # noqa: E402
from dualpipe_sim.engine.validate import validate  # noqa: E402
from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim.inputs.scenario import load  # noqa: E402
from dualpipe_sim.model import derive, layout, params  # noqa: E402
from dualpipe_sim.model.config import ModelError, from_hf, read  # noqa: E402
from dualpipe_sim.outputs.plots import gantt  # noqa: E402
from dualpipe_sim.plan.estimate import Estimate  # noqa: E402
from dualpipe_sim.plan.rank import Row, estimate_order, likely_fits, to_simulate  # noqa: E402
from dualpipe_sim.plan.shapes import shape  # noqa: E402
from dualpipe_sim.plan.space import Candidate  # noqa: E402
from dualpipe_sim.schedules.ir import Op, Schedule, ScheduleError  # noqa: E402
from dualpipe_sim.schedules.rules import KIND_CODES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(family: str, stages: int, microbatches: int, **sections):
    data = {"pipeline": {"schedule": family, "stages": stages, "microbatches": microbatches}, **sections}
    return simulation.run(scenario.from_dict(data))


# -- schedules ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p,m", [(2, 2), (2, 3), (2, 8), (3, 5), (4, 8), (4, 16)])
def test_1f1b_overlap_peak_is_2p_by_hand(p, m):
    """1f1b-overlap-analytic-peak-one-short.  Rank 0 runs 2(p - 1) + 1 warm-up forwards, then a pair whose
    forward is alive before the pair's backward frees anything: 2p activations (all m when m < 2p)."""
    metrics = run("1f1b-overlap", p, m, costs={"forward": 1.0, "backward": 2.0}).metrics
    want = min(2 * p, m)
    assert metrics.to_dict()["analytic"]["peak_activation"] == want
    assert max(r.peak_activation for r in metrics.per_rank) == want  # the simulation agrees


def test_no_closed_form_when_weight_differs_between_stages():
    """closed-form-ignores-weight-differences.  Every formula assumes one W for all stages
    (closed_form.COMMON_RANGE); with stage 3's W three times the others' ZB-H1's is out of range."""
    costs = {"forward": 1.0, "backward": 2.0, "weight": [0.5, 0.5, 0.5, 1.5]}
    analytic = run("zb-h1", 4, 8, costs=costs).metrics.to_dict()["analytic"]
    assert analytic["bubble"] is None
    assert "costs.weight differs between stages" in analytic["reason"]


def test_a_weight_gradient_cannot_run_before_its_input_gradient():
    """rules-w-needs-forward-not-its-i.  W needs its own stage's I (rules.py): one stage, one micro-batch,
    W written before I can never finish."""
    s = Schedule("custom", 1, 1, ((Op("F", 0, 0), Op("W", 0, 0), Op("I", 0, 0)),))
    with pytest.raises(ScheduleError, match=r"stuck at 0W0 waiting for 0I0"):
        validate(s)
    validate(Schedule("custom", 1, 1, ((Op("F", 0, 0), Op("I", 0, 0), Op("W", 0, 0)),)))  # the right order runs


def test_schedule_json_without_counts_takes_them_from_the_largest_ids():
    """ir-json-stages-inferred-one-short.  Stages 0..1 and micro-batches 0..2 without "stages" and
    "microbatches": 2 stages, 3 micro-batches."""

    def op(kind, m, s):
        return {"kind": kind, "microbatch": m, "stage": s}

    rank0 = [op("F", 0, 0), op("F", 1, 0), op("B", 0, 0), op("F", 2, 0), op("B", 1, 0), op("B", 2, 0)]
    rank1 = [op(k, m, 1) for m in range(3) for k in "FB"]
    s = Schedule.from_json({"ranks": [rank0, rank1]})
    assert (s.stages, s.microbatches) == (2, 3)
    validate(s)


def test_one_microbatch_in_two_directions_is_named():
    """validate-two-directions-of-one-microbatch-pass.  Micro-batch 0's forward fed from one end and its
    backward from the other: the error says so, not only that the schedule deadlocks."""
    s = Schedule("custom", 1, 1, ((Op("F", 0, 0, 0), Op("B", 0, 0, 1)),))
    with pytest.raises(ScheduleError, match=r"runs micro-batch 0 in direction 1, but it runs in direction 0 elsewhere"):
        validate(s)


def test_an_op_one_stage_past_the_end_is_named_in_either_direction():
    """validate-stage-bound-off-by-one.  Two stages: an op at stage 2 is outside 0..1, in direction 0 and
    in direction 1 alike (one ScheduleError naming it, never a crash)."""
    for d in (0, 1):
        s = Schedule("custom", 2, 1, ((Op("F", 0, 0, d), Op("B", 0, 0, d)),
                                      (Op("F", 0, 1, d), Op("F", 0, 2, d), Op("B", 0, 1, d))))  # fmt: skip
        with pytest.raises(ScheduleError, match=r"has stage 2, outside 0\.\.1"):
            validate(s)


def test_ignored_note_counts_actions_not_kinds():
    """actions-ignored-note-counts-kinds.  Two micro-batches of 1F1B on 2 ranks, lowered: each rank sends
    and receives once per micro-batch, 8 communication actions of 4 kinds."""
    s = parse_actions("0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1\n"
                      "1RECV_F0 1F0 1B0 1SEND_B0 1RECV_F1 1F1 1B1 1SEND_B1\n")  # fmt: skip
    assert ignored_note(s) == (
        "skipped 8 communication actions (2 RECV_B, 2 RECV_F, 2 SEND_B, 2 SEND_F): "
        "transfers come from the F/B dependencies"
    )


# -- model --------------------------------------------------------------------------------------------------
def test_qwen_moe_sparse_step_as_hugging_face_places_it():
    """config-qwen-moe-sparse-step-shifted.  transformers' Qwen2MoeDecoderLayer is sparse when
    ``layer_idx not in mlp_only_layers and (layer_idx + 1) % decoder_sparse_step == 0``: with step 2 and
    layer 3 forced dense, 6 layers have experts on 1 and 5 only."""
    raw = {"model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 6, "vocab_size": 100,
           "num_attention_heads": 4, "intermediate_size": 128, "num_experts": 4, "num_experts_per_tok": 2,
           "moe_intermediate_size": 32, "decoder_sparse_step": 2, "mlp_only_layers": [3]}  # fmt: skip
    cfg = from_hf(raw)
    assert [i for i in range(6) if cfg.is_moe_layer(i)] == [1, 5]


def test_layout_string_with_the_head_on_a_middle_stage_is_refused():
    """layout-head-not-required-last.  The loss ends the pipeline: L on stage 1 of 3 is refused, naming the rule."""
    with pytest.raises(ModelError, match=r"must place the head L once, on the last stage"):
        layout.parse("Et|tL|t", 3, 3)


def test_gpt2_small_activated_parameters_by_hand():
    """params-activated-without-tied-head.  GPT-2 small (h 768, 12 layers, vocab 50257) ties its head to the
    embedding, yet every token still multiplies by it.  A layer: q, k, v, o with biases 4h^2 + 4h, two
    LayerNorms 4h, the MLP 8h^2 + 5h: 7,087,872; 12 of them 85,054,464; the head's LayerNorm 2h and
    projection 50257 h: 38,598,912; activated 123,653,376 (the embedding and positions are lookups)."""
    cfg = from_hf({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257,
                   "n_positions": 1024})  # fmt: skip
    h = 768
    layer = (4 * h * h + 4 * h) + 4 * h + (8 * h * h + 5 * h)
    assert layer == 7_087_872
    assert params.totals(cfg).activated == 12 * layer + 2 * h + 50257 * h == 123_653_376


def test_deepseek_linear_weights_are_the_parameters_less_norms_and_router():
    """params-mtp-projection-h-by-h.  DeepSeek-V3 has no biases, so what its FP8 GEMMs read (linear_weights)
    is a layer's parameters less its norms (two pre-norms, MLA's q and kv latent norms) and the BF16
    router (h x E weights, E correction biases).  An MTP module adds enorm, hnorm and the shared head's
    norm (3h) and its 2h -> h projection, which is a linear."""
    cfg = read(ROOT / "scenarios" / "models" / "deepseek-v3.json")
    h, E = cfg.hidden_size, cfg.num_experts
    latent_norms, router = cfg.q_lora_rank + cfg.kv_lora_rank, h * E + E
    assert sum(params.linear_weights(cfg, 0)) == params.layer(cfg, 0).total - 2 * h - latent_norms  # dense
    assert sum(params.linear_weights(cfg, 3)) == params.layer(cfg, 3).total - 2 * h - latent_norms - router
    mtp = params.mtp_module(cfg).total
    assert sum(params.mtp_linear_weights(cfg)) == mtp - (2 * h + 3 * h) - latent_norms - router


def _deepseek_layer_rows():
    st = derive.setup(load(ROOT / "scenarios" / "deepseek-v3-predicted.toml", []))
    return {k.name: k for k in derive.layer_kernels(st, 3)}  # layer 3: DeepSeek-V3's first MoE layer


def test_deepseek_runtime_attention_and_shared_expert_flops_by_hand():
    """deepseek-attention-not-causal, deepseek-shared-fc1-without-gate.  DeepSeek-V3 (config.json): 128
    heads, q/k head dim 128 + 64 (rope), v head dim 128; the scenario's micro-batch is one 4096-token
    sequence.  Causal attention does half of QK^T (2 n s a d) and PV (2 n s a v); its backward 2.5 times
    that (flash attention's 5 matmuls to the forward's 2).  The shared expert's fc1 is gate and up,
    2 x 2048 wide, from h = 7168: 2 n (2 x 2048) h."""
    rows = _deepseek_layer_rows()
    n = s = 4096
    heads, d, v, h, shared = 128, 128 + 64, 128, 7168, 2048
    forward = 0.5 * (2 * n * s * heads * d + 2 * n * s * heads * v)
    assert rows["flash attention"].flops == pytest.approx(forward)
    assert rows["flash attention backward"].flops == pytest.approx(2.5 * forward)
    assert rows["shared expert fc1"].flops == pytest.approx(2 * n * (2 * shared) * h)
    assert rows["shared expert fc2"].flops == pytest.approx(2 * n * h * shared)


# -- numbers for people, repeat ------------------------------------------------------------------------------
def test_exactly_one_unit_is_shown_in_that_unit():
    """units-1000-bytes-in-bytes.  Decimal units: 1000 B is 1 kB, 10^9 B is 1 GB (and an axis up to 1000 B
    is scaled in kB)."""
    assert units.nbytes(1000) == "1 kB"
    assert units.nbytes(1e9) == "1 GB"
    assert units.nbytes(999) == "999 B"
    assert units.byte_scale(1000.0) == (1000.0, "kB")
    assert units.byte_scale(999.0) == (1.0, "B")


def _linear_percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between closest ranks (numpy's default), by hand."""
    xs = sorted(values)
    rank = q / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (rank - lo) * (xs[hi] - xs[lo])


def test_repeat_p95_is_the_95th_percentile_by_hand():
    """repeat-p90-as-p95.  Six seeds with jitter: p95 sits three quarters of the way from the 5th to the 6th
    smallest (rank 0.95 x 5 = 4.75), p50 halfway between the 3rd and 4th."""
    sc = load(ROOT / "scenarios" / "quickstart.toml",
              ["pipeline.schedule=1f1b", "costs.jitter={distribution='lognormal', cv=0.3}"])  # fmt: skip
    doc = repeat.repeat(sc, 6)
    for key in ("makespan", "bubble_ratio"):
        values = [r[key] for r in doc["runs"]]
        assert len(set(values)) > 2  # the seeds differ, so the percentiles tell 90 from 95
        assert doc["summary"][key]["p95"] == pytest.approx(_linear_percentile(values, 95), rel=1e-12)
        assert doc["summary"][key]["p50"] == pytest.approx(_linear_percentile(values, 50), rel=1e-12)


def test_repeat_may_end_on_the_largest_seed():
    """repeat-last-seed-refused.  Seeds are below 2**64: ending on 2**64 - 1 is allowed, one past is not."""
    assert repeat.repeat_problem(1, 2**64 - 1) is None
    assert repeat.repeat_problem(2, 2**64 - 2) is None
    assert "past 2**64 - 1" in repeat.repeat_problem(2, 2**64 - 1)


# -- the Gantt chart ----------------------------------------------------------------------------------------
def _gantt(trace, capture):
    fig = plt.figure(figsize=(12, 3))
    ax = fig.add_axes((0.1, 0.2, 0.7, 0.7))
    try:
        gantt.draw_gantt(ax, trace, legend=False)
        capture(ax)
    finally:
        plt.close(fig)


def test_gantt_boxes_are_labelled_with_their_microbatch(monkeypatch):
    """gantt-boxes-labelled-with-stage.  1F1B, 2 stages, 3 micro-batches (F = 1, B = 2, no P2P): rank 1
    runs F0 B0 F1 B1 F2 B2, so its labels read 0 0 1 1 2 2 left to right; rank 0 runs F0 F1 B0 F2 B1 B2."""
    trace = run("1f1b", 2, 3, costs={"forward": 1.0, "backward": 2.0}).trace
    drawn = []
    real = gantt.draw_texts

    def spy(ax, x, y, texts, sizes, colours, zorder=4, **kw):
        drawn.extend(zip(np.asarray(x).tolist(), np.asarray(y).tolist(), texts))
        return real(ax, x, y, texts, sizes, colours, zorder, **kw)

    monkeypatch.setattr(gantt, "draw_texts", spy)
    _gantt(trace, lambda ax: None)
    rank_of_y = lambda y: round(-y / gantt.ROW_H)  # noqa: E731  (a lane's middle is less than a row from its rank)
    by_rank = {r: [t for x, y, t in sorted(drawn) if rank_of_y(y) == r] for r in (0, 1)}
    assert by_rank[1] == ["0", "0", "1", "1", "2", "2"]
    assert by_rank[0] == ["0", "1", "0", "2", "1", "2"]


def test_gantt_pair_forward_above_backward_below():
    """gantt-pair-backward-on-top.  In a [chunk] pair the forward's components fill the lane's upper half
    and the backward's its lower half (the legend's "forward above, backward below"); a lone op's
    component, the whole lane."""
    rows = np.zeros(3, dtype=COMPUTE_DTYPE)
    rows["rank"] = 1
    rows["part"] = 0
    rows["kind"] = [KIND_CODES["F"], KIND_CODES["B"], KIND_CODES["F"]]
    rows["overlapped"] = [True, True, False]
    bottom, height = gantt._geometry(rows)
    lane = -1 * gantt.ROW_H  # rank 1's lane: [lane, lane + LANE_H]
    half = gantt.LANE_H / 2
    assert bottom.tolist() == pytest.approx([lane + half, lane, lane])
    assert height.tolist() == pytest.approx([half, half, gantt.LANE_H])


def test_gantt_rank_names_sit_beside_their_rows():
    """gantt-rank-labels-upside-down.  Each "rank r" tick lies inside the vertical span of rank r's boxes,
    rank 0 on top."""
    trace = run("1f1b", 3, 3, costs={"forward": 1.0, "backward": 2.0}).trace
    seen = {}

    def capture(ax):
        seen["ticks"] = dict(zip([t.get_text() for t in ax.get_yticklabels()], ax.get_yticks()))
        seen["ylim"] = ax.get_ylim()

    _gantt(trace, capture)
    comp = trace.compute
    bottoms, heights = gantt._geometry(comp)
    for r in range(3):
        mine = comp["rank"] == r
        y = seen["ticks"][f"rank {r}"]
        assert bottoms[mine].min() <= y <= (bottoms[mine] + heights[mine]).max()
        assert seen["ylim"][0] <= y <= seen["ylim"][1]
    assert seen["ticks"]["rank 0"] > seen["ticks"]["rank 1"] > seen["ticks"]["rank 2"]


# -- plan ---------------------------------------------------------------------------------------------------
def test_plan_checks_an_interleaved_candidate_at_its_own_chunk_count():
    """plan-shape-check-ignores-chunks.  interleaved-1f1b needs stages a multiple of chunks_per_rank:
    9 stages at 3 chunks per rank run (3 ranks), 4 stages at 3 do not, whatever the default of 2 says."""
    sh = shape("interleaved-1f1b")
    assert sh.check(9, 6, 3) is None
    assert "multiple of chunks_per_rank = 3" in sh.check(4, 8, 3)


def test_a_candidate_a_little_over_the_device_is_still_simulated():
    """plan-no-memory-slack.  The memory estimate may be up to 10% over the device (MEMORY_SLACK, its
    docstring): at 5% over it is still a likely fit and simulated; at 20% over it is not."""
    device = 80e9

    def row(i, memory):
        return Row(i, Candidate(tensor=1), estimate=Estimate(100.0 + i, 0.0, memory))

    near, far = row(0, 1.05 * device), row(1, 1.2 * device)
    assert likely_fits(near, device) and not likely_fits(far, device)
    assert [r.index for r in to_simulate([near, far], 1, device)] == [0]


def test_plan_tries_likely_fits_before_faster_estimates_over_the_device():
    """plan-unlikely-fits-simulated-first.  A candidate estimated at twice the device's memory comes after
    one that fits, however much faster its estimate (estimate_order's docstring)."""
    device = 80e9
    fast_too_big = Row(0, Candidate(tensor=1), estimate=Estimate(50.0, 0.0, 2 * device))
    slow_fits = Row(1, Candidate(tensor=1), estimate=Estimate(100.0, 0.0, 0.5 * device))
    assert [r.index for r in estimate_order([fast_too_big, slow_fits], device)] == [1, 0]
    assert [r.index for r in estimate_order([fast_too_big, slow_fits], None)] == [0, 1]  # no device: by estimate


# -- compare --same-gpus, chart titles ------------------------------------------------------------------------
def test_same_gpus_counts_context_parallel_gpus_per_rank():
    """compare-same-gpus-ignores-context.  tensor 2 x context 2: each pipeline rank is 4 GPUs, so 16 GPUs are
    4 ranks: 4 stages of 1F1B, 8 of DualPipeV (two per rank)."""
    model = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
                                "model": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 8,
                                          "vocab_size": 1000, "num_attention_heads": 4, "intermediate_size": 512,
                                          "seq_length": 128},
                                "parallel": {"tensor": 2, "context": 2}, "hardware": {"preset": "H100"}})  # fmt: skip
    assert compare.at_gpus(model, "1f1b", 16).pipeline.stages == 4
    assert compare.at_gpus(model, "dualpipev", 16).pipeline.stages == 8
    assert "tensor x data x context = 4 GPUs per rank" in compare.at_gpus(model, "1f1b", 6)


def test_gantt_title_says_stages_on_ranks():
    """gantt-title-stages-and-ranks-swapped.  DualPipeV folds 8 stages onto 4 ranks; the title says so."""
    metrics = run("dualpipev", 8, 16, costs={"forward": 1.0, "backward": 2.0}).metrics
    assert gantt.gantt_title(metrics).startswith("dualpipev: 8 stages on 4 ranks, 16 micro-batches, ")


def test_dualpipe_closed_form_takes_an_unprofiled_pair_as_f_plus_b():
    """closed-form-pair-as-longer-half.  DualPipe's bubble (PP/2 - 1)(F&B + B - 3W) (DualPipe README) with no
    costs.overlapped: the pair is F + B.  8 stages, F = 1, B = 2, W = 1: (4 - 1)(3 + 2 - 3) = 6."""
    analytic = run("dualpipe", 8, 16, costs={"forward": 1.0, "backward": 2.0, "weight": 1.0}).metrics.to_dict()["analytic"]
    assert analytic["bubble"] == pytest.approx(6.0)


def test_chimera_closed_form_refused_when_backward_is_shorter_than_forward():
    """chimera-closed-form-given-when-b-below-f.  Chimera's (D - 2) F bubble assumes B = F (the paper's
    unit-cost case); with B < F it does not hold, so no figure is given and the reason names B != F."""
    analytic = run("chimera", 4, 8, costs={"forward": 2.0, "backward": 1.0}).metrics.to_dict()["analytic"]
    assert analytic["bubble"] is None and "B != F" in analytic["reason"]
