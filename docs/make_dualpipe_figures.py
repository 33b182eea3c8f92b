"""Regenerate the figures and the measured tables of docs/dualpipe.md.

    python docs/make_dualpipe_figures.py

Writes docs/img/dualpipe-*.png and prints the tables (markdown) that the page
quotes.  Deterministic: the same code gives the same numbers and pictures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dualpipe_sim import scenario, simulation  # noqa: E402
from dualpipe_sim.costs import A2A_PARTS, COMPONENTS, WEIGHT_PARTS, CostModel  # noqa: E402
from dualpipe_sim.engine import simulate  # noqa: E402
from dualpipe_sim.ir import FB, Op, Schedule  # noqa: E402
from dualpipe_sim.plots.gantt import save_gantt  # noqa: E402
from dualpipe_sim.trace import A2A  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
DEEPSEEK = ROOT / "scenarios" / "deepseek-v3.toml"


def run(data: dict):
    return simulation.run(scenario.from_dict(data))


def simple(family, S, M, F=1.0, B=2.0, W=1.0, FB_=3.0, p2p=0.0):
    return {
        "pipeline": {"schedule": family, "stages": S, "microbatches": M},
        "costs": {"forward": F, "backward": B, "weight": W, "overlapped": FB_},
        "comm": {"p2p": p2p},
    }


def gantt(result, name: str) -> None:
    save_gantt(result.trace, result.metrics, IMG / name)
    print(f"wrote docs/img/{name}")


# -- figure: one overlapped pair, component by component (DeepSeek-V3 Figure 4 style) --

SHORT = {
    "attn_forward": "A", "mlp_forward": "M", "dispatch_forward": "D", "combine_forward": "C",
    "combine_backward": "C", "mlp_backward_input": "M", "mlp_backward_weight": "MW",
    "dispatch_backward": "D", "attn_backward_input": "A", "attn_backward_weight": "AW",
}  # fmt: skip


def pair_figure(name: str) -> None:
    """One rank, one stage of the deepseek-v3 chunk: F0 alone, F1 overlapped with B0, B1 alone."""
    costs = scenario.load(DEEPSEEK, ["pipeline.stages=1", "pipeline.microbatches=2"]).cost_model()
    sched = Schedule("pair", 1, 2, ((Op("F", 0, 0), FB(Op("F", 1, 0), Op("B", 0, 0)), Op("B", 1, 0)),))
    trace = simulate(sched, costs)
    fig, ax = plt.subplots(figsize=(16, 2.6))
    lanes = {"compute": 1.0, "all-to-all": 0.0}
    fwd, bwd, wgt = "#a6cee3", "#1f5f9e", "#dcebf5"
    rows = [(r, False) for r in trace.compute] + [(r, True) for r in trace.comm[trace.comm["channel"] == A2A]]
    for r, on_a2a in rows:
        part = int(r["part"])
        forward = COMPONENTS[part].endswith("forward")
        colour = wgt if part in WEIGHT_PARTS else fwd if forward else bwd
        if on_a2a:
            colour = "#c9b3e6" if forward else "#6a3d9a"
        y = lanes["all-to-all" if part in A2A_PARTS else "compute"]
        ax.broken_barh([(r["start"], r["end"] - r["start"])], (y, 0.8), facecolors=colour, edgecolors="white",
                       linewidth=0.5)  # fmt: skip
        dark = colour in (bwd, "#6a3d9a")
        ax.text((r["start"] + r["end"]) / 2, y + 0.4, SHORT[COMPONENTS[part]], ha="center", va="center",
                fontsize=6.5, color="white" if dark else "black")  # fmt: skip
    spans = {}
    for r, _ in rows:
        a = int(r["action"])
        lo, hi = spans.get(a, (r["start"], r["end"]))
        spans[a] = (min(lo, r["start"]), max(hi, r["end"]))
    titles = {0: "F0 alone: its all-to-all is exposed", 1: "F1 + B0 overlapped", 2: "B1 alone"}
    for a, (lo, hi) in spans.items():
        ax.add_patch(plt.Rectangle((lo, -0.1), hi - lo, 2.0, fill=False, edgecolor="black",
                                   linewidth=1.6 if a == 1 else 0.6))  # fmt: skip
        ax.text((lo + hi) / 2, 2.0, f"{titles[a]} ({hi - lo:.1f} ms)", ha="center", va="bottom", fontsize=9)
    ax.set_yticks([1.4, 0.4], ["compute", "all-to-all"])
    ax.set_ylim(-0.3, 2.5)
    ax.set_xlim(0, trace.makespan)
    ax.set_xlabel("time (ms)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, facecolor=c, label=lbl)
            for c, lbl in ((fwd, "forward compute"), (bwd, "backward input-grad"), (wgt, "backward weight-grad"),
                           ("#c9b3e6", "forward all-to-all"), ("#6a3d9a", "backward all-to-all"))
        ],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
    )  # fmt: skip
    ax.set_title(
        "One 4-MoE-layer chunk of the deepseek-v3 scenario: A attention, M MLP, MW/AW weight-grad parts, "
        "D dispatch, C combine",
        fontsize=10, loc="left",
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    print(f"wrote docs/img/{name}")


# -- tables --------------------------------------------------------------------------


CASES = [
    ("W = F, B = 2W, F&B = F + B (the closed form's case)", dict()),
    ("F&B = 2.5 < F + B", dict(FB_=2.5)),
    ("F&B = 2 = B", dict(FB_=2.0)),
    ("F&B = 1.5 < B", dict(FB_=1.5)),
    ("F&B = 3.5 > F + B", dict(FB_=3.5)),
    ("W = 0.5 < F", dict(W=0.5)),
    ("W = 1.5 > F", dict(W=1.5)),
    ("B = 3, W = 1.5, F&B = 4 (B = 3F)", dict(B=3.0, W=1.5, FB_=4.0)),
    ("F = 2, B = 2, W = 1, F&B = 4 (B = F)", dict(F=2.0, B=2.0, W=1.0, FB_=4.0)),
    ("F&B = F + B, P2P 0.1 per transfer", dict(p2p=0.1)),
]


def closed_form_table() -> str:
    S, M = 8, 32
    lines = [
        "| case | closed form | DualPipe rank 0 / 1 / 2 / 3 (= 7 / 6 / 5 / 4) | DualPipeV rank 0 / 1 / 2 / 3 |",
        "| --- | --- | --- | --- |",
    ]
    for label, kw in CASES:
        cells = []
        for family in ("dualpipe", "dualpipev"):
            m = run(simple(family, S, M, **kw)).metrics.to_dict()
            closed = m["analytic"]["bubble"]
            cells.append(" / ".join(_mark(r["idle"], closed) for r in m["per_rank"][:4]))
        lines.append(f"| {label} | {closed:.4g} | {cells[0]} | {cells[1]} |")
    # The component model: the rank's time between ops is what the closed form predicts.
    row = []
    for family in ("dualpipe", "dualpipev"):
        m = simulation.run(
            scenario.load(DEEPSEEK, [f"pipeline.schedule={family}", f"pipeline.stages={S}", f"pipeline.microbatches={M}"])
        ).metrics.to_dict()
        closed = m["analytic"]["bubble"]
        row.append(" / ".join(_mark(r["between_ops"], closed) for r in m["per_rank"][:4]))
    lines.append(f"| deepseek-v3 components, time between ops | {closed:.4g} | {row[0]} | {row[1]} |")
    return "\n".join(lines)


def _mark(value: float, closed: float) -> str:
    return f"**{value:.4g}**" if abs(value - closed) < 1e-9 * max(1.0, abs(closed)) else f"{value:.4g}"


def scenario_table() -> str:
    lines = [
        "| schedule | makespan (ms) | bubble ratio | time between ops, max rank (ms) | closed form (ms) "
        "| all-to-all (ms) | a2a exposed | overlap ratio (P2P + a2a) | peak activation |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family in ("dualpipe", "1f1b", "zb-h1", "gpipe"):
        m = simulation.run(scenario.load(DEEPSEEK, [f"pipeline.schedule={family}"])).metrics.to_dict()
        c, a = m["comm"], m["analytic"]
        closed = "-" if a["bubble"] is None else f"{a['bubble']:.0f}"
        lines.append(
            f"| {family} | {m['makespan']:.0f} | {m['bubble_ratio']:.1%} | "
            f"{max(r['between_ops'] for r in m['per_rank']):.0f} | {closed} | {c['a2a_time']:.0f} | "
            f"{c['a2a_exposed']:.0f} | {c['overlap_ratio']:.1%} | {max(r['peak_activation'] for r in m['per_rank'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    gantt(run(simple("dualpipe", 8, 20, FB_=2.5, p2p=0.05)), "dualpipe-8x20.png")
    gantt(run(simple("dualpipev", 8, 20, FB_=2.5, p2p=0.05)), "dualpipev-4x20.png")
    pair_figure("dualpipe-pair-components.png")
    ds8 = ["pipeline.stages=8", "pipeline.microbatches=32"]
    gantt(simulation.run(scenario.load(DEEPSEEK, ds8)), "dualpipe-deepseek-8x32.png")
    gantt(simulation.run(scenario.load(DEEPSEEK, ds8 + ["pipeline.schedule=1f1b"])), "dualpipe-deepseek-8x32-1f1b.png")
    gantt(simulation.run(scenario.load(DEEPSEEK)), "dualpipe-deepseek-v3.png")
    print("\nClosed form vs measured idle per rank (S = 8, M = 32; bold = equal):\n")
    print(closed_form_table())
    print("\nscenarios/deepseek-v3.toml:\n")
    print(scenario_table())


if __name__ == "__main__":
    main()
