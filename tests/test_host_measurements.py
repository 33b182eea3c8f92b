"""Issue 21 (host pace): the host-time measurements reached for Transformer Engine's module calls
(tests/data/host/, one file per source) against the rule that decides whether a figure may be costed, and
against docs/searches.md's table of them ("Host time of Transformer Engine's module calls", where docs/model.md
points).  Nothing here runs the model: it keeps the data, the rule and the page from drifting apart."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from dualpipe_sim.model import host

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "host"
FILES = sorted(DATA.glob("*.toml"))
PAGE = (ROOT / "docs" / "searches.md").read_text(encoding="utf-8")
FIGURE_KEYS = {"what", "module", "te_module", "pass", "precision", "host_cpu", "host_arch", "gpu", "measure",
               "value_us", "qualifies"}


def load(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def qualifies(fig: dict, te_version: str) -> bool:
    """docs/model.md's rule ("Host time of Transformer Engine's module calls"): a TE module's host time alone, per call
    and pass, with its host CPU (x86, as the runs'), its Hopper GPU and its TE version all stated."""
    return (fig["te_module"] and fig["measure"] == "host" and fig["pass"] in ("forward", "backward")
            and fig["host_arch"] == "x86" and bool(fig["host_cpu"]) and fig["gpu"] in ("H100", "H800")
            and bool(te_version))


def table_rows() -> dict[str, str]:
    """The page's table, source cell -> whole row."""
    body = PAGE.split("<!-- host measurements: tests/data/host -->")[1].split("<!-- end of host measurements -->")[0]
    rows = [r for r in body.strip().splitlines()[2:] if r.startswith("|")]
    return {r.split("|")[1].strip(): r for r in rows}


def test_the_rule_by_hand():
    fig = dict(te_module=True, measure="host", pass_="forward", host_arch="x86", host_cpu="Xeon 8480C", gpu="H100")
    fig["pass"] = fig.pop("pass_")
    assert qualifies(fig, "1.6")
    assert not qualifies(fig, "")  # no TE version
    for key, bad in (("host_arch", "aarch64"), ("gpu", "GB200"), ("measure", "unknown"), ("te_module", False),
                     ("pass", "step"), ("host_cpu", "")):
        assert not qualifies({**fig, key: bad}, "1.6"), key


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_each_source_names_itself_and_each_figure_obeys_the_rule(path):
    d = load(path)
    number = d["source"].split("#")[1]
    assert d["url"].startswith("https://github.com/") and d["url"].rstrip("/").endswith("/" + number)
    assert number in path.stem  # the file's name says which source it holds
    assert d["verdict"].strip() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", d["posted"])
    for fig in d.get("figure", []):
        assert FIGURE_KEYS <= set(fig), fig["what"]
        assert fig["value_us"] > 0
        assert fig["qualifies"] == qualifies(fig, d["te_version"]), fig["what"]


def test_the_page_lists_every_source_with_its_verdict_and_only_figures_the_data_holds():
    rows = table_rows()
    assert len(rows) == len(FILES)
    for path in FILES:
        d = load(path)
        short = d["source"].removeprefix("NVIDIA/")  # the page drops the owner of NVIDIA's repositories
        cell = next((c for c in rows if c.startswith(short + " ")), None)
        assert cell is not None, f"{short} has no row in docs/searches.md"
        row = rows[cell]
        verdict = row.rstrip(" |").split("|")[-1].strip()
        assert verdict.startswith("yes") == any(f["qualifies"] for f in d.get("figure", [])), short
        held = [f["value_us"] for f in d.get("figure", [])] + [f["gpu_us"] for f in d.get("figure", []) if "gpu_us" in f]
        for value, unit in re.findall(r"(\d+(?:\.\d+)?) (us|ms)\b", row):
            us = float(value) * (1000.0 if unit == "ms" else 1.0)
            assert any(abs(us - h) < 1e-6 * max(1.0, h) for h in held), f"{short}: {value} {unit} not in {path.name}"


def test_the_replays_per_call_figure_is_the_x86_pytorch_linear_it_cites():
    d = load(DATA / "te-2053-grace-cpu-overhead.toml")
    (fig,) = [f for f in d["figure"] if f["host_arch"] == "x86" and f["module"] == "torch.nn.Linear"]
    assert fig["gpu"] == "H100" and fig["measure"] == "host"
    assert host.HOST_OP_US == pytest.approx(round(fig["value_us"], 1))
