"""model/derive.py's cross-field refusals that the s16g coverage run found no test reaching: expert
parallelism on a dense model, a context split that does not cut the tokens in 2 x context chunks, and
hardware given by figures without one of the two it needs.  Each is one ScenarioError line naming the key."""

from __future__ import annotations

import copy
import tomllib

import pytest

from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from tests.helpers import TINY_LLAMA_MODEL

BASE = tomllib.loads('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + TINY_LLAMA_MODEL
                    + '[hardware]\npreset = "H100"\n')  # fmt: skip


def with_(**tables):
    raw = copy.deepcopy(BASE)
    for name, table in tables.items():
        if name == "hardware":
            raw["hardware"] = table  # replaced whole: the preset goes
        else:
            raw.setdefault(name, {}).update(table)
    return raw


def refusal(raw) -> str:
    with pytest.raises(ScenarioError) as err:
        scenario.from_dict(raw)
    return str(err.value)


def test_expert_parallelism_on_a_dense_model():
    assert refusal(with_(parallel={"expert": 2, "data": 2})) == (
        "parallel.expert: the model has no experts, so it must be 1, got 2"
    )
    scenario.from_dict(with_(parallel={"expert": 1, "data": 2}))  # 1 is the dense model's only degree


@pytest.mark.parametrize("seq,context,fits", [
    (132, 4, False),  # 132 = 4 x 33 but 132 / 8 = 16.5: the 2 x 4 load-balanced chunks do not cut it
    (136, 4, True),   # 136 = 8 x 17
    (128, 3, False),
    (128, 2, True),
])  # fmt: skip
def test_context_parallelism_cuts_the_tokens_in_two_x_context_chunks(seq, context, fits):
    raw = with_(model={"seq_length": seq}, parallel={"context": context})
    if fits:
        scenario.from_dict(raw)
    else:
        assert refusal(raw) == (f"parallel.context: must divide seq_length x micro_batch_size in 2 x context "
                                f"chunks ({seq} tokens), got {context}")  # fmt: skip


@pytest.mark.parametrize("given,missing", [({"bf16_tflops": 500}, "p2p_bandwidth"), ({"p2p_bandwidth": 50}, "bf16_tflops")])
def test_hardware_by_figures_needs_the_bf16_rate_and_the_p2p_bandwidth(given, missing):
    line = refusal(with_(hardware=given))
    assert line.startswith(f"hardware.{missing}: required key is missing (or give hardware.preset: H100, ")
    scenario.from_dict(with_(hardware={"bf16_tflops": 500, "p2p_bandwidth": 50}))
