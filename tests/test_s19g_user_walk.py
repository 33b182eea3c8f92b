"""s19g: a new user's day with an MoE model on Blackwell (Qwen3-30B-A3B on B200 / GB200).
What the walk found wrong, each checked against an independent truth (the HF model code, the figure's geometry)."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from dualpipe_sim.cli import parse_grid
from dualpipe_sim.model import config, derive
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.sections import ModelSection
from dualpipe_sim.sweep import run_sweep
from test_sweep_charts import figures  # noqa: F401  (the sweep's figures, caught as they close)

QUICK = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"


# Qwen3-30B-A3B's fields that shape the model (Qwen/Qwen3-30B-A3B config.json), shrunk to keep the test fast.
QWEN3_MOE = {"model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 4, "vocab_size": 100,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 192,
             "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32}


# -- 1. Qwen3-MoE has no shared expert --------------------------------------------------------
# transformers' Qwen3MoeSparseMoeBlock (huggingface/transformers@b282e23,
# src/transformers/models/qwen3_moe/modular_qwen3_moe.py) is a gate and the routed experts only; Qwen2-MoE's block
# adds shared_expert and shared_expert_gate from shared_expert_intermediate_size.  A Qwen3-MoE config carrying the
# field (a config copied from Qwen2-MoE) runs with no shared expert in transformers.

def test_a_qwen3_moe_config_with_a_shared_expert_size_has_no_shared_expert():
    with_field = config.from_hf({**QWEN3_MOE, "shared_expert_intermediate_size": 1024})
    assert with_field.shared_intermediate_size == 0 and not with_field.shared_expert_gate
    assert with_field == config.from_hf(QWEN3_MOE)


def test_qwen2_moe_still_reads_its_shared_expert():
    cfg = config.from_hf({**QWEN3_MOE, "model_type": "qwen2_moe", "head_dim": None,
                          "shared_expert_intermediate_size": 1024})
    assert cfg.shared_intermediate_size == 1024 and cfg.shared_expert_gate


def test_an_inline_shared_expert_size_on_qwen3_moe_is_refused():
    section = ModelSection.model_validate({**QWEN3_MOE, "shared_expert_intermediate_size": 1024})
    with pytest.raises(ModelError, match=r'^model\.shared_expert_intermediate_size: not read for model_type '
                                         r'"qwen3_moe" \(its fields: '):
        derive.model_config(section)
    assert "shared_expert_intermediate_size" in config.fields_of("qwen2_moe")
    assert "shared_expert_intermediate_size" not in config.fields_of("qwen3_moe")


# -- 2. the sweep heatmap's colour-bar label fits its figure ----------------------------------
# A one-schedule sweep of 3 stage counts x 3 micro-batch counts drew bubble_heatmap.png 3.9 inches tall, and the
# colour bar's label "bubble ratio (grey: skipped, the schedule cannot take the shape)" ran off its top and bottom.

def _texts_inside(fig) -> list[tuple[str, object]]:
    """(text, its extent) for every visible text of the figure that reaches outside it (1 px of slack)."""
    canvas = FigureCanvasAgg(fig)  # the caught figure is closed: lay it out again on a canvas of its own
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    out = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        e = text.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            out.append((text.get_text(), e))
    return out


@pytest.mark.parametrize("schedules", [["dualpipev"], ["1f1b", "dualpipev"]])
def test_every_text_of_the_bubble_heatmap_is_on_the_figure(tmp_path, figures, schedules):
    grid = [f"pipeline.schedule={','.join(schedules)}", "pipeline.stages=2,4,8", "pipeline.microbatches=16,32,64"]
    run_sweep(QUICK, parse_grid(grid), tmp_path / "o", jobs=1)
    fig = next(f for f in figures if f._suptitle is not None and "over stages x micro-batches" in f._suptitle.get_text())
    assert _texts_inside(fig) == []
    bar = fig.axes[-1]  # the colour bar's axes, added last
    assert bar.get_ylabel().startswith("bubble ratio")


def test_the_heatmap_names_the_grey_cells_only_when_there_are_some(tmp_path, figures):
    # DualPipeV cannot take an odd stage count (two stages a rank): 3 stages is skipped, a grey cell.
    run_sweep(QUICK, parse_grid(["pipeline.schedule=dualpipev", "pipeline.stages=3,4", "pipeline.microbatches=8,16"]),
              tmp_path / "g", jobs=1)
    label = figures[-1].axes[-1].get_ylabel()
    assert "grey" in label and _texts_inside(figures[-1]) == []
    run_sweep(QUICK, parse_grid(["pipeline.schedule=dualpipev", "pipeline.stages=2,4", "pipeline.microbatches=8,16"]),
              tmp_path / "n", jobs=1)
    assert "grey" not in figures[-1].axes[-1].get_ylabel()


# -- 3. report.html's metrics table shows the device's memory as a size -------------------------
# device_memory is a whole number of bytes (an int in metrics.json), so the table printed 192265846784 beside
# memory.total's "61 GB".  The B200 preset's 192,265,846,784 bytes are 192.27 GB (10^9).

def test_report_shows_device_memory_as_a_size():
    from dualpipe_sim.outputs.plots import report

    assert report._cell("device_memory", 192_265_846_784) == "192 GB"
    assert report._cell("device_memory", 85_520_809_984) == "85.5 GB"  # H100's 81559 MiB
    assert report._cell("ranks", 4) == "4"  # a count stays a count
