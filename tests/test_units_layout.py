"""A run's shape in words (units.layout): the titles of gantt.png and memory.png and the run's summary say
"1 stage on 1 rank", not "1 stages on 1 ranks" (seen on a PP 1 run's memory.png, session 19)."""
from dualpipe_sim import units


def test_plural_and_singular_counts():
    assert units.layout(8, 4, 16) == "8 stages on 4 ranks, 16 micro-batches"
    assert units.layout(1, 1, 1) == "1 stage on 1 rank, 1 micro-batch"
    assert units.layout(2, 1, 8) == "2 stages on 1 rank, 8 micro-batches"


def test_a_one_rank_run_says_so_in_its_titles():
    from types import SimpleNamespace
    from dualpipe_sim.outputs.plots import gantt

    m = SimpleNamespace(schedule="1f1b", stages=1, ranks=1, microbatches=8, bubble_ratio=0.0, makespan=10.0, step=None)
    assert gantt.gantt_title(m).startswith("1f1b: 1 stage on 1 rank, 8 micro-batches, bubble ratio 0")
