"""Session 17 QA: defects a new user met, each pinned by a test that failed before its fix.

- layout errors count in words ("1 MTP module", not "1 MTP modules");
- an inline ``[model.text_config]`` table's keys are checked like ``[model]``'s, and merge over the file's;
- ``qwen2_moe`` reads no ``head_dim`` (transformers' Qwen2MoeAttention: hidden_size // num_attention_heads);
- ``compare`` says when a schedule runs on other GPUs than 1F1B, and its speed-up per GPU;
- memory.png's peak labels are not struck through by the capacity line.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba

from dualpipe_sim import compare
from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import config, derive, layout
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.sections import ModelSection
from dualpipe_sim.outputs.plots.memory import draw_memory

from helpers import TINY_LLAMA_MODEL, cli_error, run_uniform

ROOT = Path(__file__).resolve().parents[1]
MAVERICK = ROOT / "scenarios" / "models" / "llama4-maverick.json"


# -- 1. layout error grammar -------------------------------------------------------------
@pytest.mark.parametrize("spec,layers,stages,mtp,line", [
    ("Etm|tL", 2, 2, 0, "'Etm|tL' places 1 MTP module (m), the model has 0 (num_nextn_predict_layers)"),
    ("Etm|tmL", 2, 2, 0, "'Etm|tmL' places 2 MTP modules (m), the model has 0 (num_nextn_predict_layers)"),
    ("Et|L", 2, 2, 0, "'Et|L' places 1 layer, the model has 2 (num_hidden_layers)"),
    ("Et|ttL", 2, 2, 0, "'Et|ttL' places 3 layers, the model has 2 (num_hidden_layers)"),
    ("EttL", 2, 2, 0, "'EttL' has 1 stage, pipeline.stages is 2"),
    ("Et|t|L", 2, 2, 0, "'Et|t|L' has 3 stages, pipeline.stages is 2"),
])
def test_layout_errors_say_one_thing_in_the_singular(spec, layers, stages, mtp, line):
    with pytest.raises(ModelError) as exc:
        layout.parse(spec, layers, stages, mtp)
    assert str(exc.value) == "parallel.layout: " + line


# -- 2. inline text_config keys ----------------------------------------------------------
# Llama 4's text-model fields, by hand from the Llama4TextConfig fields the reader reads (docs/model.md "Llama 4")
TEXT_FIELDS = ("attention_bias, attention_chunk_size, attn_temperature_tuning, head_dim, hidden_size, "
               "interleave_moe_layer_step, intermediate_size, intermediate_size_mlp, moe_layers, "
               "no_rope_layer_interval, no_rope_layers, num_attention_heads, num_experts_per_tok, num_hidden_layers, "
               "num_key_value_heads, num_local_experts, tie_word_embeddings, use_qk_norm, vocab_size")


def _maverick_toml(tmp_path, text_config: str) -> Path:
    path = tmp_path.parent / f"{tmp_path.name}-l4.toml"  # beside tmp_path: cli_error wants tmp_path empty
    path.write_text(f'[pipeline]\nschedule = "1f1b"\nstages = 6\nmicrobatches = 12\n'
                    f'[model]\nconfig = "{MAVERICK}"\nseq_length = 4096\n'
                    f'[parallel]\ntensor = 8\nexpert = 16\ndata = 16\n[hardware]\npreset = "H100"\n'
                    f"[model.text_config]\n{text_config}\n")
    return path


def test_a_typo_inside_text_config_is_refused_with_a_did_you_mean(tmp_path):
    line = cli_error(tmp_path, "run", str(_maverick_toml(tmp_path, "attention_chunk_sise = 8192")))
    assert line == ("error: model.text_config.attention_chunk_sise: not read for Llama 4's text model "
                    f"(its fields: {TEXT_FIELDS}); did you mean model.text_config.attention_chunk_size?")


@pytest.mark.parametrize("key", ["model_type", "architectures", "vision_config", "rope_theta"])
def test_outer_or_unread_fields_inside_text_config_are_refused(key):
    section = ModelSection.model_validate({"config": str(MAVERICK), "text_config": {key: 1}})
    with pytest.raises(ModelError, match=rf"^model\.text_config\.{key}: not read for Llama 4's text model "):
        derive.model_config(section)


def test_inline_text_config_fields_go_over_the_file_s_one_by_one():
    """The file's text_config: top-1 of 128 experts, hidden 5120, 48 layers; one field changed inline."""
    cfg = derive.model_config(ModelSection.model_validate({"config": str(MAVERICK),
                                                           "text_config": {"num_experts_per_tok": 2}}))
    assert (cfg.experts_per_token, cfg.num_experts, cfg.hidden_size, cfg.num_layers) == (2, 128, 5120, 48)


def test_a_whole_inline_llama4_checks_its_text_config_too():
    text = {k: v for k, v in json.loads(MAVERICK.read_text())["text_config"].items() if k in TEXT_FIELDS.split(", ")}
    section = ModelSection.model_validate({"model_type": "llama4", "text_config": text})
    assert derive.model_config(section).num_experts == 128  # the fields as read: accepted
    bad = ModelSection.model_validate({"model_type": "llama4", "text_config": {**text, "use_qk_norms": True}})
    with pytest.raises(ModelError, match=r"; did you mean model\.text_config\.use_qk_norm\?$"):
        derive.model_config(bad)


# -- 3. qwen2_moe reads no head_dim --------------------------------------------------------
QWEN2_MOE = {"model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 4, "vocab_size": 100,
             "num_attention_heads": 4, "intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
             "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}


def test_qwen2_moe_takes_hidden_over_heads_whatever_head_dim_says():
    cfg = config.from_hf({**QWEN2_MOE, "head_dim": 32})
    assert (cfg.qk_head_dim, cfg.v_head_dim) == (16, 16)  # 64 / 4, not 32
    assert cfg.defaults_taken == ("head_dim = hidden_size / num_attention_heads = 64 / 4 = 16 (transformers' "
                                  "fallback for qwen2_moe; qwen2_moe reads no head_dim; the config's 32 ignored)",)
    assert config.from_hf(QWEN2_MOE).qk_head_dim == 16


def test_qwen3_moe_still_reads_head_dim():
    cfg = config.from_hf({**QWEN2_MOE, "model_type": "qwen3_moe", "head_dim": 32})
    assert (cfg.qk_head_dim, cfg.v_head_dim, cfg.defaults_taken) == (32, 32, ())


def test_an_inline_head_dim_on_qwen2_moe_is_refused_and_on_qwen3_moe_taken():
    with pytest.raises(ModelError, match=r'^model\.head_dim: not read for model_type "qwen2_moe" \(its fields: '):
        derive.model_config(ModelSection.model_validate({**QWEN2_MOE, "head_dim": 32}))
    assert "head_dim" not in config.fields_of("qwen2_moe") and "head_dim" in config.fields_of("qwen3_moe")
    qwen3 = {k: v for k, v in QWEN2_MOE.items() if k != "shared_expert_intermediate_size"}  # no shared expert (s19g)
    cfg = derive.model_config(ModelSection.model_validate({**qwen3, "model_type": "qwen3_moe", "head_dim": 32}))
    assert cfg.qk_head_dim == 32


def test_qwen2_moe_heads_must_split_the_hidden_size():
    """Qwen2MoeAttention raises when head_dim x heads != hidden_size: 64 // 6 x 6 = 60."""
    with pytest.raises(ModelError) as exc:
        config.from_hf({**QWEN2_MOE, "num_attention_heads": 6, "num_key_value_heads": 6})
    assert str(exc.value) == "num_attention_heads: must divide hidden_size (64) for qwen2_moe, got 6"


# -- 4. compare on unequal GPUs --------------------------------------------------------------
# TINY_LLAMA_MODEL at 8 layers, 4 stages, 8 micro-batches, tensor 2 x data 3 = 6 GPUs a pipeline rank
TINY = (f'[pipeline]\nschedule = "1f1b"\nstages = 4\nmicrobatches = 8\n{TINY_LLAMA_MODEL}'
        '[parallel]\ntensor = 2\ndata = 3\n[hardware]\npreset = "H100"\n').replace("num_hidden_layers = 4",
                                                                                "num_hidden_layers = 8")


def _tiny() -> scenario.Scenario:
    return scenario.from_dict(tomllib.loads(TINY))


def test_a_schedule_on_half_the_gpus_gets_a_note_with_its_speed_up_per_gpu():
    c = compare.compare(_tiny(), ["1f1b", "dualpipev", "zb-h1"])
    one, v, zb = (r.metrics for r in c.results)
    assert (one.ranks, v.ranks, zb.ranks) == (4, 2, 4)  # DualPipeV folds 4 stages onto 2 ranks
    per_gpu = (one.makespan / v.makespan) * 24 / 12  # 4 ranks x 6 GPUs against 2 x 6
    lines = compare.report(c).splitlines()
    note = [ln for ln in lines if ln.startswith("dualpipev runs on")]
    assert note == [f"dualpipev runs on 12 GPUs, 1F1B on 24: speed-up per GPU {per_gpu:.2f}x (speed-up x 24 / 12); "
                    "compare tokens/s per GPU, or run with same_gpus=24"]  # the Python keyword; the CLI's below
    assert not any(ln.startswith(("zb-h1 runs on", "1f1b runs on")) for ln in lines)  # same GPUs: no note
    # the per-GPU figure is the ratio of the table's tokens/s per GPU (same tokens each step)
    rows = {r["schedule"]: r for r in compare.summary_rows(c)}
    assert per_gpu == pytest.approx(rows["dualpipev"]["tokens_per_gpu"] / rows["1f1b"]["tokens_per_gpu"])
    assert f"- {note[0]}" in compare.markdown(c, "tiny").splitlines()


def test_no_note_when_every_schedule_runs_on_the_same_gpus():
    c = compare.compare(_tiny(), ["1f1b", "dualpipev"], same_gpus=24)
    assert [r.metrics.ranks for r in c.results] == [4, 4]  # DualPipeV at 8 stages on 4 ranks
    assert compare.gpu_notes(c) == [] and "runs on" not in compare.report(c)


def test_the_note_reads_1f1b_s_gpus_when_1f1b_is_run_only_as_the_baseline():
    c = compare.compare(_tiny(), ["dualpipev"])
    assert c.baseline_gpus == 24
    assert compare.gpu_notes(c)[0].startswith("dualpipev runs on 12 GPUs, 1F1B on 24: ")


def test_the_command_line_names_its_flag_in_the_note_and_in_compare_md(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--schedules", "1f1b,dualpipev", "--plots", "none", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    note = [ln for ln in printed.splitlines() if ln.startswith("dualpipev runs on 12 GPUs, 1F1B on 24: ")]
    assert len(note) == 1 and note[0].endswith("; compare tokens/s per GPU, or run with --same-gpus 24")
    assert f"- {note[0]}" in (out / "compare.md").read_text().splitlines()


# -- 5. memory.png: a peak's label near capacity is not struck through by the capacity line ------------
def test_peak_labels_sit_on_a_white_backing_above_the_capacity_line():
    """1F1B, 4 ranks, 8 micro-batches, 2 GB an activation: rank 0's peak is 4 x 2 = 8 GB, capacity 8.5 GB, so the
    label (drawn just above the dot) sits on the dashed line, which must pass behind it."""
    r = run_uniform("1f1b", 4, 8, memory__activation=2e9)
    fig = plt.figure(figsize=(10, 5))
    ax, _ = draw_memory(fig, r.trace, capacity=8.5e9)
    labels = [t for t in ax.texts if "GB)" in t.get_text()]
    assert [t.get_text() for t in labels] == ["4 (8 GB)", "3 (6 GB)", "2 (4 GB)", "1 (2 GB)"]
    dashed = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    for t in labels:
        patch = t.get_bbox_patch()
        assert patch is not None and patch.get_facecolor() == to_rgba("white")
        assert t.get_zorder() > dashed[0].get_zorder()
    plt.close(fig)
