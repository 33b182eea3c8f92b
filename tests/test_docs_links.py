"""Every figure under docs/img is shown by some page, and every image a page shows exists; every local link to a
``#anchor`` lands on a heading (docs/validation.md's "At a glance" and docs/model.md's contents above all), and every
other local link names a file or folder that exists.

A PNG no page links is regenerated for nobody and goes stale unseen; a link to a
missing file is a broken page.  Pages are README.md and every .md under the tree
(docs/, benchmarks/, ...); links are markdown ``![alt](path)`` and HTML ``<img src>``,
read relative to the page, as GitHub renders them.  A ``#anchor`` is the heading's text as GitHub slugs it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
_TARGET = r"\(\s*(?:<([^>]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)"  # (path), (<path with spaces>), (path "title")
_MARKDOWN = re.compile(r"!\[[^\]]*\]" + _TARGET)
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


_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_ANCHOR_LINK = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered (a link's text, no backticks or asterisks), lower case,
    every character but letters, digits, underscores, hyphens and spaces dropped, then each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a markdown page (not in code fences); a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            base = slug(m.group(1))
            out.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return out


def broken_anchors(page: Path, block: str) -> list[str]:
    """The local ``[text](file#anchor)`` links of ``block`` (a part of ``page``) whose file is missing or whose anchor
    is no heading of it (remote links are not checked)."""
    bad = []
    for m in _ANCHOR_LINK.finditer(block):
        if re.match(r"^[a-z]+:", m.group(1)):
            continue
        target = (page.parent / m.group(1)).resolve() if m.group(1) else page
        if not target.is_file() or m.group(2) not in anchors(target.read_text(encoding="utf-8")):
            bad.append(f"{m.group(1)}#{m.group(2)}")
    return bad


def test_slug_and_anchors_by_hand():
    # GitHub's anchors for headings of these pages, worked by hand from the rule (README links the first one)
    assert slug("Forward only: the logs' evaluations") == "forward-only-the-logs-evaluations"
    assert slug("FSDP (`parallel.zero = 3`)") == "fsdp-parallelzero--3"
    assert slug("Host syncs in the MoE layer (`model/host.py`)") == "host-syncs-in-the-moe-layer-modelhostpy"
    assert slug("v3.0 against v3.1, by their code (issue 21 s10e)") == "v30-against-v31-by-their-code-issue-21-s10e"
    assert slug("DeepSpeed's engine (`model/deepspeed_pipe.py`)") == "deepspeeds-engine-modeldeepspeed_pipepy"
    page = "# Title\n## Runs\ntext\n```\n# not a heading\n```\n### Runs\n#### **Bold** [link](x.md) ##\n"
    assert anchors(page) == {"title", "runs", "runs-1", "bold-link"}


def test_the_anchor_link_reader_by_hand(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n## Its part\n")
    page = tmp_path / "p.md"
    page.write_text("# Here\n## Part two\n")
    block = ("[a](#part-two) [b](#part-three) [c](other.md#its-part) [d](other.md#missing) [e](other.md)\n"
             "[f, over a\nline break](#here) [g](https://example.com/#nowhere) [h](gone.md#here)")
    assert broken_anchors(page, block) == ["#part-three", "other.md#missing", "gone.md#here"]


def test_validation_at_a_glance_links_land_on_headings():
    page = ROOT / "docs" / "validation.md"
    text = page.read_text(encoding="utf-8")
    block = text.split("\n## At a glance\n")[1].split("\n## ")[0]
    links = _ANCHOR_LINK.findall(block)
    assert len(links) >= 15  # the table's five and the hand-written lines' (a reader that finds none fails)
    assert not broken_anchors(page, block)


def test_model_contents_links_land_on_headings_and_name_every_section():
    page = ROOT / "docs" / "model.md"
    text = page.read_text(encoding="utf-8")
    block = text.split("\nContents:\n")[1].split("\n\n")[0]
    assert not broken_anchors(page, block)
    linked = {anchor for _, anchor in _ANCHOR_LINK.findall(block)}
    sections = {slug(m.group(1)) for m in map(_HEADING.match, text.splitlines()) if m and m.group(0).startswith("## ")}
    assert sections and sections <= linked


def test_every_local_anchor_link_lands_on_a_heading():
    broken = [f"{page.relative_to(ROOT)}: {link}" for page in pages()
              for link in broken_anchors(page, page.read_text(encoding="utf-8"))]
    assert not broken, "links to a heading that does not exist:\n" + "\n".join(broken)


_LINK = re.compile(r"(?<!!)\[[^\]]*\]" + _TARGET)  # the same, not an image


def broken_files(page: Path, text: str) -> list[str]:
    """The local ``[text](path)`` links of ``text`` (not images, not inside code fences) whose file or folder does
    not exist, read relative to ``page``; a ``#anchor`` on them is the anchor test's."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    links = [m.group(1) or m.group(2) for m in _LINK.finditer(prose)]
    paths = [link.split("#")[0] for link in links if not re.match(r"^[a-z]+:", link)]
    return [path for path in paths if path and not (page.parent / path).exists()]


def test_the_file_link_reader_by_hand(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n")
    page = tmp_path / "p.md"
    text = ("[a](docs/a.md) [b](docs/b.md) [c](<docs/a.md>) [d](docs/a.md#a) [e](docs/gone.md#a) [f](docs/)\n"
            "[g](https://example.com/x.md) [h](#here) ![i](docs/img.png) [j](docs/j.md \"title\")\n"
            "```\n[k](docs/in-a-fence.md)\n```\n[l, over a\nline break](../outside.md)\n")
    assert broken_files(page, text) == ["docs/b.md", "docs/gone.md", "docs/j.md", "../outside.md"]


def test_every_local_link_names_a_file_that_exists():
    """s15o: the anchor test reads only links with a ``#``; a plain ``[docs/x.md](docs/x.md)`` to a renamed page
    went unchecked."""
    found = [(page, path) for page in pages() for path in broken_files(page, page.read_text(encoding="utf-8"))]
    total = sum(len(_LINK.findall(page.read_text(encoding="utf-8"))) for page in pages())
    assert total >= 100  # README and docs link each other well over a hundred times (a reader that finds none fails)
    assert not found, "links to files that do not exist:\n" + "\n".join(f"{p.relative_to(ROOT)}: {x}" for p, x in found)


def kernel_rates(text: str) -> tuple[list[str], list[str]]:
    """docs/model.md's "Kernel rates" section: (its table's rows, its ``####`` headings), each in page order."""
    section = ("\n" + text).split("\n### Kernel rates\n", 1)[1].split("\n### ", 1)[0]
    table = section.split("\n| constant |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return table, [m.group(1) for m in map(_HEADING.match, section.splitlines()) if m and m.group(0)[:5] == "#### "]


def test_kernel_rates_reader_by_hand():
    page = ("### Kernel rates\n\n| constant | a | b | c | source |\n| --- | --- | --- | --- | --- |\n| x | 1 | 2 | 3 | s |\n"
            "| y | 1 | 2 | 3 | [t](#y) |\n\n#### Y\n\ntext\n#### Notes\n### Next\n#### Not here\n")  # fmt: skip
    assert kernel_rates(page) == (["| x | 1 | 2 | 3 | s |", "| y | 1 | 2 | 3 | [t](#y) |"], ["Y", "Notes"])


def test_kernel_rates_rows_are_short_and_link_their_subsections_in_order():
    """s15f: the table keeps one short row per constant (five cells, GPU figures and a source in a few words);
    the full source text is in the ``####`` subsection the row links to, in the table's order."""
    rows, headings = kernel_rates((ROOT / "docs" / "model.md").read_text(encoding="utf-8"))
    assert len(rows) >= 19  # the constants of s15f's table (a reader that finds none fails)
    cells = [re.sub(r"`[^`]*`", "", row).strip().strip("|").split("|") for row in rows]
    assert all(len(c) == 5 for c in cells), [row for row, c in zip(rows, cells) if len(c) != 5]
    assert max(map(len, rows)) <= 400, max(rows, key=len)
    sub = [slug(h) for h in headings]
    # each subsection in the order the rows first name it (a row may link a section elsewhere on the page instead)
    firsts = list(dict.fromkeys(a for c in cells for _, a in _ANCHOR_LINK.findall(c[4]) if a in sub))
    assert len(firsts) >= 17 and sub[: len(firsts)] == firsts, (firsts, sub)  # the section's notes come after
