"""`plan`'s refusals of its source that the s16g coverage run found no test reaching (plan/request.py).
Before s16g a bad model field in the source raised a ModelError traceback (plan read the model for its
FLOPs before anything wrapped the error), and a bad [hardware] field printed pydantic's four-line dump;
now each is `run`'s one line naming the field, with exit 2 and nothing written."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TINY_LLAMA_MODEL, cli_error

LLAMA = dict(model_type="llama", hidden_size=256, num_hidden_layers=4, vocab_size=1000, num_attention_heads=4,
             intermediate_size=512)  # fmt: skip
SIZE = ["--gpus", "8", "--global-batch", "16", "--seq", "128"]


def plan_error(tmp_path, name: str, text: str | None, *extra: str) -> str:
    """Write ``text`` to tmp_path/in/``name`` (None: leave it missing) and run `plan` on it."""
    (tmp_path / "in").mkdir()
    (tmp_path / "run").mkdir()
    source = tmp_path / "in" / name
    if text is not None:
        source.write_text(text)
    return cli_error(tmp_path / "run", "plan", str(source), *SIZE, *extra)


def test_a_missing_config_json(tmp_path):
    line = plan_error(tmp_path, "none.json", None, "--hardware", "H100")
    assert line == f"error: source: model config not found: {tmp_path / 'in' / 'none.json'}"


def test_a_scenario_without_a_model(tmp_path):
    line = plan_error(tmp_path, "s.toml", '[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n',
                      "--hardware", "H100")  # fmt: skip
    assert line == f"error: source: {tmp_path / 'in' / 's.toml'} has no [model] section (plan needs a model to lay out)"


def test_no_hardware_anywhere(tmp_path):
    line = plan_error(tmp_path, "m.json", json.dumps(LLAMA))
    assert line == "error: --hardware: give a GPU preset or a [hardware] section in the scenario"


def test_a_bad_field_in_a_config_json_is_one_line(tmp_path):
    line = plan_error(tmp_path, "m.json", json.dumps({**LLAMA, "vocab_size": 0}), "--hardware", "H100")
    assert line == f"error: model.config {tmp_path / 'in' / 'm.json'}: vocab_size: must be >= 1, got 0"


def test_a_bad_inline_model_field_is_one_line(tmp_path):
    text = TINY_LLAMA_MODEL.replace("vocab_size = 1000", "vocab_size = 0") + '[hardware]\npreset = "H100"\n'
    assert plan_error(tmp_path, "s.toml", text) == "error: model.vocab_size: must be >= 1, got 0"


@pytest.mark.parametrize("hardware,line", [
    ("gpus_per_node = 0", "error: hardware.gpus_per_node: input should be greater than or equal to 1, got 0"),
    ('preset = "H100"\nhbm = "x"', "error: hardware.hbm: must be a number, not text in quotes, got 'x'"),
])  # fmt: skip
def test_a_bad_hardware_field_is_runs_one_line_not_pydantics_dump(tmp_path, hardware, line):
    assert plan_error(tmp_path, "s.toml", f"{TINY_LLAMA_MODEL}[hardware]\n{hardware}\n") == line
