"""engine/validate.py's refusals that the s16g coverage run found no test reaching: a schedule built in
Python (ds.run(sc, schedule=...), ds.build_schedule's Schedule edited by hand) that is incomplete or holds
an op whose fields are not whole numbers.  Each must be one ScheduleError naming the rank and the op, never
a TypeError (a float micro-batch crashed check_complete's list index before s16g)."""

from __future__ import annotations

import pytest

import dualpipe_sim as ds
from dualpipe_sim.engine.validate import check_complete, flat_ops, validate
from dualpipe_sim.schedules.ir import FB, Op, Schedule, ScheduleError


def F(m, s=0, d=0):
    return Op("F", m, s, d)


def B(m, s=0, d=0):
    return Op("B", m, s, d)


def I(m, s=0, d=0):  # noqa: E743
    return Op("I", m, s, d)


def W(m, s=0, d=0):
    return Op("W", m, s, d)


def refusal(stages, microbatches, *ranks) -> str:
    with pytest.raises(ScheduleError) as err:
        validate(Schedule("hand", stages, microbatches, tuple(tuple(r) for r in ranks)))
    return str(err.value)


def test_a_complete_two_stage_gpipe_by_hand_passes():
    """The positive case the refusals below are cut from: 2 stages, 2 micro-batches, F then B on each."""
    index = validate(Schedule("hand", 2, 2, ((F(0, 0), F(1, 0), B(1, 0), B(0, 0)),
                                             (F(0, 1), F(1, 1), B(1, 1), B(0, 1)))))  # fmt: skip
    assert index.stages_on_rank == [[0], [1]]


def test_no_stage_or_no_microbatch_is_refused_before_anything_is_sized():
    assert refusal(0, 1) == "a schedule needs stages >= 1 and microbatches >= 1, got 0 and 1"
    assert refusal(1, 0, [F(0), B(0)]) == "a schedule needs stages >= 1 and microbatches >= 1, got 1 and 0"


def test_more_microbatches_declared_than_ops_held():
    """5 declared, 2 ops held: 2 < 5, so it cannot hold an F and a B for each (told before any list of 5)."""
    assert refusal(1, 5, [F(0), B(0)]) == (
        "the schedule declares 5 micro-batches but holds only 2 ops "
        "(each micro-batch needs an F and a B, or I and W, on every stage)"
    )


def test_a_pair_of_two_backwards_is_refused_naming_the_rank():
    line = refusal(1, 2, [F(0), FB(B(0), F(1)), B(1)])
    assert line == "rank 0: (0B0;0F1)OVERLAP_F_B must pair an F with a B or I"


def test_an_op_outside_the_declared_shape_names_its_field():
    assert refusal(1, 1, [F(0), B(1)]) == "rank 0: 0B1 has micro-batch 1, outside 0..0"
    assert refusal(1, 1, [F(0), B(0, 1)]) == "rank 0: 1B0 has stage 1, outside 0..0"


def test_a_microbatch_with_no_ops_and_a_missing_weight_gradient():
    # 3 micro-batches, ops for 0 and 2 only: micro-batch 1 is the hole.
    assert refusal(1, 3, [F(0), B(0), F(2), B(2)]) == "micro-batch 1 has no ops at all"
    # F and I without their W: rules.WORK's F+I+W lacks W.
    assert refusal(1, 1, [F(0), I(0)]) == "missing op 0W0: weight-gradient part of micro-batch 0 at stage 0"


def test_a_full_backward_beside_a_split_one_is_refused():
    """{F, B, I} is a subset of neither F+B nor F+I+W."""
    assert refusal(1, 1, [F(0), B(0), I(0)]) == (
        "micro-batch 0 stage 0 runs 0F0 and 0B0 and 0I0: it must run F+B or F+I+W, each once"
    )


@pytest.mark.parametrize("bad,line", [
    (Op("B", 0.0, 0, 0), "rank 0: 0B0.0 has micro-batch 0.0, not a whole number"),
    (Op("B", "0", 0, 0), "rank 0: 0B0 has micro-batch '0', not a whole number"),
    (Op("B", 0, 0.0, 0), "rank 0: 0.0B0 has stage 0.0, not a whole number"),
    (Op("B", 0, 0, 0.0), "rank 0: 0B0 has direction 0.0, not a whole number"),
    (Op("X", 0, 0, 0), "rank 0: 0X0 has kind 'X', not one of F, B, I, W"),
])  # fmt: skip
def test_an_op_field_of_the_wrong_type_is_one_schedule_error(bad, line):
    """flat_ops gives up on such an op (None) and check_complete must word it: before s16g a float
    micro-batch raised TypeError, a float stage or an unknown kind a vague or wrong line."""
    schedule = Schedule("hand", 1, 1, ((F(0), bad),))
    assert flat_ops(schedule) is None
    assert refusal(1, 1, [F(0), bad]) == line
    with pytest.raises(ScheduleError, match="^" + line.replace("(", r"\(").replace(".", r"\.")):
        check_complete(schedule)


def test_a_direction_other_than_0_or_1_is_named():
    assert refusal(1, 1, [F(0, 0, 2), B(0, 0, 2)]) == "rank 0: 0F0@2 has direction 2, not 0 or 1"


def test_a_float_inside_a_pair_is_named_too():
    assert refusal(1, 2, [F(0), FB(F(1), B(0)), Op("B", 1.0, 0, 0)]) == (
        "rank 0: 0B1.0 has micro-batch 1.0, not a whole number"
    )


def test_the_public_run_refuses_a_hand_edited_schedule_with_a_schedule_error():
    """ds.run(sc, schedule=...) with a registered schedule whose last op was retyped with a float."""
    sc = ds.scenario({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2},
                      "costs": {"forward": 1.0, "backward": 2.0}})  # fmt: skip
    built = ds.build_schedule("1f1b", 2, 2)
    assert ds.run(sc, built).metrics.makespan > 0  # unedited, it runs
    last = built.ranks[1][-1]
    edited = Schedule(built.name, 2, 2, (built.ranks[0], built.ranks[1][:-1] + (last._replace(microbatch=1.0),)))
    with pytest.raises(ScheduleError, match=r"^rank 1: 1B1\.0 has micro-batch 1\.0, not a whole number$"):
        ds.run(sc, edited)
