"""validate() and the engine's own deadlock guard."""

import pytest

from dualpipe_sim.schedules import registry
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.engine.simpy_engine import DeadlockError, Engine
from dualpipe_sim.schedules.ir import FB, Op, Schedule, ScheduleError
from dualpipe_sim.engine.validate import validate


def two_stage(rank0, rank1, m=2):
    return Schedule("custom", 2, m, (tuple(rank0), tuple(rank1)))


def test_registered_schedules_validate():
    for name in ("1f1b", "gpipe"):
        for p in range(1, 7):
            for m in range(1, 12):
                validate(registry.build(name, p, m))


def test_missing_op_is_named():
    s = two_stage([Op("F", 0, 0), Op("F", 1, 0), Op("B", 0, 0)], [Op("F", 0, 1), Op("B", 0, 1), Op("F", 1, 1), Op("B", 1, 1)])
    with pytest.raises(ScheduleError, match=r"missing op 0B1"):
        validate(s)


def test_duplicate_op_is_named():
    s = two_stage([Op("F", 0, 0), Op("F", 0, 0), Op("B", 0, 0)], [Op("F", 0, 1), Op("B", 0, 1)], m=1)
    with pytest.raises(ScheduleError, match=r"0F0 appears twice"):
        validate(s)


def test_split_backward_needs_its_w():
    s = two_stage([Op("F", 0, 0), Op("I", 0, 0)], [Op("F", 0, 1), Op("B", 0, 1)], m=1)
    with pytest.raises(ScheduleError, match=r"missing op 0W0"):
        validate(s)


DEADLOCK = two_stage(
    # rank 0 wants micro-batch 1's gradient before it has even run micro-batch 1's forward
    [Op("F", 0, 0), Op("B", 1, 0), Op("F", 1, 0), Op("B", 0, 0)],
    [Op("F", 0, 1), Op("B", 0, 1), Op("F", 1, 1), Op("B", 1, 1)],
)


def test_deadlock_names_stuck_ops():
    with pytest.raises(ScheduleError) as exc:
        validate(DEADLOCK)
    msg = str(exc.value)
    assert "rank 0 is stuck at 0B1" in msg
    assert "rank 1 is stuck at 1F1" in msg
    assert "0F1" in msg  # rank 1 waits for micro-batch 1's activation from stage 0


def test_engine_reports_deadlock_without_hanging():
    # Bypass validate(): the engine must detect it on its own.
    costs = CostModel.uniform(2, p2p=0.1)
    with pytest.raises(DeadlockError) as exc:
        Engine(DEADLOCK, costs).run()
    assert "rank 0 is stuck at action 1 0B1" in str(exc.value)
    assert "rank 1 is stuck at action 2 1F1" in str(exc.value)


def test_stage_on_two_ranks_is_rejected():
    s = Schedule("custom", 1, 2, ((Op("F", 0, 0), Op("B", 0, 0)), (Op("F", 1, 0), Op("B", 1, 0))))
    with pytest.raises(ScheduleError, match="stage 0 .* appears on rank 0 and on rank 1"):
        validate(s)


def test_fb_pair_must_pair_forward_with_backward():
    s = two_stage([FB(Op("F", 0, 0), Op("F", 1, 0))], [], m=2)
    with pytest.raises(ScheduleError, match="must pair an F with a B or I"):
        validate(s)


def test_fb_pair_of_one_microbatch_is_rejected():
    # Its backward needs its own forward finished first, so no runtime could start it.
    s = Schedule("custom", 1, 1, ((FB(Op("F", 0, 0), Op("B", 0, 0)),),))
    with pytest.raises(ScheduleError, match="overlaps a micro-batch with itself"):
        validate(s)


def test_fb_pair_waits_for_both_halves_inputs():
    # Rank 0 pairs F of micro-batch 1 with B of micro-batch 0 before B0's gradient
    # can exist (rank 1 runs 1B0 only after 1F1, which needs this very pair's F).
    s = two_stage(
        [Op("F", 0, 0), FB(Op("F", 1, 0), Op("B", 0, 0)), Op("B", 1, 0)],
        [Op("F", 0, 1), Op("F", 1, 1), Op("B", 0, 1), Op("B", 1, 1)],
    )
    with pytest.raises(ScheduleError, match=r"rank 0 is stuck at \(0F1;0B0\)OVERLAP_F_B waiting for the gradient from 1B0"):
        validate(s)
    with pytest.raises(DeadlockError):
        Engine(s, CostModel.uniform(2)).run()
