"""Chart style that must not drift: a schedule's sweep colour, markers on dense lines."""

from dualpipe_sim.outputs.plots.style import SCHEDULE_ORDER, schedule_colour
from dualpipe_sim.outputs.plots.sweep import MAX_MARKED_POINTS, SweepView
from dualpipe_sim.schedules.registry import families


def view(schedules, microbatches):
    return SweepView(schedules, [4], microbatches, {}, {}, "")


def test_colour_follows_the_name_not_the_grid_order():
    a, b = view(["1f1b", "dualpipe"], [8]), view(["dualpipe", "zbv", "1f1b"], [8])
    assert a.colour("dualpipe") == b.colour("dualpipe") and a.colour("1f1b") == b.colour("1f1b")
    # The named schedules have colours of their own; one registered later gets a fixed one by its name.
    assert len({schedule_colour(n) for n in SCHEDULE_ORDER}) == len(SCHEDULE_ORDER)
    assert all(schedule_colour(n) == schedule_colour(n) for n in families())
    assert schedule_colour("my-own") == schedule_colour("my-own")


def test_dense_lines_have_no_markers():
    few = view(["1f1b"], list(range(1, MAX_MARKED_POINTS + 1)))
    many = view(["1f1b"], list(range(1, 122)))
    assert few.style("1f1b")["marker"] is not None
    assert many.style("1f1b")["marker"] is None


def test_every_registered_family_has_a_colour_of_its_own():
    """A new family must be added to SCHEDULE_ORDER (docs/architecture.md, "How to add a schedule"):
    else its sweep and plan colour comes from a hash of its name and may equal another's."""
    missing = sorted(set(families()) - set(SCHEDULE_ORDER))
    assert missing == [], f"add {missing} to outputs/plots/style.py's SCHEDULE_ORDER"
    stale = sorted(set(SCHEDULE_ORDER) - set(families()))
    assert stale == [], f"SCHEDULE_ORDER names schedules no longer registered: {stale}"
