"""Regenerate the figures and the measured tables of docs/dualpipe.md.

    python docs/make_dualpipe_figures.py

Writes docs/img/dualpipe-*.png and prints the tables (markdown) that the page
quotes.  Deterministic: the same code gives the same numbers and pictures.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dualpipe_sim import calibrate, simulation  # noqa: E402
from dualpipe_sim.inputs import kineto, scenario
from dualpipe_sim.inputs.costs import A2A_PARTS, COMPONENTS, WEIGHT_PARTS, CostModel  # noqa: E402
from dualpipe_sim.engine.simpy_engine import simulate  # noqa: E402
from dualpipe_sim.schedules.ir import FB, Op, Schedule  # noqa: E402
from dualpipe_sim.outputs.plots.canvas import PNG_METADATA  # noqa: E402
from dualpipe_sim.outputs.plots.gantt_file import save_gantt  # noqa: E402
from dualpipe_sim.engine.trace import A2A  # noqa: E402

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


def lane_style(ax, xlabel: str) -> None:
    """Axes and legend of a component-lane chart (compute and all-to-all lanes)."""
    ax.set_xlabel(xlabel)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, facecolor=c, label=lbl)
            for c, lbl in (("#a6cee3", "forward compute"), ("#1f5f9e", "backward input-grad"),
                           ("#dcebf5", "backward weight-grad"), ("#c9b3e6", "forward all-to-all"),
                           ("#6a3d9a", "backward all-to-all"))
        ],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
    )  # fmt: skip


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
    lane_style(ax, "time (ms)")
    ax.set_title(
        "One 4-MoE-layer chunk of the deepseek-v3 scenario: A attention, M MLP, MW/AW weight-grad parts, "
        "D dispatch, C combine",
        fontsize=10, loc="left",
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110, metadata=PNG_METADATA)
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
        lines.append(f"| {label} | {_closed(closed)} | {cells[0]} | {cells[1]} |")
    # The component model: the rank's time between ops is what the closed form predicts.
    row = []
    for family in ("dualpipe", "dualpipev"):
        m = simulation.run(
            scenario.load(DEEPSEEK, [f"pipeline.schedule={family}", f"pipeline.stages={S}", f"pipeline.microbatches={M}"])
        ).metrics.to_dict()
        closed = m["analytic"]["bubble"]
        row.append(" / ".join(_mark(r["between_ops"], closed) for r in m["per_rank"][:4]))
    lines.append(f"| deepseek-v3 components, time between ops | {_closed(closed)} | {row[0]} | {row[1]} |")
    return "\n".join(lines)


def _mark(value: float, closed: float | None) -> str:
    if closed is None:  # outside the closed form's range (metrics say why)
        return f"{value:.4g}"
    return f"**{value:.4g}**" if abs(value - closed) < 1e-9 * max(1.0, abs(closed)) else f"{value:.4g}"


def _closed(closed: float | None) -> str:
    return "- (out of range)" if closed is None else f"{closed:.4g}"


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


# -- calibration: DeepSeek's profiled pair next to the simulator's replay of it ---------------

PROFILE_DATA = Path(os.environ.get("DUALPIPE_SIM_PROFILE_DATA", "/work/.mirror/deepseek-ai+profile-data/repo"))


def deepseek_calibration() -> calibrate.Calibration | None:
    """`dualpipe-sim calibrate train.json` on a checkout of deepseek-ai/profile-data (not shipped:
    the repository has no licence file; DUALPIPE_SIM_PROFILE_DATA says where a checkout is).
    None, after one line saying so, when there is none."""
    plain = PROFILE_DATA / "train.json"
    if plain.is_file():
        return calibrate.calibrate(kineto.read(plain), "train.json")
    try:
        data = subprocess.run(["git", "-C", str(PROFILE_DATA), "show", "HEAD:train.json"], capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"skipped dualpipe-calibration.png and its table: no checkout of deepseek-ai/profile-data at "
              f"{PROFILE_DATA} (set DUALPIPE_SIM_PROFILE_DATA to one)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.json"
        path.write_bytes(data)
        return calibrate.calibrate(kineto.read(path), "train.json")


def calibration_figure(cal: calibrate.Calibration, name: str) -> None:
    """Four lanes: the profile's compute and all-to-all, then the replay's."""
    fig, ax = plt.subplots(figsize=(16, 3.4))
    fwd, bwd, wgt, a2a_f, a2a_b = "#a6cee3", "#1f5f9e", "#dcebf5", "#c9b3e6", "#6a3d9a"
    lanes = (("profile", cal.windows, 3.3), ("simulator", cal.predicted, 0.0))
    for _, windows, base in lanes:
        for (comp, layer), (start, end) in windows.items():
            on_a2a = calibrate.channel_of(comp) == "a2a"
            forward = comp.endswith("forward")
            colour = (a2a_f if forward else a2a_b) if on_a2a else wgt if comp.endswith("weight") else fwd if forward else bwd
            y = base + (0.0 if on_a2a else 1.1)
            ax.broken_barh([(start, end - start)], (y, 0.9), facecolors=colour, edgecolors="white", linewidth=0.6)
            ax.text((start + end) / 2, y + 0.45, f"{SHORT[comp]}{layer}", ha="center", va="center", fontsize=6,
                    color="white" if colour in (bwd, a2a_b) else "black")  # fmt: skip
    span_p = cal.predicted_span
    ax.text(0, 5.45, f"profile (train.json): {cal.span:.1f} ms first kernel to last", fontsize=9, va="bottom")
    ax.text(0, 2.15, f"simulator, replaying the calibrated [chunk]: {span_p:.1f} ms "
            f"({(span_p - cal.span) / cal.span:+.1%})", fontsize=9, va="bottom")  # fmt: skip
    ax.set_yticks([4.85, 3.75, 1.55, 0.45], ["compute", "all-to-all", "compute", "all-to-all"])
    ax.set_ylim(-0.2, 5.9)
    ax.set_xlim(0, max(cal.span, span_p) * 1.01)
    lane_style(ax, "time from the pair's first kernel (ms)")
    ax.set_title("One overlapped pair of 4-MoE-layer chunks: DeepSeek's profile and the simulator "
                 "(A attention, M MLP, MW/AW weight-grad, D dispatch, C combine; digit = layer)",
                 fontsize=10, loc="left")  # fmt: skip
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    print(f"wrote docs/img/{name}")


def calibration_table(cal: calibrate.Calibration) -> str:
    lines = ["| component | per layer, mean (min-max) ms | |", "| --- | --- | --- |"]
    for comp, st in cal.components.items():
        lines.append(f"| `{comp}` | {st.mean:.2f} ({st.min:.2f}-{st.max:.2f}) | {calibrate.channel_of(comp)} |")
    streams = ", ".join(f"stream {s} {ch} {busy:.1f} ms" for s, (ch, busy) in cal.streams.items())
    lines += ["", f"Span {cal.span:.1f} ms measured, {cal.predicted_span:.1f} ms replayed; busy: {streams}."]
    worst = max(abs(p - m) for _, _, m, p in calibrate.start_errors(cal))
    lines.append(f"Largest component start error of the replay: {worst:.1f} ms.")
    return "\n".join(lines)


# -- activation memory of one MoE layer, bottom-up ----------------------------------------

# DeepSeek-V3 (deepseek-ai/DeepSeek-V3 inference/configs/config_671B.json) and the profile's run.
TOKENS, HIDDEN, Q_LORA, KV_LORA, ROPE, HEADS, V_HEAD = 4096, 7168, 1536, 512, 64, 128, 128
EXPERT_FF, TOP_K, EXPERTS = 2048, 8, 256
FP8 = 1 + 4 / 128  # one byte per element plus an FP32 scale per 1x128 tile (report Sec. 3.3.1)
E5M6 = 1.5 + 4 / 128  # 12-bit elements, same tiles (report Sec. 3.3.3)


def activation_rows() -> list[tuple[str, float, str]]:
    """(what is kept for the backward, bytes, why) per MoE layer per 4K-token micro-batch on one rank."""
    s, h, routed = TOKENS, HIDDEN, TOP_K * TOKENS  # balanced EP64 routing: each rank's 4 experts get 8 x 4096 rows
    return [
        ("layer input (BF16)", s * h * 2, "attention RMSNorm is recomputed from it"),
        ("MLA latents c_q, c_kv, k_rope (BF16)", s * (Q_LORA + KV_LORA + ROPE) * 2,
         "the up-projections to q, k, v are recomputed from them"),
        ("attention output (E5M6)", s * HEADS * V_HEAD * E5M6, "flash-attention backward and W_O's weight-grad"),
        ("softmax log-sum-exp (FP32)", s * HEADS * 4, "flash-attention backward"),
        ("residual after attention (BF16)", s * h * 2, "MoE RMSNorm is recomputed from it"),
        ("router scores (FP32), top-8 ids and weights", s * EXPERTS * 4 + s * TOP_K * (8 + 4), "gate backward"),
        ("routed-expert inputs, 8 x 4096 rows (FP8)", routed * h * FP8, "up-projection weight-grad"),
        ("routed SwiGLU inputs (FP8)", routed * 2 * EXPERT_FF * FP8,
         "SwiGLU (with the routing weight) is recomputed; down-projection input too"),
        ("shared-expert SwiGLU input (FP8)", s * 2 * EXPERT_FF * FP8, "as for the routed experts"),
    ]  # fmt: skip


def activation_table() -> str:
    rows = activation_rows()
    lines = ["| kept for the backward | MB | needed for |", "| --- | --- | --- |"]
    lines += [f"| {what} | {b / 1e6:.1f} | {why} |" for what, b, why in rows]
    total = sum(b for _, b, _ in rows)
    lines.append(f"| **per MoE layer** | **{total / 1e6:.0f}** | x 4 layers = {4 * total:.3g} B per chunk |")
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
    print("\nActivation memory per MoE layer:\n")
    print(activation_table())
    cal = deepseek_calibration()
    if cal is not None:
        calibration_figure(cal, "dualpipe-calibration.png")
        print("\ncalibrate train.json:\n")
        print(calibration_table(cal))


if __name__ == "__main__":
    main()
