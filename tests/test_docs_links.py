"""Every figure under docs/img is shown by some page, and every image a page shows exists.

A PNG no page links is regenerated for nobody and goes stale unseen; a link to a
missing file is a broken page.  Pages are README.md and every .md under the tree
(docs/, benchmarks/, ...); links are markdown ``![alt](path)`` and HTML ``<img src>``,
read relative to the page, as GitHub renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
_MARKDOWN = re.compile(r"!\[[^\]]*\]\(\s*(?:<([^>]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)")
_HTML = re.compile(r"<img\s[^>]*src=[\"']([^\"']+)[\"']", re.IGNORECASE)


def pages() -> list[Path]:
    """The tree's markdown pages, not those of tools' folders (.venv, .git, build output)."""
    skip = lambda p: any(part.startswith(".") or part.endswith(".egg-info") or part in ("build", "dist")  # noqa: E731
                         for part in p.relative_to(ROOT).parts[:-1])
    return sorted(p for p in ROOT.rglob("*.md") if not skip(p))


def image_links(page: Path) -> list[tuple[str, Path]]:
    """(link as written, the file it names) for each local image the page shows."""
    text = page.read_text(encoding="utf-8")
    links = [m.group(1) or m.group(2) for m in _MARKDOWN.finditer(text)] + [m.group(1) for m in _HTML.finditer(text)]
    local = [link for link in links if not re.match(r"^[a-z]+:", link)]  # not https:, data:
    return [(link, (page.parent / link.split("#")[0]).resolve()) for link in local]


def test_the_link_reader_by_hand(tmp_path):
    page = tmp_path / "p.md"
    page.write_text('![a](img/x.png) ![b](<img/y z.png>) ![c](img/w.png "title") <img src="img/v.png" width=3>\n'
                    "![remote](https://example.com/r.png) [not an image](img/u.png) ![d](../up.png#frag)\n")
    found = image_links(page)
    assert [link for link, _ in found] == ["img/x.png", "img/y z.png", "img/w.png", "../up.png#frag", "img/v.png"]
    assert [path for _, path in found] == [(tmp_path / "img/x.png").resolve(), (tmp_path / "img/y z.png").resolve(),
                                           (tmp_path / "img/w.png").resolve(), (tmp_path.parent / "up.png").resolve(),
                                           (tmp_path / "img/v.png").resolve()]


def test_every_linked_image_exists():
    missing = [f"{page.relative_to(ROOT)}: {link}" for page in pages() for link, path in image_links(page)
               if not path.is_file()]
    assert not missing, "linked images that do not exist:\n" + "\n".join(missing)


def test_every_figure_under_docs_img_is_linked():
    linked = {path for page in pages() for _, path in image_links(page)}
    unlinked = sorted(p.name for p in IMG.glob("*.png") if p.resolve() not in linked)
    assert not unlinked, ("PNGs under docs/img no page shows (link each from the page it belongs to, or stop "
                          "generating it and delete it):\n" + "\n".join(unlinked))
