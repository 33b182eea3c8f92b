"""compare --same-gpus N: every schedule at the stage count that puts it on N GPUs (docs/compare.md)."""

from pathlib import Path

import pytest

from dualpipe_sim import compare
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"  # 8 stages, F 1, B 2, W 1, F&B 2.5, 2 GB / 4 GB per stage


def test_v_shapes_get_twice_the_stages_and_half_the_work_each():
    sc = scenario.load(QUICK)
    v = compare.at_gpus(sc, "dualpipev", 8)
    assert v.pipeline.stages == 16  # DualPipeV folds two stages onto each of the 8 ranks
    # the same model cut into 16 stages: each stage half of the 8-stage one
    assert (v.costs.forward, v.costs.backward, v.costs.weight, v.costs.overlapped) == (0.5, 1.0, 0.5, 1.25)
    assert (v.memory.activation, v.memory.parameters) == (1e9, 2e9)
    one = compare.at_gpus(sc, "1f1b", 8)
    assert one.pipeline.stages == 8 and one.costs.forward == 1.0
    inter = compare.at_gpus(sc.model_copy(update={"pipeline": sc.pipeline.model_copy(update={"chunks_per_rank": 3})}),
                            "interleaved-1f1b", 8)
    assert inter.pipeline.stages == 24 and inter.costs.forward == pytest.approx(1 / 3)


def test_1f1b_at_fewer_gpus_by_hand():
    # 4 stages of F 1, B 2 on 2 GPUs: 2 stages of F 2, B 4 (W 1 -> 2); no P2P. 1F1B with S = 2, M = 4:
    # (M + S - 1) x (F + B) = 5 x 6 = 30 ms.
    sc = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 4},
                             "costs": {"forward": 1.0, "backward": 2.0, "weight": 1.0}})  # fmt: skip
    result = compare.compare(sc, ["1f1b", "gpipe"], same_gpus=2)
    assert [r.metrics.makespan for r in result.results] == [pytest.approx(30.0)] * 2
    assert all(r.metrics.ranks == 2 for r in result.results) and result.baseline_makespan == pytest.approx(30.0)


def test_reasons_instead_of_runs():
    lists = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
                                "costs": {"forward": [1.0, 2.0], "backward": 2.0}})  # fmt: skip
    assert "per-stage lists" in compare.at_gpus(lists, "1f1b", 4)
    model = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
                                "model": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 8,
                                          "vocab_size": 1000, "num_attention_heads": 4, "intermediate_size": 512,
                                          "seq_length": 128},
                                "parallel": {"tensor": 2}, "hardware": {"preset": "H100"}})  # fmt: skip
    assert compare.at_gpus(model, "1f1b", 3) == ("3 GPUs is not a multiple of tensor x data x context = 2 "
                                                 "GPUs per rank")  # fmt: skip
    ok = compare.at_gpus(model, "dualpipev", 8)  # 4 ranks x 2 stages; the [model] is re-split by its layout
    assert ok.pipeline.stages == 8 and ok.derived().setup.stages[0].layers == (0,)


def test_cli_same_gpus(tmp_path, capsys):
    assert main(["compare", str(QUICK), "--same-gpus", "8", "--schedules", "1f1b,dualpipe,dualpipev",
                 "--out", str(tmp_path / "c"), "--plots", "none"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "devices" not in line]
    assert [r.split("|")[2].strip() for r in rows] == ["8", "8", "8"]
    assert main(["compare", str(QUICK), "--same-gpus", "0", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --same-gpus: must be") and err.count("\n") == 1 and not (tmp_path / "d").exists()
