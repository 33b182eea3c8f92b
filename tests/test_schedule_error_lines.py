"""Every schedule family's constraint errors name the field first, as README promises
(`error: <field>: <rule>`): `pipeline.microbatches: dualpipe needs ...`, one line, exit 2."""

from __future__ import annotations

import re

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.schedules import registry
from dualpipe_sim.schedules.ir import ScheduleError

# Shapes a scenario may hold (stages and micro-batches >= 1), tried in turn until the family refuses one.
VALID_BUT_REFUSED = [(3, 4), (4, 6), (4, 3)]
FIELDS = ("pipeline.stages", "pipeline.microbatches", "pipeline.chunks_per_rank", "pipeline.microbatch_group")


def _line(name: str, message: str) -> None:
    field = message.split(": ", 1)[0]
    assert field in FIELDS, message
    assert message.startswith(f"{field}: {name} needs "), message
    assert "\n" not in message and re.search(r"got -?\d+", message), message


@pytest.mark.parametrize("name", sorted(registry.families()))
def test_every_family_names_the_field_first(name, tmp_path, capsys):
    # The library: no micro-batches is refused by every family, with the field first.
    with pytest.raises(ScheduleError) as caught:
        registry.build(name, 4, 0)
    _line(name, str(caught.value))
    assert str(caught.value).startswith(f"pipeline.microbatches: {name} needs ")
    # The CLI, where a scenario can hold a shape the family refuses: one line, exit 2, nothing written.
    refused = [(s, m) for s, m in VALID_BUT_REFUSED if registry.get(name).check(s, m)]
    if not refused:  # GPipe, 1F1B, ZB-H1/H2 take every shape with stages, micro-batches >= 1
        assert name in ("1f1b", "1f1b-overlap", "gpipe", "zb-h1", "zb-h1-megatron", "zb-h2")
        return
    stages, microbatches = refused[0]
    path = tmp_path / "s.toml"
    path.write_text(f'[pipeline]\nschedule = "{name}"\nstages = {stages}\nmicrobatches = {microbatches}\n'
                    "[costs]\nforward = 1.0\nbackward = 2.0\nweight = 1.0\n")
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    _line(name, err[len("error: "):].rstrip("\n"))
    assert not (tmp_path / "out").exists()


def test_options_are_named_first_too():
    with pytest.raises(ScheduleError, match=r"^pipeline\.chunks_per_rank: interleaved-1f1b needs a whole number"):
        registry.build("interleaved-1f1b", 4, 8, chunks_per_rank=0)
    with pytest.raises(ScheduleError, match=r"^pipeline\.microbatch_group: interleaved-1f1b-overlap needs a value "
                                            r"between the ranks \(2\) and pipeline\.microbatches \(8\)"):
        registry.build("interleaved-1f1b-overlap", 4, 8, microbatch_group=9)
