"""Every registered schedule family is documented: a section of its own in docs/schedules.md (the
gallery's, written by docs/make_gallery.py from the family's description) with its picture."""

import re
from pathlib import Path

from dualpipe_sim.schedules.registry import families

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _sections() -> dict[str, str]:
    """Gallery section name -> its text (up to the next heading)."""
    text = (DOCS / "schedules.md").read_text(encoding="utf-8")
    parts = re.split(r"^#### `([^`]+)`\n", text, flags=re.M)
    return {name: body.split("\n#")[0] for name, body in zip(parts[1::2], parts[2::2])}


def test_the_reader_finds_sections():
    assert {"gpipe", "dualpipe"} <= set(_sections())
    assert "GPipe" in _sections()["gpipe"]


def test_every_family_has_a_section_and_a_picture():
    sections = _sections()
    missing = sorted(set(families()) - set(sections))
    assert missing == [], f"no section in docs/schedules.md for {missing}: run python docs/make_gallery.py"
    for name, family in families().items():
        assert family.description in sections[name], f"{name}: its section is stale; run python docs/make_gallery.py"
        assert f"](img/gallery-{name}.png)" in sections[name] and (DOCS / "img" / f"gallery-{name}.png").is_file()


def test_no_section_for_a_family_that_is_gone():
    assert sorted(set(_sections()) - set(families())) == []
