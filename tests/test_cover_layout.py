"""model/layout.py's refusals and splits that the s16g coverage run found no test reaching: a
parallel.layout list or Megatron string that does not fit the model or the stage count.  Each is one
ModelError line naming parallel.layout and the rule; the CLI turns one into exit 2 (last test)."""

from __future__ import annotations

import pytest

from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.layout import parse, to_string
from tests.helpers import cli_error, tiny_llama_toml


def refusal(spec, layers, stages, mtp=0) -> str:
    with pytest.raises(ModelError) as err:
        parse(spec, layers, stages, mtp)
    return str(err.value)


def test_the_default_split_puts_the_extra_layers_on_stages_1_2_and_so_on():
    """10 layers on 4 stages: 10 = 4 x 2 + 2, the 2 extra on stages 1 and 2 (not 0, which holds the
    embedding): 2, 3, 3, 2 layers, in model order."""
    stages = parse(None, 10, 4)
    assert [len(s.layers) for s in stages] == [2, 3, 3, 2]
    assert [s.layers[0] for s in stages] == [0, 2, 5, 8]
    assert [(s.embedding, s.head) for s in stages] == [(True, False), (False, False), (False, False), (False, True)]
    assert to_string(stages) == "Et*2|t*3|t*3|t*2L"


def test_a_list_must_have_one_whole_count_per_stage_summing_to_the_layers():
    assert refusal([1, 2], 4, 3) == "parallel.layout: needs one layer count per stage (3), got 2"
    assert refusal([1, -1, 4], 4, 3) == "parallel.layout.1: must be a whole number of layers >= 0, got -1"
    assert refusal([1, True, 2], 4, 3) == "parallel.layout.1: must be a whole number of layers >= 0, got True"
    assert refusal([1, 1, 1], 4, 3) == "parallel.layout: the stages hold 3 layers, the model has 4 (num_hidden_layers)"
    assert refusal((1, 2, 1), 4, 3) == (
        "parallel.layout: must be a list of layer counts or a Megatron layout string, got (1, 2, 1)"
    )


def test_a_list_puts_mtp_modules_on_the_last_stage_only():
    stages = parse([1, 2, 1], 4, 3, mtp_layers=1)
    assert [s.mtp for s in stages] == [0, 0, 1]
    assert to_string(stages) == "Et|t*2|tmL"


def test_a_string_must_match_the_stage_count_and_the_layer_count():
    assert refusal("Et|t|tL", 3, 2) == "parallel.layout: 'Et|t|tL' has 3 stages, pipeline.stages is 2"
    assert refusal("Et|tL|tL", 4, 3) == (
        "parallel.layout: 'Et|tL|tL' places 3 layers, the model has 4 (num_hidden_layers)"
    )


def test_a_string_places_the_embedding_first_the_head_last_and_no_more_mtp_than_the_model_has():
    assert refusal("tt|Et|tL", 4, 3) == "parallel.layout: 'tt|Et|tL' must place the embedding E once, on the first stage"
    assert refusal("Et|tt|t", 4, 3) == "parallel.layout: 'Et|tt|t' must place the head L once, on the last stage"
    assert refusal("EtL|tt|t", 4, 3) == "parallel.layout: 'EtL|tt|t' must place the head L once, on the last stage"
    assert refusal("Et|tt|tmmL", 4, 3, mtp=1) == ("parallel.layout: 'Et|tt|tmmL' places 2 MTP modules (m), the model "
                                                  "has 1 (num_nextn_predict_layers)")
    assert refusal("Et|tt|tL", 4, 3, mtp=1) == ("parallel.layout: 'Et|tt|tL' places 0 MTP modules (m), the model has 1 "
                                               "(num_nextn_predict_layers)")  # one left out: refused too (s16i)


def test_a_string_with_an_unknown_letter_lists_the_alphabet():
    assert refusal("Et|tx|tL", 4, 3) == (
        "parallel.layout: unknown character 'x' in 'Et|tx|tL' "
        "(E embedding, t layer, m MTP, L head, | between stages, x*n repeats)"
    )


def test_expansions_past_a_million_tokens_are_refused_before_they_are_built():
    """(t*999|)*999 is 999 x 6 = 5,994 characters after the group, whose t*999 tokens then expand to
    999 x 999 = 998,001 layers plus the text: more than 1,000,000.  t*9999999 has an 8-digit count."""
    too_big = "parallel.layout: expands to more than a million tokens"
    assert refusal("E(t*999|)*999tL", 4, 3) == too_big
    assert refusal("Et*9999999L", 4, 1) == too_big
    # Well under: (t*99|)*98 then t*99 hold 99 x 99 = 9,801 layers in 99 stages, and expand.
    stages = parse("E(t*99|)*98t*99L", 99 * 99, 99)
    assert sum(len(s.layers) for s in stages) == 9801 and stages[-1].head and stages[0].embedding


def test_a_bad_layout_through_the_cli_is_one_line_and_exit_2(tmp_path):
    """TINY_LLAMA_MODEL has 4 layers; 2 stages of [1, 2] hold 3."""
    (tmp_path / "in").mkdir()
    (tmp_path / "run").mkdir()
    toml = tiny_llama_toml(tmp_path / "in", "[parallel]\nlayout = [1, 2]\n")
    line = cli_error(tmp_path / "run", "run", str(toml))
    assert line == "error: parallel.layout: the stages hold 3 layers, the model has 4 (num_hidden_layers)"
