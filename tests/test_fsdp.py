"""FSDP (parallel.zero = 3): per-unit all-gathers and reduce-scatters on the data-parallel channel,
prefetching one unit ahead (model/fsdp.py, docs/model.md "FSDP"), worked by hand."""

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import GRAD_SYNC
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main
from dualpipe_sim.schedules.rules import KIND_CODES
from dualpipe_sim.model import fsdp
from helpers import TINY_LLAMA_MODEL

LAYER, EMB = 655_872, 256_000  # tests/test_memory_terms.py's tiny model: a layer's and the embedding's parameters

PRESETS = Path(__file__).resolve().parent.parent / "scenarios"


def test_compute_longer_than_gathers_hides_all_but_the_first():
    """AG1 [0,1]; unit 1 [1,3] while AG2 [1,2]; unit 2 [3,5] while AG3 [3,4]; unit 3 [5,7]: 1 exposed."""
    assert fsdp.exposed([2, 2, 2], [1, 1, 1]) == 1


def test_gathers_longer_than_compute_set_the_pace():
    """AG1 [0,3]; unit 1 [3,4]; AG2 (issued at 3) [3,6]; unit 2 [6,7]; AG3 [6,9]; unit 3 [9,10]: 7 exposed."""
    assert fsdp.exposed([1, 1, 1], [3, 3, 3]) == 7


def test_reduce_scatters_queue_before_the_next_gather():
    """Backward, compute 1, gathers 1, reduce-scatters 2: AG1 [0,1]; unit 1 [1,2], AG2 [1,2];
    RS1 (issued at 2) [2,4]; unit 2 [2,3]; AG3, issued at 2 after RS1, [4,5]; RS2 [5,7];
    unit 3 [5,6]: 6 - 3 = 3 exposed.  The last reduce-scatter runs after the action (not counted)."""
    assert fsdp.exposed([1, 1, 1], [1, 1, 1], [2, 2, 2]) == 3
    assert fsdp.exposed([2, 2], [1, 1], [1, 1]) == 1  # RS1 [3,4] is past AG2 [1,2]: only AG1 exposed


def test_ring_collective_time():
    assert fsdp.ring_ms(1e9, 4, 50.0) == pytest.approx(3 / 4 * 1e9 / 50e9 * 1e3)
    assert fsdp.ring_ms(1e9, 1, 50.0) == 0.0


def tiny_with_hardware(tmp_path, zero: int, tflops: float = 1.0):
    path = tmp_path / f"tiny{zero}-{tflops}.toml"
    path.write_text(f"""
[pipeline]
schedule = "1f1b"
stages = 2
microbatches = 2
{TINY_LLAMA_MODEL}[parallel]
data = 2
zero = {zero}
[hardware]
bf16_tflops = {tflops}
p2p_bandwidth = 1.0
[step]
grad_sync = "derived"
""")
    return path


def test_stage_forward_carries_its_exposed_gathers(tmp_path):
    """DP 2 over 1 GB/s: gathering a layer's bf16 parameters takes 1/2 x 2 x 655,872 B = 0.655872 ms,
    the embedding's 1/2 x 2 x 256,000 B = 0.256 ms.  Stage 0 forward: AG(embedding) [0, 0.256], the
    embedding computes nothing; AG(layer 0) [0.256, 0.911872]; layer 0 runs c ms while AG(layer 1)
    runs 0.655872 ms; layer 1 starts at 0.911872 + max(c, 0.655872)."""
    plain = scenario.load(tiny_with_hardware(tmp_path, 2)).derived().stages[0]
    fs = scenario.load(tiny_with_hardware(tmp_path, 3)).derived().stages[0]
    c = plain.forward / 2  # two equal layers
    gather = 2 * LAYER / 2 / 1e9 * 1e3
    exposed = 2 * EMB / 2 / 1e9 * 1e3 + gather + max(0.0, gather - c)
    assert fs.fsdp_exposed[0] == pytest.approx(exposed)
    assert fs.forward == pytest.approx(plain.forward + exposed)
    assert fs.backward == pytest.approx(plain.backward + fs.fsdp_exposed[1]) and fs.fsdp_exposed[1] > 0
    assert plain.fsdp_exposed is None


def test_end_of_step_waits_for_what_the_last_backward_leaves_on_the_channel(tmp_path):
    """ZeRO >= 2 reduce-scatters every unit after every backward (Megatron-FSDP's post-backward hooks) and the
    step's end waits for them all (finish_grad_sync).  Layers' reduce-scatters 1/2 x 4 x 655,872 B over 1 GB/s =
    1.311744 ms, the embedding's 1/2 x 4 x 256,000 B = 0.512 ms.  At 0.5 TFLOP/s each micro-batch's F + B outlasts
    a whole stage's reduce-scatter, so no backlog is carried from the earlier backwards.
    * ZeRO 3, stage 0's last backward (layer 1, layer 0, the embedding, which computes nothing here): layer 0's
      reduce-scatter is issued when its backward ends, the embedding's right after, so both are left on the
      channel: 1.311744 + 0.512 = 1.823744 ms.  Stage 1's (head, layer 3, layer 2): layer 3's reduce-scatter ends
      under layer 2's 1.78 ms backward, so only layer 2's is left, 1.311744 ms.
    * ZeRO 2: the channel's work from the last backward's start, the stage's whole gradient, ZeRO 1's figure."""
    sync = scenario.load(tiny_with_hardware(tmp_path, 3, 0.5)).step_costs().grad_sync
    assert sync == pytest.approx((1.311744 + 0.512, 1.311744))
    whole = scenario.load(tiny_with_hardware(tmp_path, 1, 0.5)).step_costs().grad_sync  # ZeRO 1: the whole stage
    assert whole[0] == pytest.approx(1 / 2 * 4 * (EMB + 2 * LAYER) / 1e9 * 1e3)
    assert scenario.load(tiny_with_hardware(tmp_path, 2, 0.5)).step_costs().grad_sync == pytest.approx(whole)


def test_backward_tail_is_the_channel_left_when_the_last_unit_ends():
    """Three units, backward order C (the stage's last layer), B, A (the first); compute 2, 2, 1 ms; gathers 1 ms
    each; reduce-scatters 3, 1, 2 ms.  AG(C) [0,1]; C [1,3] while AG(B) [1,2]; RS(C) issued at 3, [3,6]; B [3,5],
    AG(A) issued at 3 after RS(C), [6,7]; RS(B) [7,8]; A waits for its gather, [7,8]; RS(A) [8,10].  The backward
    ends at 8 and leaves A's reduce-scatter, 2 ms.  With C's reduce-scatter 6 ms instead: RS(C) [3,9], AG(A)
    [9,10], A [10,11], RS(B) [10,11], RS(A) [11,13]: 2 ms again (A waited for its gather behind them).  With A's
    gather prefetched early enough (gathers 0.5, reduce-scatters 1, 4, 2): AG(C) [0,0.5], C [0.5,2.5], AG(B)
    [0.5,1]; RS(C) [2.5,3.5]; B [2.5,4.5], AG(A) [3.5,4]; RS(B) [4.5,8.5]; A [4.5,5.5]; RS(A) [8.5,10.5]: 5 ms
    left, B's reduce-scatter still running when A's is launched."""
    units = lambda b, g, r: [fsdp.Unit(0.0, b_, g_, r_) for b_, g_, r_ in zip(b, g, r)]  # noqa: E731
    # forward order A, B, C: the backward runs them C, B, A
    assert fsdp.backward_tail(units([1, 2, 2], [1, 1, 1], [2, 1, 3])) == pytest.approx(2.0)
    assert fsdp.backward_tail(units([1, 2, 2], [1, 1, 1], [2, 1, 6])) == pytest.approx(2.0)
    assert fsdp.backward_tail(units([1, 2, 2], [0.5, 0.5, 0.5], [2, 4, 1])) == pytest.approx(5.0)
    assert fsdp.stage_exposure(units([1, 2, 2], [0.5, 0.5, 0.5], [2, 4, 1]))[1] == pytest.approx(0.5)


def test_zero_3s_sync_goes_as_one_collective_at_the_copys_last_backward_whatever_the_overlap_keys(tmp_path):
    """Megatron-FSDP launches the last unit's reduce-scatter from its post-backward hook at the backward's end
    (the overlap forced on, start_grad_sync a no-op), so the grad sync row of each stage starts at its last
    backward's end and runs the whole figure, not n buckets spread through that backward, with or without
    step.overlap_grad_sync, and with the derived (pp-aligned) or the given launch."""
    base = tiny_with_hardware(tmp_path, 3, 0.5).read_text().replace('schedule = "1f1b"', 'schedule = "interleaved-1f1b"')
    base = base.replace("stages = 2", "stages = 4\nchunks_per_rank = 2").replace("microbatches = 2", "microbatches = 4")
    rows = {}
    for i, extra in enumerate(("", "overlap_grad_sync = true\ngrad_sync_buckets = 4\n",
                               'overlap_grad_sync = true\ngrad_sync_launch = "pp-aligned"\n')):
        path = tmp_path / f"z3-{i}.toml"
        path.write_text(base.replace('grad_sync = "derived"\n', 'grad_sync = "derived"\n' + extra))
        sc = scenario.load(path)
        trace = simulation.run(sc).trace
        sync = sc.step_costs().grad_sync
        got = sorted((int(r["stage"]), float(r["start"]), float(r["end"])) for r in trace.step if r["kind"] == GRAD_SYNC)
        assert [s for s, _, _ in got] == [0, 1, 2, 3]  # one collective a stage copy
        for s, start, end in got:
            backwards = trace.compute[(trace.compute["stage"] == s) & (trace.compute["kind"] != KIND_CODES["F"])]
            ready = float(backwards["end"].max())  # the copy's last backward's end
            assert start >= ready - 1e-9 and end - start == pytest.approx(sync[s])
            assert start == pytest.approx(ready) or any(
                e == pytest.approx(start) for _, _, e in got)  # at its end, or queued behind another copy's
        rows[i] = got
    assert rows[0] == rows[1] == rows[2]


def test_fsdp_with_expert_parallelism_is_refused_as_not_yet(tmp_path, capsys):
    code = main(["run", str(PRESETS / "deepseek-v3.toml"), "--set", "parallel.zero=3", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "parallel.zero: 3 (FSDP) with parallel.expert > 1 is not modelled yet" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_model_verb_reports_the_exposure_and_buffers(tmp_path, capsys):
    import json

    assert main(["model", str(tiny_with_hardware(tmp_path, 3)), "--json"]) == 0
    stage = json.loads(capsys.readouterr().out)["stages"][0]
    fs = scenario.load(tiny_with_hardware(tmp_path, 3)).derived().stages[0]
    assert stage["fsdp_exposed_ms"] == {"forward": fs.fsdp_exposed[0], "backward": fs.fsdp_exposed[1]}
    assert stage["sharding_buffer_bytes_per_rank"] == 2 * (4 + 2) * LAYER  # tests/test_memory_terms.py
    assert stage["fp8_weight_bytes_per_rank"] == 0


def _fast_compute(tmp_path, zero: int, schedule: str = "1f1b", microbatches: int = 8):
    """tiny_with_hardware at 1,000 TFLOP/s and M micro-batches: compute far shorter than a sync."""
    text = tiny_with_hardware(tmp_path, zero).read_text()
    text = text.replace("bf16_tflops = 1.0", "bf16_tflops = 1000.0").replace("microbatches = 2", f"microbatches = {microbatches}")
    text = text.replace('schedule = "1f1b"', f'schedule = "{schedule}"')
    path = tmp_path / f"fast{zero}{schedule}.toml"
    path.write_text(text)
    return scenario.load(path)


@pytest.mark.parametrize("schedule, copies", [("1f1b", 1), ("dualpipe", 2)])
def test_zero_2_waits_for_what_its_channel_could_not_carry_under_compute(tmp_path, schedule, copies):
    """ZeRO 2 reduce-scatters a stage copy's whole gradient after each of its M / copies backwards
    (ZeRO 1: once).  Stage 0's is 1/2 x 4 x (256,000 + 2 x 655,872) B over 1 GB/s = 3.135488 ms;
    at 1,000 TFLOP/s a micro-batch's F + B is far shorter (B holds W: I = B - W), so once the first backward has
    released its first unit the rank's channel never idles (s21k: laid out from the trace, engine/step.py
    _earlier_jobs): every copy's n = M / copies whole reduce-scatters, one after another, the last backward's (the
    grad sync figure, the whole gradient) released unit by unit through it as Megatron-FSDP's hooks launch them (the
    overlap forced on: the same with step.overlap_grad_sync false, the default here).  DualPipe holds each stage on
    two ranks, so each rank's channel carries n of both stages'."""
    whole = _fast_compute(tmp_path, 1, schedule).step_costs().grad_sync
    assert whole[0] == pytest.approx(1 / 2 * 4 * (EMB + 2 * LAYER) / 1e9 * 1e3)
    sc = _fast_compute(tmp_path, 2, schedule)
    stages = sc.derived().stages
    costs = sc.step_costs()
    assert not sc.step.overlap_grad_sync and costs.overlap_grad_sync and costs.grad_sync_launch == "ready"
    assert costs.grad_sync == pytest.approx(whole)
    for s in (0, 1):
        assert stages[s].weight > 0  # so that counting W twice would show
        assert stages[s].forward + stages[s].backward < whole[s] / 10  # the case the bound is for
    trace = simulation.run(sc).trace
    n = 8 / copies
    for r, held in enumerate(trace.stages_on_rank):
        rows = trace.step[(trace.step["rank"] == r) & (trace.step["kind"] == GRAD_SYNC)]
        assert (rows["start"][1:] == rows["end"][:-1]).all()  # one after another, never idle
        assert rows["end"].max() - rows["start"].min() == pytest.approx(n * sum(whole[s] for s in held))


def test_zero_2_with_compute_to_spare_carries_nothing_to_the_last_backward(tmp_path):
    """At 0.5 TFLOP/s and 2 micro-batches each backward's reduce-scatter fits under the compute: nothing carried,
    the figure is the last backward's own reduce-scatters, the stage's whole gradient (ZeRO 1's figure), released
    unit by unit through it, the stage's first unit (stage 0: the embedding, 0.512 ms of 3.135488; stage 1: its
    first layer, 1.311744 of 3.136) last, at its end."""
    sc = scenario.load(tiny_with_hardware(tmp_path, 2, 0.5))
    whole = scenario.load(tiny_with_hardware(tmp_path, 1, 0.5)).step_costs().grad_sync
    stages = sc.derived().stages
    assert all(st.forward + st.backward >= w for st, w in zip(stages, whole))
    costs = sc.step_costs()
    assert costs.grad_sync == pytest.approx(whole)
    assert [len(x) for x in costs.grad_sync_shares] == [3, 3]  # stage 0: embedding + 2 layers; stage 1: 2 layers + head
    assert costs.grad_sync_shares[0][-1] * whole[0] == pytest.approx(0.512)
    assert costs.grad_sync_shares[1][-1] * whole[1] == pytest.approx(1.311744)
    assert sum(costs.grad_sync_shares[0]) == pytest.approx(1.0)


def test_a_unit_beside_a_busy_channel_by_hand():
    """s21n.  A unit of 2 ms alone, 3 ms at its held pace (k = 1.5), the channel busy for 1 ms from its start: a third
    of its work done then, the other two thirds at full speed, 1 + 4/3 ms; busy 3 ms or more: 3 ms, all under it;
    an idle channel: 2 ms; no slowdown (held = compute): 2 ms whatever the channel."""
    assert fsdp.beside_channel(2.0, 3.0, 1.0) == pytest.approx(1 + 4 / 3)
    assert fsdp.beside_channel(2.0, 3.0, 3.0) == fsdp.beside_channel(2.0, 3.0, 5.0) == 3.0
    assert fsdp.beside_channel(2.0, 3.0, 0.0) == pytest.approx(2.0)
    assert fsdp.beside_channel(2.0, 2.0, 1.0) == pytest.approx(2.0)


def test_two_units_slowed_beside_their_collectives_by_hand():
    """Two units in forward order A, B: forward compute 2, 2, backward 2, 2, gathers 1 (A) and 3 (B), reduce-scatters
    1 (A) and 3 (B); each 3 ms at its held pace (k = 1.5).  At full speed: forward AG(A) [0,1], A [1,3] beside AG(B)
    [1,4], B [4,6] (exposed 2); backward (B, A) AG(B) [0,3], B [3,5] beside AG(A) [3,4], RS(B) [5,8], A [5,7] beside
    it, RS(A) [8,9] after (exposed 3, tail 2).  Slowed (s21n): forward A [1,4], its 3 ms under AG(B) [1,4], B [4,6]:
    6, nothing more (s20n's (k - 1) x beside charged 1 ms); backward B from 3 beside AG(A) for 1 ms (a third of its
    work), the rest at full speed: [3, 3 + 7/3]; RS(B) [16/3, 25/3]; A [16/3, 25/3], 3 ms all under it: 25/3, 4/3
    more (s20n: 1.5); RS(A) [25/3, 28/3], a tail of 1.  Two micro-batches on one stage: 2 x (6 + 25/3) = 86/3 ms,
    not 28 (free) nor 31 (s20n's rule)."""
    units = [fsdp.Unit(2.0, 2.0, 1.0, 1.0, 3.0, 3.0), fsdp.Unit(2.0, 2.0, 3.0, 3.0, 3.0, 3.0)]
    assert fsdp.stage_exposure(units) == pytest.approx((2.0, 3.0))
    assert fsdp.slowed(units) == pytest.approx((0.0, 4 / 3))
    assert fsdp.backward_tail(units) == pytest.approx(1.0)
    free = [fsdp.Unit(2.0, 2.0, 1.0, 1.0), fsdp.Unit(2.0, 2.0, 3.0, 3.0)]
    assert fsdp.slowed(free) == (0.0, 0.0) and fsdp.backward_tail(free) == pytest.approx(2.0)
    f, b = (4 + e + s for e, s in zip(fsdp.stage_exposure(units), fsdp.slowed(units)))
    assert 2 * (f + b) == pytest.approx(86 / 3)


def test_only_a_units_own_kernels_are_slowed_and_a_faster_tensor_parallel_collective_never_slows_it():
    """s21n.  One unit B (forward compute 4 ms: 3 of kernels, 1 of a tensor-parallel collective) after unit A (1 ms,
    gather 1), B's gather 2 ms, beside A.  B's kernels at k = 2 and its collective as fast: held 3 x 2 + 1 = 7.  Forward:
    AG(A) [0,1], A [1,2] (held 1: nothing to slow, the prefetch AG(B) [1,3] under it), B [3,7]: its channel idle, 7.
    With A's held 2 ms: A [1,3] under AG(B), B [3,7]: 7 again.  Backward (B, A), reduces 1 each: AG(B) [0,2], B from
    2 beside AG(A) [2,3] for 1 ms (1/7 of its work), the rest (6/7 x 4 = 24/7 ms): ends 2 + 1 + 24/7; B's collective
    halved (compute 3.5, held 6.5): 2 + 1 + (1 - 1/6.5) x 3.5 ms, earlier, as fast or faster."""
    a = fsdp.Unit(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    unit_b = fsdp.Unit(4.0, 4.0, 2.0, 1.0, 7.0, 7.0)
    assert fsdp.slowed([a, unit_b])[0] == pytest.approx(0.0)
    assert fsdp.slowed([fsdp.Unit(1.0, 1.0, 1.0, 1.0, 2.0, 2.0), unit_b])[0] == pytest.approx(0.0)
    b_end = 2 + 1 + 24 / 7
    b_end_fast = 2 + 1 + (1 - 1 / 6.5) * 3.5
    # A then from b_end beside RS(B) [b_end, b_end + 1], 1 ms (its held pace 1): its end b_end + 1; at full speed the
    # backward ends at 2 + 4 + 1 = 7
    assert fsdp.slowed([a, unit_b])[1] == pytest.approx(b_end + 1 - 7)
    faster = fsdp.Unit(3.5, 3.5, 2.0, 1.0, 6.5, 6.5)
    assert fsdp.slowed([a, faster])[1] == pytest.approx(b_end_fast + 1 - 6.5)
    assert b_end_fast + 1 < b_end + 1


def test_zero_3_forward_and_backward_carry_their_compute_slowed_beside_their_collectives(tmp_path):
    """s20n.  With a preset's kernel rates and step.dp_comm_sms, a ZeRO 3 stage's forward and backward are longer: its
    units compute at their held pace while one of their collectives runs (s21n: the walk with it, fsdp.slowed), so
    by more than nothing and less than (k - 1) x the time they compute beside a collective, k its compute on the SMs
    left (comm_slowdown) over its compute; without held SMs (0, or no [step]) they are not.  Llama 3 70B on H100, 16
    of 132 SMs held: its units' compute outlasts their gathers, so part of the slowdown shows."""
    from dualpipe_sim.model import comm_slowdown

    text = (PRESETS / "llama3-70b.toml").read_text().replace('config = "', f'config = "{PRESETS}/')
    text = text.replace("zero = 2 ", "zero = 3 ")
    held, free = tmp_path / "held.toml", tmp_path / "free.toml"
    held.write_text(text + "\n[step]\ngrad_sync = \"derived\"\noptimizer = 1\n")
    free.write_text(text + "\n[step]\ngrad_sync = \"derived\"\noptimizer = 1\ndp_comm_sms = 0\n")
    slow, plain = scenario.load(held).derived(), scenario.load(free).derived()
    for s in (0, 4):
        a, b = slow.stages[s], plain.stages[s]
        assert b.fsdp_slowed is None and a.fsdp_exposed == pytest.approx(b.fsdp_exposed)
        compute = b.forward + b.backward - sum(b.fsdp_exposed)
        k = comm_slowdown._slowed_compute(slow.setup, 16)[s] / compute  # the step end's own sum of the held kernels
        assert 1.3 < k < 1.6  # GEMMs in a second round on 116 of 132 SMs (docs/model.md)
        assert a.fsdp_slowed == pytest.approx((a.forward - b.forward, a.backward - b.backward))
        for more, alone in zip(a.fsdp_slowed, (b.forward - b.fsdp_exposed[0], b.backward - b.fsdp_exposed[1])):
            assert 0 < more < (k - 1) * alone
    # `model --json` reports it per stage beside the exposure (fsdp_slowed_ms), only where something is held
    from dualpipe_sim.model import report

    rows = [report.summary(scenario.load(p).derived(), scenario.load(p))["stages"] for p in (held, free)]
    assert rows[0][4]["fsdp_slowed_ms"] == pytest.approx({"forward": slow.stages[4].forward - plain.stages[4].forward,
                                                          "backward": slow.stages[4].backward - plain.stages[4].backward})
    assert "fsdp_slowed_ms" not in rows[1][4]
