"""What an MoE user reads (s15e): tensor parallelism refused beyond a node, `model`'s notes and legend saying
what `run` does with a typed [chunk], the activated count's embedding, and memory.png naming the fullest rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, report
from dualpipe_sim.model.config import ModelError

ROOT = Path(__file__).resolve().parent.parent
DEEPSEEK = ROOT / "scenarios" / "deepseek-v3.toml"

# Qwen3-30B-A3B's HF config.json (Qwen/Qwen3-30B-A3B), the fields the model reads.
QWEN3_30B = {
    "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "tie_word_embeddings": False,
}  # fmt: skip


def qwen3(tensor: int = 1, expert: int = 8, data: int = 16, **hardware) -> dict:
    return {
        "pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8},
        "model": {**QWEN3_30B, "seq_length": 4096, "micro_batch_size": 1},
        "parallel": {"tensor": tensor, "expert": expert, "data": data},
        "hardware": {"preset": "H800", **hardware},
    }


def model_text(raw: dict) -> str:
    """What `dualpipe-sim model` prints for a scenario given as a dict (cli._cmd_model)."""
    sc = scenario.sections_only(raw)
    return report.text(sc.derived(), typed=report.hand_typed(sc), scenario=sc)


def test_tensor_parallel_beyond_a_node_is_refused():
    def kv16(raw: dict) -> dict:  # 16 key-value heads: tensor 16 must divide them too (Qwen3-30B has 4)
        raw["model"]["num_key_value_heads"] = 16
        return raw

    # 16 tensor ranks span two 8-GPU H800 nodes; the collectives would be costed on NVLink
    with pytest.raises(ModelError, match=r"parallel.tensor: must be at most the GPUs of one NVLink domain \(8 on the H800"):
        derive.setup(scenario.sections_only(kv16(qwen3(tensor=16))))
    derive.setup(scenario.sections_only(kv16(qwen3(tensor=8, data=8))))  # a whole node is fine
    derive.setup(scenario.sections_only(kv16(qwen3(tensor=16, gpus_per_node=16))))  # a 16-GPU node, said so
    with pytest.raises(ModelError, match=r"^parallel.tensor: must divide the key-value heads \(4, "):
        derive.setup(scenario.sections_only(qwen3(tensor=8, data=8)))  # Qwen3-30B's 4 over 8 tensor ranks


def test_typed_chunk_note_says_each_stage_is_costed_by_its_layout():
    raw = scenario.load_raw(DEEPSEEK)
    out = model_text(raw)
    assert "`run` costs each stage as its layout holds it: its MoE layers with the typed [chunk]" in out
    assert "every stage is costed as" not in out
    # ... which is what run does: stage 1 holds 4 MoE layers of the typed [chunk]'s forward parts, 4 x (4.37 +
    # 4.60 + 6.69 + 8.68) ms = 97.36 ms; stage 0 (3 dense layers, the embedding) is not 4 MoE layers' worth
    cm = scenario.load(DEEPSEEK).cost_model()
    assert cm.forward[1] == pytest.approx(4 * (4.37 + 4.60 + 6.69 + 8.68))
    assert cm.forward[0] < cm.forward[1] / 2
    # without the typed [chunk] (efficiency given) each stage is costed by its layout too (s15k), as `model`'s
    # F column says: stage 0's 3 dense layers are less than half stage 1's 4 MoE layers
    del raw["chunk"], raw["comm"]["p2p"]
    out = model_text(raw)
    assert "every stage is costed as" not in out and "typed [chunk]" not in out
    sc = scenario.from_dict(raw)
    forward = sc.cost_model().forward
    assert forward == pytest.approx(tuple(s.forward for s in sc.derived().stages), rel=1e-12)
    assert forward[0] < forward[1] / 2


def test_model_table_legend_and_activated_count():
    raw = qwen3(tensor=2)
    out = model_text(raw)
    assert "holds: E the embedding, m an MTP module, L the output head;" in out
    # the embedding, V x h = 151,936 x 2,048 = 311,164,928 parameters, is a lookup: left out of "activated"
    assert "(the embedding's 0.31 billion not counted)" in out
    assert "tensor 2 with MoE: each expert is costed whole on its rank (expert tensor parallelism 1" in out
    assert "with MoE" not in model_text(qwen3(tensor=1))  # TP 1: nothing to say


def test_memory_png_names_the_fullest_rank(monkeypatch, tmp_path):
    from dualpipe_sim.outputs.plots import memory

    caught = []
    monkeypatch.setattr(memory.canvas, "save", lambda fig, path: caught.append(fig))
    result = simulation.run(scenario.load(DEEPSEEK, ["pipeline.microbatches=32"]))
    memory.save_memory(result.trace, result.metrics, tmp_path / "m.png")
    title = caught[0]._suptitle.get_text()
    totals = [r.memory.total for r in result.metrics.per_rank]
    fullest = max(range(len(totals)), key=lambda r: (totals[r], -r))
    # DualPipe's rank 0 holds the embedding's stage and the head + MTP stage: the most static memory, though
    # ranks 2-13 hold more activations (the red dot)
    assert fullest == 0 and f"fullest: rank 0, {totals[0] / 1e9:.1f} GB" in title
    assert "the highest (red): 17 (43.6 GB) on rank 2" in title


def test_compare_names_the_schedule_whose_ranks_are_uneven(tmp_path, capsys):
    from dualpipe_sim.cli import main

    (tmp_path / "config.json").write_text(json.dumps(QWEN3_30B))
    path = tmp_path / "q.toml"
    path.write_text('[pipeline]\nschedule = "dualpipe"\nstages = 4\nmicrobatches = 8\n[model]\nconfig = "config.json"\n'
                    '[parallel]\nexpert = 8\ndata = 16\n[hardware]\npreset = "H800"\n')  # fmt: skip
    args = ["compare", str(path), "--schedules", "dualpipe,dualpipev", "--same-gpus", "64", "--plots", "none",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "parallel.layout" in x]
    # On the same 64 GPUs (4 ranks of 16) DualPipeV runs 8 stages of 6 layers, rank r holding stages r and 7 - r:
    # rank 0 has the embedding's and the head's, [0, 7], the uneven one; DualPipe's rank 0 holds [0, 3] of 12
    # layers each, within 25% of its others
    assert len(lines) == 1 and lines[0].startswith("warning: parallel.layout: under dualpipev, rank 0 computes ")
    assert "stages [0, 7]" in lines[0]


def test_model_table_shows_the_fp8_weight_copies_run_counts():
    raw = scenario.load_raw(DEEPSEEK)
    out = model_text(raw)
    head = next(x for x in out.splitlines() if x.startswith("stage layers"))
    row1 = next(x for x in out.splitlines() if x.split()[:2] == ["1", "4"])
    # docs/model.md, "Memory per rank": an FP8 copy cast per use of a stage's largest layer, 407,306,240 linear
    # weights, x 2 B (copy and transpose) = 0.8146 GB per MoE stage
    # stage, layers, holds, params (2 words), param, grad, optim (value and GB each), then fp8 w: words 11-12
    assert "optim/rank fp8 w/rank act/micro-batch" in " ".join(head.split())
    assert row1.split()[11:13] == ["0.815", "GB"]
    # DualPipe's rank 0 holds stages 0 and 15: run's fp8 weights are the two stages' figures added up
    sc = scenario.sections_only(raw)
    stages = report.summary(sc.derived(), sc)["stages"]
    rank0 = simulation.run(scenario.load(DEEPSEEK, ["pipeline.microbatches=32"])).metrics.per_rank[0].memory
    assert rank0.fp8_weights == pytest.approx(stages[0]["fp8_weight_bytes_per_rank"] + stages[15]["fp8_weight_bytes_per_rank"])
    assert "fp8 w/rank" not in model_text(qwen3())  # a BF16 model: no such column


def test_the_pair_view_title_stays_inside_a_small_gantt(monkeypatch, tmp_path):
    """A 4-rank component run's gantt.png is 12 in wide: its pair view's title, on one line, ran past the edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dualpipe_sim.outputs.plots import gantt_file

    caught = []
    monkeypatch.setattr(gantt_file.canvas, "save", lambda fig, path: caught.append(fig))
    result = simulation.run(scenario.from_dict(qwen3()))
    gantt_file.save_gantt(result.trace, result.metrics, tmp_path / "g.png")
    fig = caught[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    pair_ax = next(ax for ax in fig.axes if "part by part" in ax.get_title(loc="left"))
    box = pair_ax._left_title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1
    assert "weight-gradient parts pale" in pair_ax.get_title(loc="left")
