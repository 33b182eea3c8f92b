"""docs/make_validation.py and its inputs (docs/validation.md): published.csv agrees with each
scenario's layout and with the published step time it quotes, and the script splits the runs into
an A100, a Hopper and a B200 table, each with its own mean and worst.  No simulation runs here."""

from __future__ import annotations

import csv
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "scenarios" / "validation"
SCRIPT = runpy.run_path(str(ROOT / "docs" / "make_validation.py"), run_name="doc_script_under_test")
ROWS = list(csv.DictReader(open(FOLDER / "published.csv")))
STEP = re.compile(r"^([0-9.]+) s per (?:step|iteration)")


def load(row):
    return SCRIPT["scenario"].load(FOLDER / row["scenario"])


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_each_row_has_its_scenario_and_gpu_count(row):
    sc = load(row)
    assert SCRIPT["gpus"](sc) == int(row["gpus"])
    assert row["source"]


HOPPER = [r for r in ROWS if load(r).hardware.preset in ("H100", "H800")]
BLACKWELL = [r for r in ROWS if load(r).hardware.preset == "B200"]
MEASURED = HOPPER + BLACKWELL  # rows whose published figure is a step time of the scenario's own global batch


def test_hopper_rows_exist_and_cover_the_runs_the_doc_names():
    names = {r["name"] for r in HOPPER}
    assert len(HOPPER) >= 10
    assert {"mlperf30-gpt3-768", "mlperf31-gpt3-10752", "mz-qwen3-235b-ep32pp8"} <= names


@pytest.mark.parametrize("row", MEASURED, ids=[r["name"] for r in MEASURED])
def test_hopper_tokens_per_gpu_is_the_global_batch_over_the_published_step(row):
    """tokens/s per GPU = micro-batches x micro-batch x data x sequence / step / GPUs: the CSV's
    figure against the step time it quotes and the scenario's own layout (a typo in either fails)."""
    sc = load(row)
    step = float(STEP.match(row["published"]).group(1))
    model = sc.model
    tokens = sc.pipeline.microbatches * model.micro_batch_size * sc.parallel.data * model.seq_length
    expected = tokens / step / int(row["gpus"])
    assert float(row["published_tokens_per_second_per_gpu"]) == pytest.approx(expected, rel=5e-5)


@pytest.mark.parametrize(
    "name, tp, pp, vp, dp, m, gbs",
    [  # the submissions' config_DGXH100_<nodes>x8x<minibs>x<tp>x<pp>_mbs1.sh and their logs' global batch
        ("mlperf30-gpt3-512", 4, 8, 12, 16, 128, 2048),
        ("mlperf30-gpt3-3584cw", 4, 8, 12, 112, 24, 2688),
        ("mlperf31-gpt3-10752", 4, 8, 12, 336, 8, 2688),
        ("mlperf40-gpt3-512", 4, 8, 4, 16, 72, 2304),  # micro-batch 2
        ("mlperf40-gpt3-11616", 4, 6, 8, 484, 6, 2904),
        # v4.1 (NGC 24.09): INTERLEAVED_PIPELINE=6, micro-batch 2; the logs' 128 and 64 accumulation steps
        ("mlperf41-gpt3-256", 4, 8, 6, 8, 128, 2048),
        ("mlperf41-gpt3-512", 4, 8, 6, 16, 64, 2048),
        # v5.0 Llama 3.1 405B: config_DGXH100_<nodes>x8x<minibs>xtp8pp8cp2.sh, INTERLEAVED_PIPELINE=8, MINIBS = the
        # logs' accumulation steps, DP = GPUs / (TP 8 x PP 8 x CP 2)
        ("mlperf50-llama405b-512", 8, 8, 8, 4, 288, 1152),
        ("mlperf50-llama405b-2432", 8, 8, 8, 19, 64, 1216),
        ("mlperf50-llama405b-8192", 8, 8, 8, 64, 24, 1536),
        # Megatron-MoE-ModelZoo's Qwen3 H100 table: TP, PP, VPP, DP, GA, GBS
        ("mz-qwen3-235b-ep32pp8", 2, 8, 4, 16, 128, 2048),
        ("mz-qwen3-235b-tp4ep8pp8", 4, 8, 4, 8, 256, 2048),
    ],
)
def test_layouts_as_published(name, tp, pp, vp, dp, m, gbs):
    sc = SCRIPT["scenario"].load(FOLDER / f"{name}.toml")
    p = sc.pipeline
    assert (sc.parallel.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank, sc.parallel.data) == (tp, pp, vp, dp)
    assert p.microbatches == m and m * sc.model.micro_batch_size * dp == gbs
    assert sc.hardware.preset == "H100" and sc.hardware.efficiency is None


@pytest.mark.parametrize("gpus", [512, 2048, 2432, 2560, 8192])
def test_llama405b_rows_as_the_code_sets_them(gpus):
    sc = SCRIPT["scenario"].load(FOLDER / f"mlperf50-llama405b-{gpus}.toml")
    assert sc.parallel.context == 2 and sc.model.seq_length == 8192 and sc.model.micro_batch_size == 1
    # NeMo's get_vocab_size: 128,256 up to a multiple of 128 x TP 8 = 1,024: 126 x 1,024
    assert sc.model.vocab_size == 126 * 1024 and 125 * 1024 < 128256 <= 126 * 1024
    # ASYM_PP_EMBED / ASYM_PP_LOSS: 126 layers + the embedding + the loss = 128 over 64 virtual stages, 2 each
    from dualpipe_sim.model import layout

    stages = layout.parse(sc.parallel.layout, 126, sc.pipeline.stages)
    assert len(stages) == 64 and stages[0].embedding and stages[-1].head
    assert [len(st.layers) + st.embedding + st.head for st in stages] == [2] * 64


def test_b200_layout_as_published():
    # config_DGXB200_8x8x1024x4x8_mbs2_cg.sh: TP 4, PP 8, INTERLEAVED_PIPELINE=6, micro-batch 2, 8 nodes: DP
    # 64 / 32 = 2; MINIBS 1024 x DP 2 = the log's global batch 2,048, 2,048 / (2 x 2) = its 512 accumulation steps
    sc = SCRIPT["scenario"].load(FOLDER / "mlperf41-gpt3-64b200.toml")
    p = sc.pipeline
    assert (sc.parallel.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank, sc.parallel.data) == (4, 8, 6, 2)
    assert p.microbatches == 512 and 512 * sc.model.micro_batch_size * 2 == 2048
    assert sc.hardware.preset == "B200" and sc.hardware.efficiency is None
    # a data-parallel group's two ranks share a node (tensor innermost, then data): no NIC shared with the P2P
    assert sc.parallel.tensor * sc.parallel.data == 8 and not sc.step.grad_sync_shares_p2p


@pytest.mark.parametrize("name, group", [
    # Megatron-LM 24.09-alpha.rc0 hands TE the tensor x context group: TP 4, CP 1 (v4.1 H100 and B200) ...
    ("mlperf41-gpt3-512", 4), ("mlperf41-gpt3-256", 4), ("mlperf41-gpt3-64b200", 4),
    # ... where core_v0.7.0 (v4.0) handed it tensor x data x context: 4 x 16
    ("mlperf40-gpt3-512", 64),
])  # fmt: skip
def test_v41_amax_reduction_group(name, group):
    from dualpipe_sim.model import derive

    assert derive.setup(SCRIPT["scenario"].load(FOLDER / f"{name}.toml")).amax_group == group


@pytest.mark.parametrize("name, tokens", [
    # MLPerf v4.1 GPT-3: the logs' global batch, 2,048 sequences of 2,048 tokens
    ("mlperf41-gpt3-256", 2048 * 2048), ("mlperf41-gpt3-512", 2048 * 2048), ("mlperf41-gpt3-64b200", 2048 * 2048),
    # MLPerf v5.0 Llama 3.1 405B: 1,152 and 1,536 sequences of 8,192 tokens
    ("mlperf50-llama405b-512", 1152 * 8192), ("mlperf50-llama405b-8192", 1536 * 8192),
])  # fmt: skip
def test_new_mlperf_rows_simulate_and_count_the_global_batch(name, tokens):
    """The rows run as the table runs them (a real simulation): each step trains the logs' global batch,
    so tokens/s x step time = the batch's tokens whatever the prediction."""
    m = SCRIPT["simulation"].run(load(next(r for r in ROWS if r["name"] == name))).metrics
    assert m.step.tokens_per_second * m.step.total / 1e3 == pytest.approx(tokens, rel=1e-9)
    assert 0.0 < m.bubble_ratio < 0.5


def fake_run(sc):
    """A run whose tokens/s is 1000 per GPU on A100, 2000 on Hopper and 3000 on B200 (no simulation)."""
    per_gpu = {"A100": 1000.0, "B200": 3000.0}.get(sc.hardware.preset, 2000.0)
    step = SimpleNamespace(tokens_per_second=per_gpu * SCRIPT["gpus"](sc), total=1000.0)
    return SimpleNamespace(metrics=SimpleNamespace(step=step, bubble_ratio=0.0))


def test_rows_split_by_gpu_and_cover_the_csv(monkeypatch):
    monkeypatch.setattr(SCRIPT["simulation"], "run", fake_run)
    a100, hopper = SCRIPT["rows"](("A100",)), SCRIPT["rows"](SCRIPT["HOPPER"])
    b200 = SCRIPT["rows"](SCRIPT["BLACKWELL"])
    names = [{r["name"] for r in t} for t in (a100, hopper, b200)]
    assert names[0] | names[1] | names[2] == {r["name"] for r in ROWS}
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert all(r["predicted"] == 1000.0 for r in a100) and all(r["predicted"] == 2000.0 for r in hopper)
    assert [r["name"] for r in b200] == ["mlperf41-gpt3-64b200"] and b200[0]["predicted"] == 3000.0
    row = next(r for r in hopper if r["name"] == "mlperf30-gpt3-768")
    assert row["error"] == pytest.approx(2000.0 / 675.57 - 1)


def test_table_mean_and_worst_by_hand():
    data = [{"name": "a", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 110.0, "error": 0.10, "step_s": 1.0, "bubble": 0.0},
            {"name": "b", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 70.0, "error": -0.30, "step_s": 1.0, "bubble": 0.0}]  # fmt: skip
    last = SCRIPT["table"](data).splitlines()[-1]
    assert last == "Mean |error| 20.0%, worst 30.0% over 2 runs; mean signed error -10.0%."


def test_the_doc_has_both_tables_between_their_markers():
    doc = (ROOT / "docs" / "validation.md").read_text()
    for name in SCRIPT["SECTIONS"]:
        begin, end = f"<!-- {name}: docs/make_validation.py -->", f"<!-- end of {name} -->"
        assert doc.count(begin) == 1 and doc.count(end) == 1 and doc.index(begin) < doc.index(end)
    hopper = doc.split("<!-- hopper table: docs/make_validation.py -->")[1].split("<!-- end of hopper table -->")[0]
    assert f"over {len(HOPPER)} runs" in hopper
    a100 = doc.split("<!-- validation table: docs/make_validation.py -->")[1].split("<!-- end of validation table -->")[0]
    assert f"over {len(ROWS) - len(HOPPER) - len(BLACKWELL)} runs" in a100
    b200 = doc.split("<!-- b200 table: docs/make_validation.py -->")[1].split("<!-- end of b200 table -->")[0]
    assert f"over {len(BLACKWELL)} run" in b200


def test_table_says_run_for_one():
    row = {"name": "a", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
           "predicted": 110.0, "error": 0.10, "step_s": 1.0, "bubble": 0.0}  # fmt: skip
    assert SCRIPT["table"]([row]).splitlines()[-1] == "Mean |error| 10.0%, worst 10.0% over 1 run; mean signed error +10.0%."


def test_readme_quotes_the_validation_tables_own_figures():
    """README's accuracy sentence repeats docs/validation.md's mean and worst of each table (the tables
    are regenerated by the script; a stale README figure fails here)."""
    doc = (ROOT / "docs" / "validation.md").read_text()
    tables = re.findall(r"^Mean \|error\| ([0-9.]+)%, worst ([0-9.]+)% over (\d+) runs?", doc, re.M)
    assert len(tables) == 3
    readme = " ".join((ROOT / "README.md").read_text().split())
    (a_mean, a_worst, a_runs), (h_mean, h_worst, h_runs), (b_mean, b_worst, b_runs) = tables
    assert b_runs == "1" and b_mean == b_worst and f"on 1 B200 run (MLPerf GPT-3) {b_mean}% too high" in readme
    assert f"on {a_runs} A100 runs" in readme and f"{a_mean}% too high on average, {a_worst}% at worst" in readme
    worst = f"{float(h_worst):.0f}%" if float(h_worst) >= 100 else f"{h_worst}%"
    assert f"on {h_runs} H100 runs" in readme and f"{h_mean}% too high on average and {worst} at worst" in readme
