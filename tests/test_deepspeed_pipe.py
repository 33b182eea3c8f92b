"""DeepSpeed v0.6.5's pipeline engine and Megatron-DeepSpeed's GPTModelPipe, micro-batch by micro-batch
(model/deepspeed_pipe.py; docs/model.md, "DeepSpeed's pipeline engine, micro-batch by micro-batch"), and
Megatron-DeepSpeed's embedding LayerNorm (model.embed_layernorm), worked by hand on BLOOM-176B: micro-batch 2 x 2,048
tokens, h 14,336, TP 4, bf16.  Rates: the A100 preset's (1.61 TB/s streaming HBM, 2.5 us kernel floor, 25.5 us
NCCL latency; the scenario's NIC 6.25 of the preset's 25 GB/s, so 23.5 x 6.25 / 25 = 5.875 GB/s bus); the host's
13.5 us a call and 6.95 us a sync (host.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive

ROOT = Path(__file__).resolve().parents[1]
BLOOM = ROOT / "scenarios" / "validation" / "bloom-176b.toml"
HBM, FLOOR, LAT, NIC = 1.61e12, 2.5e-6, 25.5e-6, 23.5e9 * 6.25 / 25
PER_OP, WAIT = 13.5e-6, 9.65e-6 - 2.7e-6
N, H, T, S = 2 * 2048, 14336, 4, 2048
WHOLE = N * H * 2  # the boundary activation, bf16: 117,440,512 B
PART = WHOLE / T
MASK = S * S  # the [1, 1, s, s] bool causal mask


def _setup(overrides=()):
    return derive.setup(scenario.load(BLOOM, ["step.dp_comm_sms=0", *overrides]))


def _rows(st, stage):
    return {k.name: k for k in derive.extra_kernels(st, st.stages[stage])}


def _mem(nbytes, launches=1):
    return nbytes / HBM + launches * FLOOR


def test_a_middle_stage_by_hand():
    st = _setup()
    rows = _rows(st, 5)  # stage 5 of 12: receives, sends, no embedding, no head
    # RecvActivation clones the received part and mask, _exec_forward_pass clones them again (and the two metas)
    assert rows["received activation and mask clones (recv, forward)"].seconds == pytest.approx(
        _mem(2 * (2 * PART + 2 * MASK), 6))
    # PartitionedTensor.full(): zeros of the whole (write), the own part copied in (read + write), clone (read + write)
    full = _mem(WHOLE + 2 * PART + 2 * WHOLE, 3)
    assert rows["received activation full(): zeros, copy, clone"].seconds == pytest.approx(full)
    assert rows["output partition clone"].seconds == pytest.approx(_mem(2 * PART))
    # the meta tensor: ndims, 3 sizes, num_parts, rank, 5 offsets: 11 int64; the mask one byte an element
    assert rows["DeepSpeed pipe: meta send"].seconds == pytest.approx(LAT + 88 / NIC)
    assert rows["DeepSpeed pipe: attention mask send"].seconds == pytest.approx(LAT + MASK / NIC)
    assert rows["DeepSpeed pipe: attention mask send"].seconds == pytest.approx(739.42e-6, abs=0.01e-6)
    # backward: the own output and the received gradient rebuilt; the own output's all-gather is the same collective
    # the P2P charges the receiver (derive.p2p_ms: the 1/4 part over the NIC, then the all-gather)
    assert rows["own output full() before the backward: zeros, copy, clone"].seconds == pytest.approx(full)
    assert rows["received gradient full(): zeros, copy, clone"].seconds == pytest.approx(full)
    gather = derive.p2p_ms(st) / 1e3 - (LAT + PART / NIC)
    assert rows["own output full() before the backward: all-gather"].seconds == pytest.approx(gather)
    assert rows["input gradient partition clone"].seconds == pytest.approx(_mem(2 * PART))
    assert rows["DeepSpeed pipe: gradient meta send"].seconds == pytest.approx(LAT + 88 / NIC)
    # host: each sync's round trip, then one launch before the GPU-bound kernels after it (a zero-fill of 117 MB,
    # 73 us, outlasts the 13.5 us launches behind it): forward from_meta's tolist and to_meta's copy, backward two
    # tolists and to_meta
    [hf] = [k for k in derive.extra_kernels(st, st.stages[5]) if k.kind == "host" and k.component == "mlp_forward"]
    [hb] = [k for k in derive.extra_kernels(st, st.stages[5]) if k.kind == "host" and k.component != "mlp_forward"]
    assert hf.seconds == pytest.approx(2 * (WAIT + PER_OP))
    assert hb.seconds == pytest.approx(3 * (WAIT + PER_OP))
    assert "2 syncs" in hf.shape and "3 syncs" in hb.shape
    # no loads on a middle stage
    assert not [k for k in rows if "get_batch_pipe" in k or "causal mask" in k]


def test_first_and_last_stages_load_each_micro_batch():
    st = _setup()
    first, last = _rows(st, 0), _rows(st, 11)
    for rows in (first, last):  # get_batch_pipe on both: the causal mask in fp32 (ones 4, tril 4 + 4, < 0.5 4 + 1)
        assert rows["causal mask built (ones, tril, < 0.5)"].seconds == pytest.approx(_mem(17 * MASK, 3))
        assert rows["labels and tokens copies"].seconds == pytest.approx(_mem(2 * 2 * N * 8, 2))
    # only the first stage clones the inputs (tokens, positions int64; the mask) twice and checks the ids
    assert first["input clones (load and forward)"].seconds == pytest.approx(_mem(2 * (2 * 16 * N + 2 * MASK), 6))
    assert first["input ids checked (>= V, any)"].seconds == pytest.approx(_mem(10 * N, 2))
    assert "input ids checked (>= V, any)" not in last
    # the first stage receives nothing, the last sends nothing (no partition, no mask send, no own-output rebuild)
    assert not [k for k in first if k.startswith("received activation")]
    assert "received gradient full(): zeros, copy, clone" in first  # it does receive gradients
    assert not [k for k in last if "partition clone" in k and "gradient" not in k or "mask send" in k]
    assert "own output full() before the backward: all-gather" not in last
    host = {(s, k.component): k for s in (0, 11) for k in derive.extra_kernels(st, st.stages[s]) if k.kind == "host"}
    # syncs: sizes to the GPU, .cpu(), tokens .cuda(), the id check's bool, to_meta (first); the first three and
    # from_meta's tolist (last); the backward: two tolists (first), to_meta of the gradient (last)
    assert "5 syncs" in host[0, "mlp_forward"].shape and "4 syncs" in host[11, "mlp_forward"].shape
    assert "2 syncs" in host[0, "mlp_backward_input"].shape and "1 syncs" in host[11, "mlp_backward_input"].shape
    assert host[11, "mlp_backward_input"].seconds == pytest.approx(WAIT + PER_OP)
    # each sync costs at least its round trip and one launch on an idle GPU
    assert host[0, "mlp_forward"].seconds >= 5 * (WAIT + PER_OP) - 1e-12
    assert host[11, "mlp_forward"].seconds >= 4 * (WAIT + PER_OP) - 1e-12


def test_only_deepspeed_runs_it_and_host_costs_follow_host_overhead():
    # on Megatron's own schedules the same model.runtime runs Megatron-LM's rows instead (megatron_lm.py)
    other = derive.extra_kernels(_setup(["step.runtime=megatron"]), _setup().stages[5])
    assert other and not [k for k in other if k.name.startswith("DeepSpeed") or "clone" in k.name]
    st = _setup(["model.host_overhead_us=0"])
    assert not [k for s in st.stages for k in derive.extra_kernels(st, s) if k.kind == "host"]
    # tensor 1: no PartitionedTensor (is_model_parallel false): whole clones, the mask still sent, no syncs there
    one = _setup(["parallel.tensor=1"])
    rows = _rows(one, 5)
    assert rows["received activation and mask clones (recv, forward)"].seconds == pytest.approx(
        _mem(2 * (2 * WHOLE + 2 * MASK), 4))
    assert "DeepSpeed pipe: attention mask send" in rows and "DeepSpeed pipe: meta send" not in rows
    assert not [k for k in rows.values() if k.kind == "host"]


def test_a_middle_stage_forward_adds_up():
    # the forward of a middle stage: its rows above, 2 syncs; the pass is longer by their sum
    st = _setup()
    mid = sum(k.seconds for k in derive.extra_kernels(st, st.stages[5]) if k.component == "mlp_forward")
    assert mid == pytest.approx(_mem(2 * (2 * PART + 2 * MASK), 6) + _mem(3 * WHOLE + 2 * PART, 3) + _mem(2 * PART)
                                + 2 * LAT + (88 + MASK) / NIC + 2 * (WAIT + PER_OP))  # fmt: skip


def test_embedding_layernorm_by_hand():
    st = _setup()
    emb = [k for k in derive.extra_kernels(st, st.stages[0])]
    [fwd] = [k for k in emb if k.name == "embedding norm"]
    [bwd] = [k for k in emb if k.name == "embedding norm backward"]
    # every tensor rank normalises the whole reduced output (no sequence parallelism): read and write forward,
    # read two and write two backward (as the final norm)
    assert fwd.seconds == pytest.approx(_mem(2 * N * H * 2))
    assert bwd.seconds == pytest.approx(_mem(4 * N * H * 2))
    # --sync-tp-duplicated-parameters: its weight and bias all-reduced in every forward, as a layer's norm is
    syncs = [k for k in emb if k.name.startswith("tp-duplicated parameter sync")]
    layer = [k for k in derive.layer_kernels(st, 0) if k.name.startswith("tp-duplicated parameter sync")]
    assert len(syncs) == 2 and [k.seconds for k in syncs] == [layer[0].seconds] * 2
    off = _setup(["model.embed_layernorm=false"])
    assert not [k for k in derive.extra_kernels(off, off.stages[0]) if "embedding norm" in k.name]


def test_embed_layernorm_must_be_a_bool(capsys):
    with pytest.raises(ScenarioError, match=r"model\.embed_layernorm"):
        scenario.load(BLOOM, ["model.embed_layernorm=maybe"])
    assert main(["model", str(BLOOM), "--set", "model.embed_layernorm=2"]) == 2
    err = capsys.readouterr().err
    assert "model.embed_layernorm" in err and "Traceback" not in err
