"""`dualpipe-sim model --explain` / `--json`: the step's end item by item (model/step_end.py).

The small model (tests/helpers.py TINY_LLAMA_MODEL): Llama-type, h 256, 4 layers of 655,872 parameters, vocab 1000,
untied head; two stages: stage 0 the embedding (256,000) + 2 layers = 1,567,744 parameters, stage 1 2 layers + final
norm + head (256,256) = 1,568,000.  On an H100 preset with data 2 and ZeRO 1 the data-parallel group (tensor 1 x
data 2) fits in one node: NVLink.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, report, step_end
from helpers import tiny_llama_toml

ROOT = Path(__file__).resolve().parents[1]
STAGE0, STAGE1 = 256_000 + 2 * 655_872, 2 * 655_872 + 256_256


def tiny(tmp_path, step: str = "", parallel: str = "data = 2\nzero = 1") -> Path:
    return tiny_llama_toml(tmp_path, f'[parallel]\n{parallel}\n[hardware]\npreset = "H100"\n'
                                     f'[step]\ngrad_sync = "derived"\n{step}\n')


def _sums(sc):
    """Per derived figure, the items' ms summed per stage; and `run`'s StepCosts."""
    d = sc.derived()
    costs = sc.step_costs(d)
    end = step_end.summary(sc, d)
    sums = {}
    for it in end["items"]:
        sums.setdefault(it["figure"], [0.0] * sc.pipeline.stages)
        sums[it["figure"]] = [a + b for a, b in zip(sums[it["figure"]], it["ms"])]
    return sums, costs, end


CASES = [  # (scenario file or None for the tiny one, overrides): every composition derived_sync has
    (None, []),  # ZeRO 1, not overlapped: reduce-scatter, Adam, exposed all-gather
    (None, ["step.overlap_grad_sync=true"]),  # the wait at the next step's start, the gather's slowdown
    (None, ["parallel.zero=2"]),  # ZeRO 2's last unit (or backlog)
    (None, ["parallel.zero=0"]),  # DDP all-reduce, Adam over the whole copy
    (None, ["hardware.efficiency=0.5"]),  # no kernel rates: bytes / a2a bandwidth, no optimizer figure
    ("scenarios/validation/mlperf51-llama8b-64b200.toml", []),  # FP8 parameters' cast, bucket-group chain
    ("scenarios/validation/mlperf41-gpt3-512.toml", []),  # tied embedding, FP8 weight refresh, apex's wait, NeMo's held group
    ("scenarios/validation/mlperf30-gpt3-512.toml", []),  # NeMo 1.x's fp32 embedding AdamW and its all-reduce
    ("scenarios/validation/bloom-176b.toml", []),  # DeepSpeed bf16
    ("scenarios/deepseek-v3-predicted.toml", []),  # experts, DualPipe's cross-copy sum
]


@pytest.mark.parametrize("path, sets", CASES)
def test_items_sum_to_the_figures_run_uses(tmp_path, path, sets):
    """Invariant: each derived [step] figure `run` uses (Scenario.step_costs) is the sum of its listed parts,
    stage by stage, and the section's figures and slowdown are run's."""
    sc = scenario.load(ROOT / path if path else tiny(tmp_path), sets)
    sums, costs, end = _sums(sc)
    assert end["derived"], "the case derives nothing"
    assert set(step_end.FIGURES) <= set(end["figures_ms"])
    for key in end["figures_ms"]:  # the three figures, and NeMo's tail where it has one (grad_sync_tail)
        assert end["figures_ms"][key] == list(getattr(costs, key))
        if key in end["derived"]:
            assert sums[key] == pytest.approx(list(getattr(costs, key)), rel=1e-12, abs=1e-12)
        else:
            assert key not in sums
    assert end["dp_comm_slowdown"] == list(costs.dp_comm_slowdown)
    assert end["grad_sync_launch"] == costs.grad_sync_launch


def test_reduce_scatter_and_adam_by_hand(tmp_path):
    """ZeRO 1 over data 2 on NVLink, fp32 gradients: stage 0 reduce-scatters 1,567,744 x 4 = 6,270,976 bytes,
    (2 - 1) / 2 of it over the bus: latency + 3,135,488 B / the NVLink bus (H100: 25.5 us + 3,135,488 / 321 GB/s =
    25.5 + 9.77 us = 0.03527 ms: latency-bound).  Adam over the shard, 1,567,744 / 2 = 783,872 parameters, each
    4 + 4 + 4 + 2 (master, gradient, new weight) + 2 x 8 (two fp32 moments read and written) + 4 (the clip
    norm's read) + 4 (the master copy's read) = 38 bytes: 29,787,136 B / 2.90 TB/s + one 2.5 us launch."""
    sc = scenario.load(tiny(tmp_path))
    r = sc.derived().setup.rates
    end = step_end.summary(sc, sc.derived())
    items = {it["name"]: it for it in end["items"]}
    rs = items["data-parallel gradient reduce-scatter"]
    assert rs["bytes"] == [STAGE0 * 4, STAGE1 * 4]
    assert rs["ms"][0] == pytest.approx((r.latency + 6_270_976 / 2 / r.nvlink_bus) * 1e3, rel=1e-12)
    assert (r.latency, r.nvlink_bus) == (25.5e-6, 321e9)  # the figures worked above
    assert rs["ms"][0] == pytest.approx(0.03527, abs=1e-5)
    assert (rs["link"], rs["bound"]) == ("nvlink", "latency")
    adam = items["optimizer step (Adam + clip norm + master copy)"]
    assert adam["bytes"][0] == 783_872 * 38 == 29_787_136
    assert adam["ms"][0] == pytest.approx((29_787_136 / r.hbm + r.floor) * 1e3, rel=1e-12)
    # not overlapped: the whole all-gather of the updated bf16 weights, 1,567,744 x 2 B over data 2 on NVLink
    gather = items["parameter all-gather (exposed)"]
    assert gather["bytes"][0] == STAGE0 * 2
    assert gather["ms"][0] == pytest.approx((r.latency + STAGE0 * 2 / 2 / r.nvlink_bus) * 1e3, rel=1e-12)
    assert gather["bound"] == "latency"  # 25.5 us of 25.5 + 1,567,744 / 321 GB/s = 30.4 us


def test_json_key_has_the_same_numbers(tmp_path, capsys):
    path = tiny(tmp_path)
    assert main(["model", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sc = scenario.load(path)
    costs = sc.step_costs(sc.derived())
    assert doc["step_end"]["figures_ms"]["grad_sync"] == list(costs.grad_sync)
    assert doc["step_end"]["figures_ms"]["optimizer"] == list(costs.optimizer)
    assert [it["name"] for it in doc["step_end"]["items"]] == [
        "data-parallel gradient reduce-scatter", "optimizer step (Adam + clip norm + master copy)",
        "gradient buffers zeroed at the step's start", "gradient norm all-reduce (clip)",  # Megatron-core's (the default)
        "parameter all-gather (exposed)"]  # fmt: skip
    assert doc["step_end"] == step_end.summary(sc, sc.derived())


def test_explain_text_reads(tmp_path, capsys):
    assert main(["model", str(tiny(tmp_path)), "--explain"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = lines.index("  the step's end, once per step, per stage copy (docs/step.md):") + 1
    assert lines[at] == "    grad sync after the pipeline, parameter gather not overlapped, step.dp_comm_sms 16"
    assert lines[at + 1] == ("    data-parallel gradient reduce-scatter [grad_sync]: data x context 2; nvlink; "
                             "bound by latency")
    # 6,270,976 and 6,272,000 bytes; 0.03527 ms (worked above) and stage 1's 25.5 us + 3,136,000 / 321 GB/s
    assert lines[at + 2] == "      size by stage 0: 6.271 MB, 1: 6.272 MB; ms 0.03527, every stage"
    assert "    run's step.grad_sync (derived: the sum of its parts above): ms 0.03527, every stage" in lines
    assert "    run's step.cross_copy_sync (as the scenario gives it): ms 0, every stage" in lines
    # without --explain the section is left out; JSON always has it
    assert main(["model", str(tiny(tmp_path))]) == 0
    assert "the step's end" not in capsys.readouterr().out


def test_without_a_step_table(tmp_path, capsys):
    path = tmp_path / "nostep.toml"
    path.write_text(tiny(tmp_path).read_text().split("[step]")[0])
    assert main(["model", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_end"] is None
    assert main(["model", str(path), "--explain"]) == 0
    assert "the step's end: no [step] table, so `run` adds nothing after the pipeline" in capsys.readouterr().out


def test_report_summary_without_scenario_has_no_key(tmp_path):
    sc = scenario.load(tiny(tmp_path))
    assert "step_end" not in report.summary(sc.derived())


def test_help_names_the_section(capsys):
    with pytest.raises(SystemExit):
        main(["model", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "step_end: the step's end item by item" in out and "and the step's end item by item" in out


def test_a_step_run_refuses_is_said_not_raised(tmp_path, capsys):
    """[step] grad_sync = "derived" without [hardware]: `run` refuses it; `model` still describes the model."""
    path = tmp_path / "nohw.toml"
    path.write_text(tiny(tmp_path).read_text().replace('[hardware]\npreset = "H100"\n', ""))
    assert main(["model", str(path), "--json"]) == 0
    want = 'step.grad_sync: "derived" needs the [model] and [hardware] sections'
    assert json.loads(capsys.readouterr().out)["step_end"] == {"error": want}
    assert main(["model", str(path), "--explain"]) == 0
    assert f"  the step's end: not costed, `run` would refuse the scenario: {want}" in capsys.readouterr().out.splitlines()


def test_zero3_item_shows_the_last_units_bytes_and_what_is_queued_before_it(tmp_path):
    """ZeRO 3 leaves the end of the step what the last backward leaves on the channel: its last unit's
    reduce-scatter, behind any earlier one still running.  A layer's, 655,872 x 4 = 2,623,488 B: 25.5 us +
    1,311,744 / 321 GB/s = 29.586 us; the embedding's, 256,000 x 4 B = 1,024,000 B: 25.5 + 512,000 B / 321 GB/s =
    27.095 us.  Stage 1 (backward: head, layer 3, layer 2): layer 3's reduce-scatter ends under layer 2's backward,
    so only layer 2's is left, 29.586 us, latency-bound (25.5 us is over half of it).  Stage 0 (layer 1, layer 0,
    the embedding): layer 0's is issued as its backward ends and the embedding's backward (e us) is shorter, so
    29.586 - e of it is left, then the embedding's 27.095.  The item's bytes are the last unit's."""
    from dualpipe_sim.model import derive, layout

    sc = scenario.load(tiny(tmp_path), ["parallel.zero=3"])
    derived = sc.derived()
    f, i, w = derive.extra_times(derived.setup, layout.Stage((), embedding=True))
    e = i + w
    assert 0 < e < 0.029586
    items = {it["name"]: it for it in step_end.summary(sc, derived)["items"]}
    rs = items["data-parallel gradient reduce-scatter"]
    assert rs["bytes"] == [1_024_000, 2_623_488]
    assert rs["ms"] == pytest.approx([0.029586 - e + 0.027095, 0.029586], abs=1e-6)
    assert rs["bound"] == "bandwidth (the backlog)"


def test_zero2_item_shows_the_stages_whole_gradient(tmp_path):
    """ZeRO 2's figure is the last backward's reduce-scatters, the stage's whole gradient (ZeRO 1's bytes: 4 x
    (256,000 + 2 x 655,872) = 6,270,976 B on stage 0), released unit by unit through that backward (what the earlier
    backwards left on the channel is the trace's, s21k)."""
    sc = scenario.load(tiny(tmp_path), ["parallel.zero=2"])
    items = {it["name"]: it for it in step_end.summary(sc, sc.derived())["items"]}
    rs = items["data-parallel gradient reduce-scatter"]
    assert rs["bytes"][0] == 4 * (256_000 + 2 * 655_872)
    assert "released unit by unit" in rs["rule"] and rs["bound"] in ("latency", "bandwidth")


def test_explain_lines_fit_140_columns(tmp_path, capsys):
    """Every line of the step's end fits a 140-column terminal, on the bundled scenarios with the longest settings
    (an overlapped gather's rule names the schedule's wait and the setting)."""
    for path in (ROOT / "scenarios/deepseek-v3-predicted.toml", ROOT / "scenarios/validation/mlperf41-gpt3-512.toml"):
        assert main(["model", str(path), "--explain"]) == 0
        lines = capsys.readouterr().out.splitlines()
        lines = lines[next(i for i, line in enumerate(lines) if "the step's end" in line):]
        assert len(lines) > 10 and max(len(line) for line in lines) <= 140, max(lines, key=len)


def test_slowdown_said_idle_when_nothing_overlaps(tmp_path, capsys):
    """Not overlapped, the gradient reduction starts after each rank's last compute (engine/step.py): the
    slowdown figure is printed, with the words that nothing runs beside it; overlapped, without them."""
    assert main(["model", str(tiny(tmp_path)), "--explain"]) == 0
    assert "      (nothing overlaps them here: the gradient reduction follows the pipeline)" in capsys.readouterr().out
    assert main(["model", str(tiny(tmp_path)), "--explain", "--set", "step.overlap_grad_sync=true"]) == 0
    assert "nothing overlaps them here" not in capsys.readouterr().out


def test_fp8_cast_item_names_the_expert_group(capsys):
    """Mixtral 8x22B with FP8 parameters at EP 4 (tests/test_fp8_master_cast.py): the experts' amax all-reduce runs
    over the expert-data ranks, 8 x 2 / 4 = 4, beside the dense one over data 8."""
    sc = scenario.load(ROOT / "scenarios/validation/mz-mixtral-8x22b.toml",
                       ["model.fp8=true", "model.fp8_params=true", "parallel.expert=4"])  # fmt: skip
    items = {it["name"]: it for it in step_end.summary(sc, sc.derived())["items"]}
    assert items["FP8 parameters' cast + amax all-reduce"]["group"] == (
        "amax over data x context 8, the experts' over expert-data 4")


def test_tied_embedding_all_reduce_bound_by_its_figures(tmp_path):
    """The tiny model with a tied head: its embedding's gradient, 1,000 x 256 x 4 B = 1,024,000 B, all-reduced between
    the two pipeline ranks (GPUs 0-1 and 2-3, one node: NVLink): 25.5 us + 2 x (2 - 1) / 2 x 1,024,000 / 321 GB/s =
    25.5 + 3.19 = 28.69 us, of which the 1-byte message's 25.5 us is over half: latency-bound, as docs/model.md's rule
    says."""
    sc = scenario.load(tiny(tmp_path), ["model.tie_word_embeddings=true"])
    items = {it["name"]: it for it in step_end.summary(sc, sc.derived())["items"]}
    tied = items["tied embedding gradient all-reduce"]
    assert tied["bytes"] == [1_024_000, 1_024_000]
    assert tied["ms"] == pytest.approx([0.028690, 0.028690], abs=1e-6)
    assert (tied["link"], tied["bound"]) == ("nvlink", "latency")


def test_cross_copy_sum_said_unused_where_no_stage_is_held_twice(tmp_path):
    """step.cross_copy_sync = "derived" on 1F1B: the sum is derived for every stage (the tiny model's 6,270,976 B at
    the NIC's rate), but no stage is held by two ranks, so `run` (engine/step.py) adds none of it; the item says so.
    On DualPipe, where every stage is held twice, it does not."""
    sc = scenario.load(tiny(tmp_path), ["step.cross_copy_sync=derived"])
    (cross,) = [it for it in step_end.summary(sc, sc.derived())["items"] if it["figure"] == "cross_copy_sync"]
    assert cross["bytes"] == [STAGE0 * 4, STAGE1 * 4]
    assert cross["rule"].endswith("; no stage is held twice here: `run` adds none of it")
    sc = scenario.load(tiny(tmp_path), ["step.cross_copy_sync=derived", "pipeline.schedule=dualpipe",
                                        "pipeline.microbatches=8"])  # fmt: skip
    (cross,) = [it for it in step_end.summary(sc, sc.derived())["items"] if it["figure"] == "cross_copy_sync"]
    assert cross["rule"] == "a stage held twice (DualPipe, Chimera): the copies' gradients summed"


def test_adam_over_the_whole_copy_without_zero(tmp_path):
    """ZeRO 0: no optimizer shard; Adam updates stage 0's 1,567,744 parameters, 38 B each (as above) = 59,574,272 B."""
    sc = scenario.load(tiny(tmp_path), ["parallel.zero=0"])
    adam = step_end.summary(sc, sc.derived())["items"][1]
    assert adam["bytes"][0] == STAGE0 * 38 == 59_574_272
    assert adam["group"] == "the rank's whole stage copy (ZeRO 0)"


def test_fp8_parameters_are_gathered_at_one_byte_and_the_gradient_buffers_zeroed_whole(tmp_path):
    """FP8 parameters (model.fp8_params): the updated weights all-gathered are the linears' FP8 copies, 1 B an
    element, the rest bf16.  A tiny layer's linears: 4 x 256 x 256 (attention) + 3 x 256 x 512 (MLP) = 655,360 of
    its 655,872 parameters (2 norms of 256 the rest); stage 0: (256,000 + 2 x 512) x 2 + 2 x 655,360 = 1,824,768 B,
    stage 1: (2 x 512 + 256 + 256,256) x 2 + 1,310,720 = 1,825,280 B.  The step's start zeroes each stage's whole
    fp32 gradient buffer: its parameters x 4 B, whatever the parameters' own bytes."""
    sc = scenario.load(tiny(tmp_path), ["model.fp8=true", "model.fp8_params=true"])
    r = sc.derived().setup.rates
    items = {it["name"]: it for it in step_end.summary(sc, sc.derived())["items"]}
    gather = items["parameter all-gather (exposed)"]
    assert gather["bytes"] == [1_824_768, 1_825_280]
    assert gather["ms"][0] == pytest.approx((r.latency + 1_824_768 / 2 / r.nvlink_bus) * 1e3, rel=1e-12)
    assert items["gradient buffers zeroed at the step's start"]["bytes"] == [STAGE0 * 4, STAGE1 * 4]


def test_nemo_fp32_embedding_optimizer_all_reduces_the_tied_gradient_in_fp32():
    """NeMo 1.x's fp32 embedding AdamW (step.fp32_embedding_optimizer, MLPerf v3.0 GPT-3, bf16 gradients otherwise):
    the tied embedding's gradient all-reduced in fp32, 50,688 x 12,288 / TP 4 x 4 B = 622,854,144 B, the bytes its
    time is worked from (an all-reduce of two ranks over the NIC)."""
    sc = scenario.load(ROOT / "scenarios/validation/mlperf30-gpt3-512.toml")
    d = sc.derived()
    assert d.setup.sharding.grads_bytes == 2
    [tied] = [it for it in step_end.summary(sc, d)["items"] if it["name"] == "tied embedding gradient all-reduce"]
    assert tied["bytes"][0] == 50_688 * 12_288 // 4 * 4 == 622_854_144
    timed = collectives.time("all_reduce", tied["bytes"][0], 2, d.setup.rates, tied["link"]) * 1e3
    assert tied["ms"][0] == pytest.approx(timed, rel=1e-12)
